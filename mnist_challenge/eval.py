"""Evaluates each new checkpoint of model_dir, natural and under PGD (--once: the latest)."""
from common import cli  # first: it starts TensorFlow quietly
from common import commands
from mnist_challenge.challenge import MNIST

if __name__ == '__main__':
  cli.run(commands.evaluate, MNIST, commands.EVAL_OPTIONS)
