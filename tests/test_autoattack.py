"""AutoAttack: the losses, APGD's schedule and threat model, APGD-T, FAB-T's minimal distance,
Square without gradients, the chain, the checks and the command."""
import dataclasses
import json
import warnings

import numpy as np
import pytest
import tensorflow as tf

from common import autoattack, checkpoints, commands, training
from common.evaluation import Evaluator
from conftest import TINY_TEST, quiet, tiny_config
from mnist_challenge.challenge import MNIST

RNG_SEED = 4  # conftest reseeds RNG with it before each test
RNG = np.random.default_rng(RNG_SEED)


def test_dlr_and_targeted_dlr_on_hand_computed_logits():
  logits = tf.constant([[5.0, 3.0, 1.0, 0.0], [1.0, 4.0, 2.0, -1.0]])
  labels = tf.constant([0, 0])
  # Example 1: correct 5, best other 3, sorted 5 3 1 0: -(5 - 3) / (5 - 1).
  # Example 2: correct 1, best other 4, sorted 4 2 1 -1: -(1 - 4) / (4 - 1).
  np.testing.assert_allclose(autoattack.dlr(labels, logits), [-0.5, 1.0], rtol=1e-6)
  targets = tf.constant([2, 3])
  # -(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2): -(5 - 1) / (5 - 0.5), -(1 + 1) / (4 - 0).
  np.testing.assert_allclose(autoattack.targeted_dlr(targets)(labels, logits),
                             [-4 / 4.5, -0.5], rtol=1e-6)


def test_the_checkpoints_of_apgd():
  assert autoattack.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
  assert autoattack.checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
  assert autoattack.checkpoints(1) == [1]


def test_the_default_budget_is_the_standard_versions():
  assert autoattack.budget(autoattack.STANDARD_ITERATIONS) == dict(
      apgd_iterations=100, fab_iterations=100, square_queries=5000)
  attacker = autoattack.AutoAttack(lambda x: x, 0.3, 0.0, 1.0, (4,), log=quiet)
  assert {'apgd_iterations': attacker.apgd_iterations, 'fab_iterations': attacker.fab_iterations,
          'square_queries': attacker.square_queries} == autoattack.budget(100)
  assert autoattack.budget(20)['square_queries'] == 1000


def crafted_model(sequence):
  """A model whose loss (label 0) follows `sequence` call by call and whose gradient is 0."""
  calls = tf.Variable(0)
  table = tf.constant(sequence, tf.float32)

  def model_fn(x):
    value = table[calls.assign_add(1) - 1]
    score = value + 0.0 * tf.reduce_sum(x, axis=1)
    return tf.stack([tf.zeros_like(score), score], axis=1)  # xent of class 0 rises with it
  return model_fn


def test_apgd_halves_its_step_as_specified_on_a_crafted_loss_sequence():
  # Iterations 1-22 rise (no halving at 22); 23-41 drop, then rise below the best: the loss
  # rose in 18 of 19 steps, but the best did not improve and the step was not halved at 22
  # (halved at 41); 42-57 set new bests (not halved); from 58 the loss is flat: halved at
  # every later checkpoint (70, 80, 87, 93, 99).
  sequence = [0.0] + list(range(1, 23)) + [-50.0] + [-50.0 + k for k in range(1, 19)] \
      + [22.0 + k for k in range(1, 17)] + [38.0] * 43
  assert len(sequence) == 101
  x = tf.constant(RNG.uniform(0.2, 0.8, (3, 8)).astype(np.float32))
  start = x
  _, _, steps = autoattack.apgd(crafted_model(sequence), x, tf.zeros(3, tf.int64), 0.1, 0.0,
                                1.0, 100, autoattack.losses.xent, start, trace=True)
  expected = np.empty(100)
  for first, last, value in ((0, 40, 0.2), (40, 69, 0.1), (69, 79, 0.05), (79, 86, 0.025),
                             (86, 92, 0.0125), (92, 98, 0.00625), (98, 100, 0.003125)):
    expected[first:last] = value
  np.testing.assert_allclose(steps.numpy()[:, 0], expected, rtol=1e-6)


