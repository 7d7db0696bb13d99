"""The paper's evaluation table on model_dir's latest checkpoint: every row's accuracy beside
the paper's figure, printed and written as CSV and Markdown. Transfer rows need their source
models: --source "A'=<model_dir>" (and the other sources of the table); others are skipped."""
from common import cli  # first: it starts TensorFlow quietly
from common import commands
from cifar10_challenge.challenge import CIFAR10

if __name__ == '__main__':
  cli.run(commands.evaluate_table, CIFAR10, commands.TABLE_OPTIONS)
