"""Writes an original TF1 checkpoint (the latest in --model_dir) as a checkpoint of this project
(--output_dir). Every script reads both kinds; converting makes later loads plain."""
from common import cli  # first: it starts TensorFlow quietly
from common import commands
from mnist_challenge.challenge import MNIST

if __name__ == '__main__':
  cli.run(commands.convert_checkpoint, MNIST, commands.CONVERT_OPTIONS)
