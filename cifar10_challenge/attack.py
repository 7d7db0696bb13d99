"""Any attack by name (pgd, apgd-ce, apgd-t, fab-t, square in the config's norm; cw-l2, cw-linf,
cw-l0) on the latest checkpoint of model_dir; writes the adversarial test set
(store_adv_path), each example's distance (distances.npy) and attack.json."""
from common import cli  # first: it starts TensorFlow quietly
from common import commands
from cifar10_challenge.challenge import CIFAR10

if __name__ == '__main__':
  cli.run(commands.run_named_attack, CIFAR10, commands.ATTACK_OPTIONS)
