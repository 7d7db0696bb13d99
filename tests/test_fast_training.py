"""Fast adversarial training: FGSM with random start and N-FGSM on the PGD core, the
one-cycle schedule, the catastrophic-overfitting guard, the recipes and the shipped model."""
import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge.challenge import CIFAR10
from common import checkpoints, commands, guard, optimizers, training
from common.attacks import pgd
from common.attacks.pgd import PGDParams
from common.errors import ChallengeError
from conftest import REPO, quiet, require_shared_mnist, tiny_cifar_config, tiny_config
from mnist_challenge.challenge import MNIST

SEED = tf.constant([3, 7], tf.int64)
RNG_SEED = 2  # conftest reseeds RNG with it before each test
RNG = np.random.default_rng(RNG_SEED)


def linear_problem(n=16, d=30, classes=5):
  w = RNG.normal(0, 1, (d, classes)).astype(np.float32)
  x = RNG.uniform(0, 1, (n, d)).astype(np.float32)
  x[:, :5] = 0.0  # pixels at the range's edges, where clipping matters
  x[:, 5:10] = 1.0
  return w, x, RNG.integers(0, classes, n)


def xent_gradient(w, x, y):
  """∇ₓ of the summed cross-entropy of logits x·w, in numpy."""
  logits = x @ w
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  return p @ w.T


@pytest.mark.parametrize('name', ['fgsm_rs', 'n_fgsm'])
def test_single_step_attacks_equal_their_formulas(name):
  w, x, y = linear_problem()
  eps, alpha = 0.3, 0.375 if name == 'fgsm_rs' else 0.3
  params = pgd.training_attack_params(PGDParams(eps, 40, 0.01), name, alpha)
  x_adv = pgd.pgd(lambda v: tf.matmul(v, w), x, y, params, seed=SEED).numpy()
  radius = eps if name == 'fgsm_rs' else 2 * eps  # noise_multiplier's default: 2
  noise = tf.random.stateless_uniform(x.shape, SEED, -radius, radius).numpy()
  start = np.clip(x + noise, 0, 1)
  expected = start + alpha * np.sign(xent_gradient(w, start, y))
  if name == 'fgsm_rs':
    expected = np.clip(expected, x - eps, x + eps)  # projected to the ε-ball ...
  expected = np.clip(expected, 0, 1)  # ... and always to the pixel range
  np.testing.assert_allclose(x_adv, expected, rtol=0, atol=1e-6)
  distance = np.abs(x_adv - x).max()
  if name == 'fgsm_rs':
    assert distance <= eps + 1e-6
  else:
    assert distance > eps + 0.1  # N-FGSM leaves the ball: noise 2ε plus a step of ε


def test_training_attack_defaults_and_errors():
  original = PGDParams(0.3, 40, 0.01)
  assert pgd.training_attack_params(original, 'pgd') is original
  fgsm_rs = pgd.training_attack_params(original, 'fgsm_rs')
  assert (fgsm_rs.num_steps, fgsm_rs.step_size, fgsm_rs.random_start) == (1, 1.25 * 0.3, True)
  assert fgsm_rs.noise_radius == 0.3 and fgsm_rs.project_to_ball
  n_fgsm = pgd.training_attack_params(original, 'n_fgsm', noise_multiplier=3.0)
  assert n_fgsm.step_size == 0.3 and not n_fgsm.project_to_ball
  assert n_fgsm.noise_radius == pytest.approx(0.9)
  short = pgd.training_attack_params(original, 'pgd', step_size=0.2, num_steps=2)
  assert short == PGDParams(0.3, 2, 0.2)  # the rest (random start, loss, range) kept
  assert pgd.training_attack_params(original, 'pgd', num_steps=5).step_size == 0.01
  with pytest.raises(ChallengeError, match='unknown training_attack "free"'):
    pgd.training_attack_params(original, 'free')
  with pytest.raises(ChallengeError, match='training_num_steps is 2, but fgsm_rs takes one'):
    pgd.training_attack_params(original, 'fgsm_rs', num_steps=2)
  with pytest.raises(ChallengeError, match='"training_attack" must be one of pgd, fgsm_rs'):
    MNIST.load_config(overrides={'training_attack': 'free'})


