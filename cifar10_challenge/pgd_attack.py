"""Attacks the latest checkpoint with ℓ∞ PGD and stores the adversarial test set.

`LinfPGDAttack(model, epsilon, num_steps, step_size, random_start, loss_func).perturb(x, y)`
is importable, as in the original, for a Keras model returning logits on [0, 255] pixels.
"""
from common import cli  # first: it starts TensorFlow quietly
from cifar10_challenge.challenge import CIFAR10
from common import commands
from common.attacks import pgd


class LinfPGDAttack(pgd.LinfPGDAttack):
  clip_min, clip_max = 0.0, CIFAR10.pixel_max


if __name__ == '__main__':
  cli.run(commands.pgd_attack, CIFAR10, commands.MODEL_FILE_OPTIONS)
