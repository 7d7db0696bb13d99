"""Acceptance on real MNIST (../shared/data/mnist): natural training reaches the expected
accuracy, and PGD-40 at ε = 0.3 breaks the naturally trained model. About 2.5 minutes on a
2-core AVX2-only CPU."""
import time

import pytest

from common import commands, training
from conftest import quiet, require_shared_mnist, tiny_config
from mnist_challenge.challenge import MNIST

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope='module')
def natural_model(tmp_path_factory):
  data_dir = require_shared_mnist()
  tmp_path = tmp_path_factory.mktemp('natural')
  # The default recipe (Adam, batch 50, seed 4557077) with ε = 0 (no attack is computed), in
  # 1,500 steps of a one-cycle schedule peaking at 2e-3 instead of 5,000 at the original's
  # constant 1e-4 (98.87% in 100 s on a 2-core AVX2-only CPU, where 5,000 steps took 270 s).
  steps = 1500
  config = tiny_config(tmp_path, data_dir, epsilon=0.0, max_num_training_steps=steps,
                       num_output_steps=500, num_summary_steps=500, num_checkpoint_steps=steps,
                       training_batch_size=50, lr_schedule='one_cycle', learning_rate=2e-3)
  began = time.time()
  training.train(MNIST, config, log=quiet)
  print(f'natural training, {steps:,} steps: {time.time() - began:.0f} s')
  return config


def test_natural_training_reaches_98_5_percent(natural_model):
  config = natural_model.replace(num_eval_examples=10000, eval_batch_size=1000, k=0)
  results = commands.evaluate(MNIST, config, once=True, log=quiet)
  print(f'natural accuracy on the 10,000 test images: {100 * results.nat_accuracy:.2f}%')
  assert results.nat_accuracy >= 0.985


def test_pgd40_leaves_at_most_2_percent(natural_model):
  # The first 1,000 test images keep this at about 30 s.
  config = natural_model.replace(num_eval_examples=1000, eval_batch_size=200, epsilon=0.3,
                                 k=40, a=0.01, random_start=True)
  results = commands.evaluate(MNIST, config, once=True, log=quiet)
  print(f'PGD-40 on the first 1,000: natural {100 * results.nat_accuracy:.2f}%, adversarial '
        f'{100 * results.adv_accuracy:.2f}%')
  assert results.nat_accuracy >= 0.98
  assert results.adv_accuracy <= 0.02