def test_apgd_stays_in_the_threat_model_and_finds_a_linear_models_optimum():
  w = RNG.normal(0, 1, (20, 2)).astype(np.float32)
  x = RNG.uniform(0, 1, (16, 20)).astype(np.float32)
  x[:, :4] = 0.0
  x[:, 4:8] = 1.0
  y = np.argmax(x @ w, 1)
  x_t = tf.constant(x)
  model_fn = lambda v: tf.matmul(v, w)
  start = autoattack.boundary_start(x_t, 0.1, 0.0, 1.0, tf.constant([1, 2], tf.int64),
                                    tf.range(16, dtype=tf.int64))
  assert np.all(np.abs(start.numpy() - x) <= 0.1 + 1e-7)
  x_adv, fooled = autoattack.apgd(model_fn, x_t, y, 0.1, 0.0, 1.0, 30,
                                  lambda labels, logits: autoattack.losses.xent(labels, logits),
                                  start)
  x_adv = x_adv.numpy()
  assert np.all(np.abs(x_adv - x) <= 0.1 + 1e-7) and x_adv.min() >= 0 and x_adv.max() <= 1
  # Two classes, linear logits: the loss rises along sign(w_other - w_y) everywhere, so the
  # best point of the box is its corner that way, clipped to the pixel range.
  direction = np.sign(w[:, 1 - y] - w[:, y]).T
  corner = np.clip(x + 0.1 * direction, 0, 1)
  robust = ~fooled.numpy()
  np.testing.assert_allclose(x_adv[robust], corner[robust], atol=1e-6)
  fooled_rows = fooled.numpy()
  assert np.all(np.argmax(x_adv[fooled_rows] @ w, 1) != y[fooled_rows])


def test_fab_t_finds_the_minimal_linf_distance_of_a_linear_model():
  w = RNG.normal(0, 1, (30, 2)).astype(np.float32)
  b = np.zeros(2, np.float32)
  x = RNG.uniform(0.4, 0.6, (12, 30)).astype(np.float32)
  logits = x @ w
  y = np.argmax(logits, 1)
  # Minimal ℓ∞ distance to the other class's boundary (the box is far): margin / ||Δw||_1.
  distance = np.abs(logits[:, 0] - logits[:, 1]) / np.abs(w[:, 0] - w[:, 1]).sum()
  assert distance.max() < 0.35  # x in [0.4, 0.6]: the box [0, 1] never binds
  x_adv, fooled = autoattack.fab_targeted(lambda v: tf.matmul(v, w) + b, tf.constant(x), y,
                                          1 - y, 0.5, 0.0, 1.0)
  found = np.abs(x_adv.numpy() - x).max(1)
  assert fooled.numpy().all()
  np.testing.assert_allclose(found, distance, rtol=0.02)
  assert np.all(found >= distance * (1 - 1e-4))  # never below the true minimum
  # Success counts only within ε.
  _, within = autoattack.fab_targeted(lambda v: tf.matmul(v, w), tf.constant(x), y, 1 - y,
                                      float(np.median(distance)), 0.0, 1.0)
  assert 0 < within.numpy().sum() < len(y)


def masked_model():
  """A linear model behind a quantising input layer: its input gradient is 0 everywhere."""
  w = RNG.normal(0, 1, (784, 10)).astype(np.float32)

  def model_fn(v):
    quantised = tf.stop_gradient(tf.round(v * 4.0) / 4.0) + 0.0 * v
    return tf.matmul(quantised, w) * 0.05
  return model_fn


def test_square_lowers_the_margin_without_gradients_and_breaks_a_masked_model():
  model_fn = masked_model()
  x = tf.constant(RNG.uniform(0, 1, (20, 784)).astype(np.float32))
  y = tf.argmax(model_fn(x), axis=1)
  x_adv, fooled = autoattack.square(model_fn, x, y, 0.3, 0.0, 1.0, (28, 28, 1), 300,
                                    tf.constant([1, 1], tf.int64))
  assert np.all(np.abs(x_adv.numpy() - x.numpy()) <= 0.3 + 1e-6)
  before = autoattack.margin(y, model_fn(x)).numpy()
  after = autoattack.margin(y, model_fn(x_adv)).numpy()
  assert np.all(after <= before) and after.mean() < before.mean()
  assert fooled.numpy().mean() > 0.5
  # APGD cannot move on it; the chain says so and Square does the work.
  attacker = autoattack.AutoAttack(model_fn, 0.3, 0.0, 1.0, (28, 28, 1),
                                   ['apgd-ce', 'square'], batch_size=20, seed=1,
                                   square_queries=300, log=quiet)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    report = attacker.run(x.numpy(), y.numpy())
  after_apgd, after_square = (o.robust_accuracy for o in report.outcomes)
  assert report.clean_accuracy == 1.0
  assert after_square < after_apgd - 0.3  # Square broke what APGD's start alone did not
  messages = ' '.join(str(w.message) for w in caught)
  assert 'input gradient is zero' in messages and 'may mask its gradients' in messages


