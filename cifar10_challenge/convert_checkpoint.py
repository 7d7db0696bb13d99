"""Writes an original TF1 checkpoint (the latest in --model_dir) as a checkpoint of this project
(--output_dir). Every script reads both kinds; converting makes later loads plain."""
from common import cli  # first: it starts TensorFlow quietly
from cifar10_challenge.challenge import CIFAR10
from common import commands

if __name__ == '__main__':
  cli.run(commands.convert_checkpoint, CIFAR10, commands.CONVERT_OPTIONS)
