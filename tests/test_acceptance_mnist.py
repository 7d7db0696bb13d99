"""Acceptance on real MNIST (../shared/data/mnist): natural training reaches the expected
accuracy, and PGD-40 at ε = 0.3 breaks the naturally trained model. About 3 minutes."""
import os

import pytest

from common import commands, training
from conftest import SHARED_MNIST, quiet, tiny_config
from mnist_challenge.challenge import MNIST

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope='module')
def natural_model(tmp_path_factory):
  if not os.path.isdir(SHARED_MNIST):
    pytest.skip(f'real MNIST not present at {SHARED_MNIST}')
  tmp_path = tmp_path_factory.mktemp('natural')
  # The default recipe (Adam 1e-4, batch 50, seed 4557077) with ε = 0: no attack is computed.
  config = tiny_config(tmp_path, SHARED_MNIST, epsilon=0.0, max_num_training_steps=5000,
                       num_output_steps=1000, num_summary_steps=1000,
                       num_checkpoint_steps=5000, training_batch_size=50)
  training.train(MNIST, config, log=quiet)
  return config


def test_natural_training_reaches_98_5_percent(natural_model):
  config = natural_model.replace(num_eval_examples=10000, eval_batch_size=1000, k=0)
  results = commands.evaluate(MNIST, config, once=True, log=quiet)
  assert results.nat_accuracy >= 0.985


def test_pgd40_leaves_at_most_2_percent(natural_model):
  # The first 2,000 test images keep this under a minute (all 10,000: README).
  config = natural_model.replace(num_eval_examples=2000, eval_batch_size=200, epsilon=0.3,
                                 k=40, a=0.01, random_start=True)
  results = commands.evaluate(MNIST, config, once=True, log=quiet)
  assert results.nat_accuracy >= 0.98
  assert results.adv_accuracy <= 0.02
