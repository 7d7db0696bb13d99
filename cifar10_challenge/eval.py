"""Evaluates each new checkpoint of model_dir, natural and under PGD (--once: the latest)."""
from common import cli  # first: it starts TensorFlow quietly
from cifar10_challenge.challenge import CIFAR10
from common import commands

if __name__ == '__main__':
  cli.run(commands.evaluate, CIFAR10, commands.EVAL_OPTIONS)
