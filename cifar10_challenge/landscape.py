"""The loss landscape of PGD (the paper's Figures 1 and 2): the loss after every iteration of
many random restarts on a few test examples, for model_dir's model (and --compare_model_dir's),
written as landscape.npz and TensorBoard histograms."""
from common import cli  # first: it starts TensorFlow quietly
from common import commands
from cifar10_challenge.challenge import CIFAR10

if __name__ == '__main__':
  cli.run(commands.loss_landscape, CIFAR10, commands.LANDSCAPE_OPTIONS)
