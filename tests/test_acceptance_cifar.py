"""Real CIFAR-10 (the partial copy in ../shared/data/cifar10: 4000 training and the first 1000
test images) through the real on-disk pickle format: natural training of the non-wide model
beats chance clearly, and PGD (ε 8, 10 steps of 2) lowers its accuracy."""
import os

import numpy as np
import pytest

from cifar10_challenge import data as cifar_data
from cifar10_challenge.challenge import CIFAR10
from common import commands, training
from conftest import NON_WIDE, SHARED_CIFAR, quiet, require_shared_cifar

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

# A one-cycle schedule peaking at 0.2 (the fast recipe's): 150 steps, a quarter of the 600 this
# test took at the original's constant 0.1. Natural accuracy was 45% after 120 steps and 58%
# after 250 (90 s and 185 s of training on a 2-core AVX2-only CPU).
STEPS = 150


def write_pickles(directory):
  """The shared npz files as the official python pickles (5 training batches of 800)."""
  train, test = (np.load(os.path.join(SHARED_CIFAR, name)) for name in ('train.npz', 'test.npz'))
  for name, images, labels in zip(cifar_data.TRAIN_FILES, np.split(train['x'], 5),
                                  np.split(train['y'], 5)):
    cifar_data.write_batch(os.path.join(directory, name), images, labels)
  cifar_data.write_batch(os.path.join(directory, cifar_data.TEST_FILE), test['x'], test['y'])
  cifar_data.write_meta(os.path.join(directory, cifar_data.META_FILE))
  return len(test['y'])


def test_natural_training_beats_chance_and_pgd_lowers_accuracy(tmp_path):
  require_shared_cifar()
  num_test = write_pickles(str(tmp_path))
  config = CIFAR10.load_config(overrides=dict(
      data_path=str(tmp_path), model_dir=str(tmp_path / 'model'), filters=NON_WIDE,
      epsilon=0.0, max_num_training_steps=STEPS, num_checkpoint_steps=STEPS,
      num_output_steps=100, num_summary_steps=100, num_eval_examples=num_test,
      lr_schedule='one_cycle', learning_rate=0.2))
  training.train(CIFAR10, config, log=quiet)
  results = commands.evaluate(CIFAR10, config.replace(epsilon=8.0), once=True, log=print)
  assert results.num_examples == 1000
  assert results.nat_accuracy > 0.35, 'natural accuracy should beat chance (10%) clearly'
  assert results.adv_accuracy < results.nat_accuracy - 0.2
