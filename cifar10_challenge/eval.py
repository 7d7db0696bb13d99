"""Evaluates each new checkpoint of model_dir, natural and under PGD (--once: the latest)."""
from cifar10_challenge.challenge import CIFAR10
from common import cli, commands

if __name__ == '__main__':
  cli.run(commands.evaluate, CIFAR10, commands.EVAL_OPTIONS)
