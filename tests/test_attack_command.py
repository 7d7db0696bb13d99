"""attack.py: any attack by name (commands.run_named_attack) on a checkpoint: each name runs,
writes the adversarial set in run_attack's format (the attacked head, the rest unchanged),
each example's distance (NaN where it did not succeed) and attack.json, and prints the C&W
tables' figures; bad names and combinations are one-line errors."""
import json

import numpy as np
import pytest

from common import checkpoints, commands, training
from common.errors import ChallengeError
from conftest import REPO, quiet, run_script, tiny_config
from mnist_challenge.challenge import MNIST

EXAMPLES = 8


@pytest.fixture(scope='module')
def trained(tmp_path_factory, mnist_dir):
  tmp_path = tmp_path_factory.mktemp('attack')
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=30, training_batch_size=20,
                       epsilon=0.05, training_attack='fgsm_rs', learning_rate=2e-3,
                       eval_batch_size=EXAMPLES)
  training.train(MNIST, config, log=quiet)
  return config


# Small budgets: the command's plumbing is what is tested here (the attacks' own tests:
# test_autoattack*.py, test_carlini_wagner.py, test_threat.py).
BUDGET = {'pgd': 5, 'apgd-ce': 5, 'apgd-dlr': 5, 'apgd-t': 2, 'fab-t': 2, 'square': 2,
          'cw-l2': 30, 'cw-linf': 10, 'cw-l0': 10}


@pytest.mark.parametrize('attack', commands.NAMED_ATTACKS)
def test_each_attack_runs_by_name_and_writes_its_set_distances_and_figures(trained, tmp_path,
                                                                           attack):
  config = trained.replace(store_adv_path=str(tmp_path / 'adv.npy'))
  lines = []
  summary = commands.run_named_attack(MNIST, config, attack=attack, num_examples=EXAMPLES,
                                      iterations=BUDGET[attack], output_dir=str(tmp_path / 'o'),
                                      log=lines.append)
  test = MNIST.load_data(config).test
  x_adv = np.load(config.store_adv_path)
  distances = np.load(tmp_path / 'o' / 'distances.npy')
  with open(tmp_path / 'o' / 'attack.json') as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(summary))
  assert x_adv.shape == test.images.shape and x_adv.dtype == np.float32
  np.testing.assert_array_equal(x_adv[EXAMPLES:], test.images[EXAMPLES:])
  assert distances.shape == (EXAMPLES,)
  succeeded = ~np.isnan(distances)
  model = MNIST.build_model(config)
  checkpoints.restore_model(model, checkpoints.latest(config.model_dir))
  predicted = np.argmax(model(x_adv[:EXAMPLES], training=False).numpy(), 1)
  assert np.all(predicted[succeeded] != test.labels[:EXAMPLES][succeeded])
  norm = commands.CW_ATTACKS.get(attack, 'linf')
  assert summary['norm'] == norm
  recomputed = commands.distortion(norm, x_adv[:EXAMPLES], test.images[:EXAMPLES], 1.0,
                                   (28, 28, 1))
  np.testing.assert_allclose(distances[succeeded], recomputed[succeeded])
  if succeeded.any():
    assert summary['median distortion'] == pytest.approx(np.median(distances[succeeded]))
  assert any(line.startswith('success rate ') for line in lines)
  # The robust accuracy within ε where the attack's norm is the config's (ℓ∞ here).
  assert ('robust accuracy %' in summary) == (norm == 'linf')
  if norm == 'linf':
    assert 0 <= summary['robust accuracy %'] <= summary['clean accuracy %']
  if attack not in commands.CW_ATTACKS:  # ε attacks stay in the ball
    assert np.all(distances[succeeded] <= 0.05 + 1e-6)


def test_targeted_cw_reaches_its_targets_and_repeats_with_the_seed(trained, tmp_path):
  runs = []
  for i in range(2):
    config = trained.replace(store_adv_path=str(tmp_path / f'adv{i}.npy'))
    summary = commands.run_named_attack(MNIST, config, attack='cw-l2', targeted=True,
                                        num_examples=EXAMPLES, iterations=50, seed=3,
                                        output_dir=str(tmp_path / f'o{i}'), log=quiet)
    runs.append(np.load(config.store_adv_path))
  np.testing.assert_array_equal(runs[0], runs[1])
  assert summary['targeted'] and summary['success rate %'] > 0
  test = MNIST.load_data(trained).test
  targets = (test.labels[:EXAMPLES] + np.random.default_rng(3).integers(1, 10, EXAMPLES)) % 10
  distances = np.load(tmp_path / 'o0' / 'distances.npy')
  model = MNIST.build_model(trained)
  checkpoints.restore_model(model, checkpoints.latest(trained.model_dir))
  predicted = np.argmax(model(runs[0][:EXAMPLES], training=False).numpy(), 1)
  assert np.all(predicted[~np.isnan(distances)] == targets[~np.isnan(distances)])


def test_bad_names_and_combinations_are_one_line_errors(trained):
  with pytest.raises(ChallengeError, match='unknown attack "cw"; use --attack with one of: '
                                           'pgd, apgd-ce'):
    commands.run_named_attack(MNIST, trained, attack='cw', log=quiet)
  with pytest.raises(ChallengeError, match='--targeted is for the C&W attacks'):
    commands.run_named_attack(MNIST, trained, attack='pgd', targeted=True, log=quiet)
  with pytest.raises(ChallengeError, match='--iterations must be 0'):
    commands.run_named_attack(MNIST, trained, attack='pgd', iterations=-1, log=quiet)


@pytest.mark.slow
def test_the_script_runs_an_attack_by_name(trained, tmp_path):
  out = run_script(['mnist_challenge/attack.py', '--attack', 'cw-l2', '--iterations', '20',
                    '--num_examples', '4', '--config', trained.source,
                    '--model_dir', trained.model_dir, '--data_dir', trained.data_dir,
                    '--store_adv_path', str(tmp_path / 'a.npy'),
                    '--output_dir', str(tmp_path / 'o')], cwd=REPO)
  assert out.returncode == 0, out.stderr
  assert 'success rate ' in out.stdout and 'distortion' in out.stdout
  assert np.load(tmp_path / 'o' / 'distances.npy').shape == (4,)
  bad = run_script(['mnist_challenge/attack.py', '--attack', 'nope', '--config', trained.source,
                    '--model_dir', trained.model_dir, '--data_dir', trained.data_dir], cwd=REPO)
  assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith(
      'error: unknown attack "nope"')
