"""Exports model_dir's newest checkpoint (ours or an original TF1 one) as a Keras 3 .keras
file or a SavedModel directory that loads without this project: the challenge's inputs,
logits out, inference mode (docs/models.md)."""
from common import cli  # first: it starts TensorFlow quietly
from common import commands
from cifar10_challenge.challenge import CIFAR10

if __name__ == '__main__':
  cli.run(commands.export_model, CIFAR10, commands.EXPORT_OPTIONS)