def test_a_shorter_training_pgd_leaves_the_evaluation_attack_alone(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, training_num_steps=2, training_step_size=0.2,
                       random_start=False)
  trainer = training.Trainer(MNIST, config, log=quiet)
  evaluation = MNIST.attack_params(config)
  assert (evaluation.num_steps, evaluation.step_size) == (config.k, config.a) == (3, 0.05)
  # Pixels in [0.3, 0.7]: no pixel clip. Two steps of 0.2 from x, projected to the 0.3-ball,
  # move a pixel by 0, 0.2 or 0.3; the configured 3 steps of 0.05 by 0.15 at most.
  x = RNG.uniform(0.3, 0.7, (8, 784)).astype(np.float32)  # flat, as the original's input
  _, _, x_adv = trainer.train_step((tf.constant(x), tf.constant(np.arange(8) % 10)))
  moved = np.abs(x_adv.numpy() - x)
  distance_to_grid = np.min(np.abs(moved[..., None] - np.array([0, 0.2, 0.3])), axis=-1)
  assert distance_to_grid.max() < 1e-5 and moved.max() == pytest.approx(0.3, abs=1e-5)


def test_a_training_epsilon_moves_the_training_attack_alone(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, training_epsilon=0.4, training_num_steps=2,
                       training_step_size=0.25, random_start=False)
  trainer = training.Trainer(MNIST, config, log=quiet)
  assert MNIST.attack_params(config).epsilon == config.epsilon == 0.3  # evaluation, guard
  # Pixels in [0.4, 0.6]: no pixel clip. Two steps of 0.25 from x, projected to the 0.4-ball,
  # move a pixel by 0, 0.25 or 0.4 (at ε 0.3: by 0.25 or 0.3).
  x = RNG.uniform(0.4, 0.6, (8, 784)).astype(np.float32)
  _, _, x_adv = trainer.train_step((tf.constant(x), tf.constant(np.arange(8) % 10)))
  moved = np.abs(x_adv.numpy() - x)
  distance_to_grid = np.min(np.abs(moved[..., None] - np.array([0, 0.25, 0.4])), axis=-1)
  assert distance_to_grid.max() < 1e-5 and moved.max() == pytest.approx(0.4, abs=1e-5)


def test_the_guard_judges_at_epsilon_while_training_at_another(tmp_path, mnist_dir,
                                                               monkeypatch):
  seen = []
  original = guard.RobustnessGuard.__init__

  def recording(self, trainer, *args):
    original(self, trainer, *args)
    seen.append((self.params.epsilon, trainer.attack_params.epsilon))
  monkeypatch.setattr(guard.RobustnessGuard, '__init__', recording)
  config = tiny_config(tmp_path, mnist_dir, training_epsilon=0.4, max_num_training_steps=2,
                       robustness_check_steps=1, robustness_check_examples=20)
  training.train(MNIST, config, log=quiet)
  assert seen == [(0.3, 0.4)]


def test_one_cycle_rises_to_its_peak_then_falls_to_zero():
  schedule = optimizers.OneCycle(0.01, 10, 0.4)
  values = [float(schedule(step)) for step in range(11)]
  np.testing.assert_allclose(values, [0, 0.0025, 0.005, 0.0075, 0.01, 0.01 * 5 / 6,
                                      0.01 * 4 / 6, 0.01 * 3 / 6, 0.01 * 2 / 6, 0.01 / 6, 0],
                             rtol=1e-6, atol=1e-9)
  config = MNIST.load_config(overrides={'lr_schedule': 'one_cycle', 'warmup_fraction': 1.5})
  with pytest.raises(ChallengeError, match='"warmup_fraction" must lie between 0 and 1'):
    MNIST.build_optimizer(config)


