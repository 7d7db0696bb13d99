"""PGD adversarial training of the CIFAR-10 challenge model (loop: common/training.py)."""
from common import cli  # first: it starts TensorFlow quietly
from cifar10_challenge.challenge import CIFAR10
from common import commands

if __name__ == '__main__':
  cli.run(commands.train, CIFAR10, commands.TRAIN_OPTIONS)
