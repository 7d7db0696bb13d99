"""AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on the latest checkpoint of model_dir; writes
autoattack.json and the adversarial test set (store_adv_path) for run_attack.py."""
from common import cli  # first: it starts TensorFlow quietly
from common import commands
from mnist_challenge.challenge import MNIST

if __name__ == '__main__':
  cli.run(commands.run_autoattack, MNIST, commands.AUTOATTACK_OPTIONS)