def test_fast_training_resumes_exactly_on_the_one_cycle(tmp_path, mnist_dir):
  # The one-cycle rate is a function of the step and of max_num_training_steps: a run
  # interrupted at step 3 (its checkpoint-3 alone in another model_dir) and resumed ends as
  # the uninterrupted one.
  config = tiny_config(tmp_path / 'a', mnist_dir, max_num_training_steps=6,
                       num_checkpoint_steps=3, training_attack='fgsm_rs',
                       lr_schedule='one_cycle', learning_rate=0.01, warmup_fraction=0.5)
  straight = training.Trainer(MNIST, config, log=quiet)
  straight.run()
  interrupted = str(tmp_path / 'b')
  os.makedirs(interrupted)
  for name in os.listdir(config.model_dir):
    if name.startswith('checkpoint-3.'):
      shutil.copy(os.path.join(config.model_dir, name), interrupted)
  tf.compat.v1.train.update_checkpoint_state(interrupted, 'checkpoint-3')
  resumed = training.Trainer(MNIST, config.replace(model_dir=interrupted), log=quiet)
  resumed.restore_latest()
  # The rate continues from the restored step: 3 of 6, the peak (0.01).
  assert int(resumed.optimizer.iterations.numpy()) == 3
  assert float(resumed.optimizer.learning_rate) == pytest.approx(0.01)
  resumed.run()
  assert float(resumed.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)  # the end
  for a, b in zip(straight.model.weights, resumed.model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)


def guarded(tmp_path, mnist_dir, **changes):
  # The tiny data's held-out PGD-5 accuracy at ε 0.05 reaches ~90% within 30 steps.
  settings = dict(max_num_training_steps=30, training_batch_size=20, epsilon=0.05,
                  training_attack='fgsm_rs', learning_rate=2e-3, robustness_check_steps=10,
                  robustness_check_examples=40, robustness_check_k=5, num_checkpoint_steps=10)
  settings.update(changes)
  return tiny_config(tmp_path, mnist_dir, **settings)


