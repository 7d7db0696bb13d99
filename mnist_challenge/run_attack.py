"""Validates a submitted adversarial test set (.npy, untrusted) and scores it.

Exit codes: 0 scored; 2 invalid submission; 1 any other failure (config, data, checkpoint).
"""
from common import cli  # first: it starts TensorFlow quietly
from common import commands
from mnist_challenge.challenge import MNIST

if __name__ == '__main__':
  cli.run(commands.run_attack, MNIST, commands.MODEL_FILE_OPTIONS)
