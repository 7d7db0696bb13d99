"""PGD adversarial training of the MNIST challenge model (loop: common/training.py)."""
from common import cli  # first: it starts TensorFlow quietly
from common import commands
from mnist_challenge.challenge import MNIST

if __name__ == '__main__':
  cli.run(commands.train, MNIST, commands.TRAIN_OPTIONS)