def test_the_guard_checks_a_healthy_run_and_keeps_the_best(tmp_path, mnist_dir):
  config = guarded(tmp_path, mnist_dir)
  lines = []
  assert training.train(MNIST, config, log=lambda *a, **k: lines.append(a[0])) == 30
  checks = [line for line in lines if 'robustness check' in line]
  assert len(checks) == 3  # at steps 10, 20 and the last, 30
  assert all('on 40 held-out images' in line for line in checks)
  with open(os.path.join(config.model_dir, guard.BEST_DIR, 'best.json')) as f:
    best = json.load(f)
  assert best['step'] in (10, 20, 30) and 0 < best['accuracy'] <= 1
  assert tf.train.latest_checkpoint(config.model_dir).endswith('checkpoint-30')
  tags = set()
  for path in glob.glob(os.path.join(config.model_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags |= {value.tag for value in event.summary.value}
  assert 'accuracy adv held-out' in tags


def test_the_guard_restores_the_best_checkpoint_when_robustness_collapses(tmp_path, mnist_dir):
  # Trained healthily to step 30, then resumed with a rate that wrecks the model: the next
  # check falls far below the best, so training stops and the best state is the latest.
  config = guarded(tmp_path, mnist_dir)
  training.train(MNIST, config, log=quiet)
  with open(os.path.join(config.model_dir, guard.BEST_DIR, 'best.json')) as f:
    best = json.load(f)
  assert best['accuracy'] > 0.5, best  # something to lose
  lines = []
  wrecked = config.replace(max_num_training_steps=50, learning_rate=3.0)
  with pytest.raises(guard.CatastrophicOverfitting,
                     match=r'catastrophic overfitting: the PGD-5 accuracy on the 40 held-out '
                           r'images fell from .* \(step \d+\) to .*; checkpoint-\d+ is the latest'
                     ) as stopped:
    training.train(MNIST, wrecked, log=lambda *a, **k: lines.append(a[0]))
  assert guard.CatastrophicOverfitting.exit_code != 0
  assert (stopped.value.step, stopped.value.best_step) == (40, best['step'])
  latest = tf.train.latest_checkpoint(config.model_dir)
  assert latest.endswith(f'checkpoint-{best["step"]}')
  model = MNIST.build_model(config)
  assert checkpoints.restore_model(model, latest) == best['step']
  saved = MNIST.build_model(config)
  checkpoints.restore_model(saved, tf.train.latest_checkpoint(
      os.path.join(config.model_dir, guard.BEST_DIR)))
  for a, b in zip(model.weights, saved.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_cifar_holds_out_the_last_training_images(tmp_path, cifar_dir):
  config = tiny_cifar_config(tmp_path, cifar_dir)
  datasets = CIFAR10.load_data(config)
  train, held_out = guard.split_held_out(datasets, 30)
  assert len(train) + len(held_out) == len(datasets.train) and len(held_out) == 30
  np.testing.assert_array_equal(held_out.images, datasets.train.images[-30:])
  with pytest.raises(ChallengeError, match='would hold out the whole training set'):
    guard.split_held_out(datasets, len(datasets.train))


@pytest.mark.parametrize('challenge, directory', [(MNIST, 'mnist_challenge'),
                                                  (CIFAR10, 'cifar10_challenge')])
def test_the_fast_recipes_load(challenge, directory):
  config = challenge.load_config(os.path.join(REPO, directory, 'configs', 'fast.json'))
  assert config.lr_schedule == 'one_cycle' and config.robustness_check_steps > 0
  if challenge is MNIST:  # PGD-3 trains; evaluation keeps the original's PGD-40
    assert (config.training_attack, config.training_num_steps) == ('pgd', 3)
    assert (config.k, config.a, config.epsilon) == (40, 0.01, 0.3)
  else:
    assert config.training_attack == 'fgsm_rs'
  assert config.model_dir.endswith(os.path.join('checkpoints', challenge.name, 'fast'))
  if challenge is CIFAR10:
    assert (config.epsilon, config.training_step_size, config.training_batch_size) == (8, 10, 128)
    assert (config.learning_rate, config.weight_decay, config.precision) == (
        0.2, 5e-4, 'mixed_bfloat16')
    assert config.max_num_training_steps == 5860  # 15 epochs of 50,000 in batches of 128


SHIPPED = os.path.join(REPO, 'checkpoints', 'mnist', 'fast_robust')
SHIPPED_RECIPE = os.path.join(MNIST.package_dir, 'configs', 'fast_small_cnn.json')


def test_the_shipped_model_records_the_recipe_file():
  # docs/fast_training.md remakes the shipped model from configs/fast_small_cnn.json: every
  # key the model was trained with, its seed included, is that file's (paths aside).
  recipe = MNIST.load_config(SHIPPED_RECIPE)
  shipped = MNIST.load_config(os.path.join(SHIPPED, 'config.json'))
  assert (recipe.model, recipe.training_num_steps, recipe.training_step_size) == (
      'small_cnn', 20, 0.015)
  assert recipe.robustness_check_steps > 0 and recipe.lr_schedule == 'one_cycle'
  paths = {'model_dir', 'data_dir', 'store_adv_path', 'pred_path'}
  assert ({k: v for k, v in recipe.items() if k not in paths} ==
          {k: v for k, v in shipped.items() if k not in paths})
  model = MNIST.build_model(shipped)
  checkpoints.restore_model(model, checkpoints.latest(SHIPPED))  # the recorded network's weights


@pytest.mark.realdata
@pytest.mark.slow
def test_the_shipped_model_restores_with_its_recorded_accuracy(tmp_path):
  data_dir = require_shared_mnist()
  with open(os.path.join(SHIPPED, 'evaluation.json')) as f:
    recorded = json.load(f)
  model_dir = shutil.copytree(SHIPPED, tmp_path / 'fast_robust')  # eval.py writes summaries
  config = MNIST.load_config(os.path.join(SHIPPED, 'config.json'),
                             {'data_dir': data_dir, 'model_dir': str(model_dir), 'k': 0})
  results = commands.evaluate(MNIST, config, once=True, log=quiet)
  assert results.num_examples == 10000
  assert 100 * results.nat_accuracy == pytest.approx(recorded['natural'], abs=0.005)
