"""The training-method registry (common/methods): every module found and complete, one key
naming the method, the old spellings loading as before, no import cycle, and the natural
method (the baseline)."""
import ast
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge.challenge import CIFAR10
from common import methods, training
from common.errors import ChallengeError
from common.methods import natural
from conftest import REPO, quiet, tiny_config
from mnist_challenge.challenge import MNIST
from test_training import first_moments

PACKAGE = os.path.join(REPO, 'common', 'methods')
MODULES = sorted(name[:-3] for name in os.listdir(PACKAGE)
                 if name.endswith('.py') and name not in ('__init__.py', 'base.py'))


def test_every_module_of_the_package_is_a_registered_method():
  assert sorted(module.__name__.rsplit('.', 1)[1] for module in methods.METHODS.values()) \
      == MODULES
  assert list(methods.METHODS)[0] == 'madry'  # the default, first in --help
  for name, module in methods.METHODS.items():
    assert module.NAME == name and module.SUMMARY and module.__doc__
    for challenge in ('mnist', 'cifar10'):
      keys = module.keys(challenge)
      assert all(key.name.startswith(name.split('_')[0]) for key in keys), name
  for challenge in (MNIST, CIFAR10):
    keys = [key.name for key in challenge.config_keys]
    assert len(keys) == len(set(keys))
  assert {''} | set(methods.METHODS) == set(
      next(key for key in MNIST.config_keys if key.name == 'training_method').choices)


def test_no_method_imports_another_or_the_trainer():
  # Each module may import base (the interface) and the core below the trainer, never a
  # sibling method, the package's registry, the trainer or a challenge: no cycle.
  for name in MODULES + ['base']:
    with open(os.path.join(PACKAGE, f'{name}.py')) as f:
      tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module:
        imported |= {f'{node.module}.{alias.name}' for alias in node.names}
      elif isinstance(node, ast.Import):
        imported |= {alias.name for alias in node.names}
    forbidden = {f'common.methods.{other}' for other in MODULES} | {
        'common.training', 'common.challenge', 'common.methods'}
    bad = {i for i in imported if i in forbidden or i.startswith(('mnist_challenge',
                                                                   'cifar10_challenge'))}
    assert not bad, (name, bad)
  # Each method module imports first in a fresh interpreter (no cycle through the registry).
  for name in MODULES:
    result = subprocess.run([sys.executable, '-c', f'import common.methods.{name}'],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('old, new', [
    (dict(training_loss='trades'), 'trades'),
    (dict(training_loss='bilateral'), 'bilateral'),
    (dict(training_loss='mma'), 'mma'),
    (dict(training_attack='yopo'), 'yopo'),
    (dict(training_loss='madry'), 'madry'),
    ({}, 'madry'),
    (dict(training_method='trades', training_loss='trades'), 'trades'),
    (dict(training_method='yopo', training_attack='yopo'), 'yopo'),
])
def test_the_old_keys_still_name_the_method(old, new):
  config = MNIST.load_config(overrides=old)
  assert config.training_method == new
  assert {key: config[key] for key in old} == old  # kept as given (a run's config.json)
  spelled = MNIST.load_config(overrides={'training_method': new})
  built = methods.build(MNIST, config, MNIST.attack_params(config))
  built_new = methods.build(MNIST, spelled, MNIST.attack_params(spelled))
  assert type(built) is type(built_new)
  assert {k: v for k, v in vars(built).items() if not k.startswith('_')} == {
      k: v for k, v in vars(built_new).items() if not k.startswith('_')}


@pytest.mark.parametrize('changes, message', [
    (dict(training_method='mma', training_loss='trades'), 'two methods'),
    (dict(training_method='madry', training_loss='trades'), 'two methods'),
    (dict(training_method='madry', training_attack='yopo'), 'two methods'),
    (dict(training_method='bilateral', training_attack='yopo'), 'two methods'),
    (dict(training_loss='trades', training_attack='yopo'), 'trades.*its own search'),
    (dict(training_method='mart'), 'training_method" must be one of'),
])
def test_keys_that_name_two_methods_are_errors(changes, message):
  with pytest.raises(ChallengeError, match=message):
    MNIST.load_config(overrides=changes)


def test_the_old_spellings_train_bit_for_bit_as_the_new(tmp_path, mnist_dir):
  old = training.Trainer(MNIST, tiny_config(tmp_path / 'old', mnist_dir, training_loss='trades',
                                            max_num_training_steps=2), log=quiet)
  old.run()
  new = training.Trainer(MNIST, tiny_config(tmp_path / 'new', mnist_dir,
                                            training_method='trades', max_num_training_steps=2),
                         log=quiet)
  new.run()
  for a, b in zip(first_moments(old), first_moments(new)):
    np.testing.assert_array_equal(a, b)


def test_each_challenge_has_each_methods_keys_with_its_authors_defaults():
  mnist, cifar = MNIST.load_config(), CIFAR10.load_config()
  assert (mnist.trades_beta, cifar.trades_beta) == (1.0, 6.0)
  assert (mnist.yopo_inner_steps, cifar.yopo_inner_steps) == (10, 3)
  assert (mnist.mma_max_epsilon, cifar.mma_max_epsilon) == (0.45, 12.0)


def test_natural_training_is_the_loss_on_the_clean_batch(tmp_path, mnist_dir):
  # The natural method's step equals PGD training's at ε 0 (no perturbation), and its
  # examples trained on are the clean ones.
  at_zero = training.Trainer(MNIST, tiny_config(tmp_path / 'a', mnist_dir, epsilon=0.0,
                                                max_num_training_steps=1), log=quiet)
  at_zero.run()
  clean = training.Trainer(MNIST, tiny_config(tmp_path / 'b', mnist_dir,
                                              training_method='natural',
                                              max_num_training_steps=1), log=quiet)
  clean.run()
  assert type(clean.method) is natural.Natural and clean.method.params.epsilon == 0.3
  for a, b in zip(first_moments(at_zero), first_moments(clean)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
  x = tf.random.uniform([4, 784])
  assert clean.method.prepare(x, tf.constant([0, 0], tf.int64), (0, 4), None) == ()
