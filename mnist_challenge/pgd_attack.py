"""Attacks the latest checkpoint with ℓ∞ PGD and stores the adversarial test set.

`LinfPGDAttack(model, epsilon, k, a, random_start, loss_func).perturb(x, y)` is importable,
as in the original, for a Keras model returning logits on [0, 1] pixels.
"""
from common import cli  # first: it starts TensorFlow quietly
from common import commands
from common.attacks import pgd
from mnist_challenge.challenge import MNIST


class LinfPGDAttack(pgd.LinfPGDAttack):
  clip_min, clip_max = 0.0, MNIST.pixel_max


if __name__ == '__main__':
  cli.run(commands.pgd_attack, MNIST, commands.MODEL_FILE_OPTIONS)