@pytest.fixture(scope='module')
def trained(tmp_path_factory, mnist_dir):
  tmp_path = tmp_path_factory.mktemp('autoattack')
  # Fast adversarial training at ε 0.05 on the tiny data: robust enough that some points
  # survive each attack.
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=30, training_batch_size=20,
                       epsilon=0.05, training_attack='fgsm_rs', learning_rate=2e-3,
                       eval_batch_size=20)
  training.train(MNIST, config, log=quiet)
  model = MNIST.build_model(config)
  checkpoints.restore_model(model, checkpoints.latest(config.model_dir))
  return config, model


def test_apgd_is_at_least_as_strong_as_pgd_and_the_chain_attacks_only_robust_points(
    trained, monkeypatch):
  config, model = trained
  test = MNIST.load_data(config).test
  params = dataclasses.replace(MNIST.attack_params(config), num_steps=20, step_size=0.005)
  pgd = Evaluator(model, params, seed=0).attack(test, 20).adv_accuracy
  attacked = []
  real = autoattack.AutoAttack._attack_batch

  def spy(self, run, x, y, examples, batch_index):
    attacked.append((run[0], set(examples.numpy().tolist())))
    return real(self, run, x, y, examples, batch_index)
  monkeypatch.setattr(autoattack.AutoAttack, '_attack_batch', spy)
  # 25 iterations (100 took 66 s of this test on 2 cores): still more than PGD's 20 steps.
  attacker = autoattack.AutoAttack(lambda v: model(v, training=False), 0.05, 0.0, 1.0,
                                   (28, 28, 1), ['apgd-ce', 'apgd-t'], batch_size=20, seed=3,
                                   apgd_iterations=25, log=quiet)
  report = attacker.run(test.images, test.labels)
  after_ce, after_t = (o.robust_accuracy for o in report.outcomes)
  print(f'PGD-20 {pgd:.3f}, APGD-CE {after_ce:.3f}, APGD-T {after_t:.3f}')
  assert after_ce <= pgd and after_t <= after_ce
  robust_after_ce = set(np.flatnonzero(report.broken_by != 'apgd-ce')) & set(
      np.flatnonzero(np.argmax(model(test.images), 1) == test.labels))
  targeted = set().union(*(rows for name, rows in attacked if name == 'apgd-t'))
  assert targeted and targeted <= robust_after_ce  # only points APGD-CE did not break
  assert all(report.broken_by[report.robust] == '')


@pytest.mark.slow
def test_the_command_writes_a_set_that_run_attack_scores_alike_and_repeats(trained, tmp_path,
                                                                           monkeypatch):
  config, model = trained
  asked = []
  real_autoattack = autoattack.AutoAttack

  def recorded(*args, **kwargs):
    asked.append({k: kwargs[k] for k in ('apgd_iterations', 'fab_iterations', 'square_queries')})
    return real_autoattack(*args, **kwargs)

  monkeypatch.setattr(autoattack, 'AutoAttack', recorded)
  config = config.replace(store_adv_path=str(tmp_path / 'aa.npy'))
  lines = []
  # A fifth of the standard iterations (the full ones took 140 s of this test on 2 cores).
  report = commands.run_autoattack(MNIST, config, num_examples=20, seed=2, iterations=20,
                                   output_dir=str(tmp_path / 'out'),
                                   log=lambda *a, **k: lines.append(a[0]))
  assert asked == [dict(apgd_iterations=20, fab_iterations=20, square_queries=1000)]
  assert any('20 iterations (the standard: 100)' in line for line in lines)
  for name in ('APGD-CE', 'APGD-T', 'FAB-T', 'SQUARE'):  # the standard version
    assert any(line.startswith(f'robust accuracy after {name}: ') for line in lines), name
  with open(tmp_path / 'out' / 'autoattack.json') as f:
    saved = json.load(f)
  assert saved['robust accuracy %'] == pytest.approx(100 * report.robust_accuracy)
  assert (saved['iterations'], saved['square queries']) == (20, 1000)
  assert len(saved['broken by']) == 20
  assert set(saved['broken by']) <= {None, 'apgd-ce', 'apgd-t', 'fab-t', 'square'}
  # run_attack accepts the set and scores it: the first 20 as attacked, the rest clean.
  test = MNIST.load_data(config).test
  rest = np.argmax(model(test.images[20:], training=False), 1) == test.labels[20:]
  accuracy = commands.run_attack(MNIST, config, log=quiet)
  assert accuracy == pytest.approx((report.robust.sum() + rest.sum()) / TINY_TEST)
  # Repeatable with a seed.
  runs = [commands.run_autoattack(
      MNIST, config.replace(store_adv_path=str(tmp_path / f'{i}.npy')), attacks='apgd-ce,fab-t',
      num_examples=20, seed=5, iterations=20, output_dir=str(tmp_path / f'out{i}'),
      log=quiet).adversarial
      for i in range(2)]
  np.testing.assert_array_equal(runs[0], runs[1])
