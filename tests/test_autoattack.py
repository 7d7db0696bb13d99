"""AutoAttack against the reference's behaviour (fra31/auto-attack, standard version, ℓ∞):
the losses, APGD's schedule and bookkeeping (against the reference's loop written in numpy
here), FAB-T's projection (against the reference's sorted-breakpoint algorithm in numpy),
Square's schedule and windows, the chain, the checks and the command."""
import dataclasses
import json
import os
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

from common import checkpoints, commands, losses, training
from common.attacks import apgd, autoattack, fab, runner, square
from common.attacks.threat import ThreatModel
from common.evaluation import Evaluator
from conftest import REPO, TINY_TEST, quiet, run_script, tiny_config
from mnist_challenge.challenge import MNIST

RNG_SEED = 4  # conftest reseeds RNG with it before each test
RNG = np.random.default_rng(RNG_SEED)


def linf(epsilon):
  return ThreatModel('linf', epsilon)


def test_dlr_and_targeted_dlr_on_hand_computed_logits():
  logits = tf.constant([[5.0, 3.0, 1.0, 0.0], [1.0, 4.0, 2.0, -1.0]])
  labels = tf.constant([0, 0])
  # Example 1: correct 5, best other 3, sorted 5 3 1 0: -(5 - 3) / (5 - 1).
  # Example 2: correct 1, best other 4, sorted 4 2 1 -1: -(1 - 4) / (4 - 1).
  np.testing.assert_allclose(apgd.dlr(labels, logits), [-0.5, 1.0], rtol=1e-6)
  targets = tf.constant([2, 3])
  # -(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2): -(5 - 1) / (5 - 0.5), -(1 + 1) / (4 - 0).
  np.testing.assert_allclose(apgd.targeted_dlr(targets)(labels, logits),
                             [-4 / 4.5, -0.5], rtol=1e-6)


def test_ranked_targets_are_the_classes_in_order_of_the_logits():
  logits = tf.constant([[0.1, 3.0, -1.0, 2.0, 0.5], [9.0, 1.0, 2.0, 3.0, 4.0]])
  ranked = [apgd.ranked_targets(logits, rank).numpy().tolist() for rank in range(1, 6)]
  assert ranked == [[1, 0], [3, 4], [4, 3], [0, 2], [2, 1]]


def test_the_checkpoints_of_apgd():
  assert apgd.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
  assert apgd.checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
  assert apgd.checkpoints(1) == [1]


def test_the_default_budget_is_the_standard_versions():
  attacker = autoattack.AutoAttack(lambda x: x, 0.3, 0.0, 1.0, (4,), log=quiet)
  assert (attacker.apgd_iterations, attacker.fab_iterations, attacker.square_queries,
          attacker.attacks) == (100, 100, 5000, ('apgd-ce', 'apgd-t', 'fab-t', 'square'))
  assert autoattack.budget(100) == dict(apgd_iterations=100, fab_iterations=100,
                                        square_queries=5000)
  assert autoattack.budget(20) == dict(apgd_iterations=20, fab_iterations=20,
                                       square_queries=1000)


# --- APGD against the reference's loop -----------------------------------------------------

def reference_apgd(loss_and_gradient, x, labels, epsilon, num_iterations, x_adv, norm='linf'):
  """The reference's APGD loop (autopgd_base.py, ℓ∞ or ℓ2, one restart) in numpy, with its
  bookkeeping as it is: a zero-initialised loss history indexed with i - c - 1 (at the first
  checkpoint, -1: its last, still-zero entry) and the adversarial point overwritten at every
  misclassified iterate. Returns (x_best, robust, x_best_adv, step sizes per iteration)."""
  n = len(x)
  first_window = max(int(0.22 * num_iterations), 1)
  shortest, shrink = max(int(0.06 * num_iterations), 1), max(int(0.03 * num_iterations), 1)
  per_example = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))
  l2 = lambda v: per_example(np.sqrt(np.sum(v.reshape(len(v), -1) ** 2, 1)))
  normalize = lambda v: v / (l2(v) + 1e-12)
  if norm == 'linf':
    project = lambda z: np.clip(np.minimum(np.maximum(z, x - epsilon), x + epsilon), 0.0, 1.0)
    direction = np.sign
  else:  # the reference's ℓ2: x + (z - x)/‖z - x‖ · min(ε, ‖z - x‖), then the box
    project = lambda z: np.clip(x + normalize(z - x) * np.minimum(epsilon, l2(z - x)), 0.0, 1.0)
    direction = normalize
  x_adv = x_adv.copy()
  x_best, x_best_adv = x_adv.copy(), x_adv.copy()
  loss_steps = np.zeros((num_iterations, n), np.float32)
  logits, loss, grad = loss_and_gradient(x_adv)
  grad_best = grad.copy()
  robust = logits.argmax(1) == labels
  loss_best = loss.copy()
  step = np.full(n, 2.0 * epsilon, np.float32)
  x_adv_old = x_adv.copy()
  window, counter = first_window, 0
  loss_best_last_check, reduced_last_check = loss_best.copy(), np.ones(n, bool)
  steps = []
  for i in range(num_iterations):
    momentum_step = x_adv - x_adv_old
    x_adv_old = x_adv.copy()
    a = np.float32(0.75 if i > 0 else 1.0)
    z = project(x_adv + per_example(step) * direction(grad))
    x_adv = project(x_adv + (z - x_adv) * a + momentum_step * (np.float32(1.0) - a))
    logits, loss, grad = loss_and_gradient(x_adv)
    predicted_right = logits.argmax(1) == labels
    robust &= predicted_right
    x_best_adv[~predicted_right] = x_adv[~predicted_right]
    loss_steps[i] = loss
    better = loss > loss_best
    x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], loss[better]
    counter += 1
    if counter == window:
      rises = sum((loss_steps[i - c] > loss_steps[i - c - 1]).astype(int) for c in range(window))
      halve = (rises <= window * 0.75) | (~reduced_last_check & (loss_best_last_check >= loss_best))
      reduced_last_check, loss_best_last_check = halve.copy(), loss_best.copy()
      step[halve] /= 2.0
      x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
      window, counter = max(window - shrink, shortest), 0
    steps.append(step.copy())
  return x_best, robust, x_best_adv, np.array(steps)


def mlp(seed, inputs=20, hidden=16, classes=4, scale=3.0):
  rng = np.random.default_rng(seed)
  w1 = tf.constant(rng.normal(0, scale / np.sqrt(inputs), (inputs, hidden)), tf.float32)
  w2 = tf.constant(rng.normal(0, scale / np.sqrt(hidden), (hidden, classes)), tf.float32)
  return lambda v: tf.matmul(tf.tanh(tf.matmul(v, w1)), w2)


@pytest.mark.parametrize('loss, norm', [('ce', 'linf'), ('targeted-dlr', 'linf'), ('ce', 'l2'),
                                        ('targeted-dlr', 'l2')])
def test_apgd_computes_what_the_reference_loop_computes(loss, norm):
  model_fn = mlp(seed=1)
  x = RNG.uniform(0, 1, (64, 20)).astype(np.float32)
  x[:, :3] = 0.0  # the pixel box binds
  x[:, 3:6] = 1.0
  labels = np.argmax(model_fn(x).numpy(), 1)
  targets = apgd.ranked_targets(model_fn(x), 2)
  loss_fn = losses.xent if loss == 'ce' else apgd.targeted_dlr(targets)
  epsilon, iterations = {'linf': 0.1, 'l2': 0.35}[norm], 30
  threat = ThreatModel(norm, epsilon)
  start = apgd.boundary_start(tf.constant(x), threat, tf.constant([1, 2], tf.int64),
                              tf.range(64, dtype=tf.int64))
  # The start lies on the ball's boundary where the box does not clip it.
  middle = np.full_like(x, 0.5)
  on_boundary = apgd.boundary_start(tf.constant(middle), threat, tf.constant([1, 2], tf.int64),
                                    tf.range(64, dtype=tf.int64)).numpy()
  np.testing.assert_allclose(threat.distance(on_boundary - middle), epsilon, rtol=1e-5)

  def loss_and_gradient(z):
    z = tf.constant(z)
    with tf.GradientTape() as tape:
      tape.watch(z)
      logits = model_fn(z)
      per_example = loss_fn(labels, logits)
      total = tf.reduce_sum(per_example)
    return logits.numpy(), per_example.numpy(), tape.gradient(total, z).numpy()

  x_best, robust, x_best_adv, steps = reference_apgd(loss_and_gradient, x, labels, epsilon,
                                                     iterations, start.numpy(), norm)
  x_adv, fooled, our_steps = apgd.apgd(model_fn, tf.constant(x), labels, threat,
                                       iterations, loss_fn, start, trace=True)
  x_adv, fooled = x_adv.numpy(), fooled.numpy()
  # Every path is taken: examples fooled and not, steps halved (restarting from the best
  # point) at some checkpoints and kept at others, momentum from the second iteration on.
  assert 0 < fooled.sum() < len(x)
  assert len(np.unique(steps[-1])) > 1 and steps.min() < 2 * epsilon
  np.testing.assert_array_equal(fooled, ~robust)
  if norm == 'linf':  # sign and clip are exact: the same decisions, the same points
    np.testing.assert_array_equal(our_steps.numpy(), steps)
    alike = np.ones(len(x), bool)
  else:
    # ℓ2 norms are sums, rounded differently by numpy and TensorFlow: where the loss has
    # converged on the sphere a halving decision compares near-equal losses and may go
    # either way. Most examples decide alike throughout, and end at the same point.
    alike = np.all(our_steps.numpy() == steps, axis=0)
    assert alike.mean() >= 0.9, alike.mean()
  atol = 1e-6 if norm == 'linf' else 1e-5
  np.testing.assert_allclose(x_adv[fooled & alike], x_best_adv[fooled & alike], atol=atol)
  np.testing.assert_allclose(x_adv[~fooled & alike], x_best[~fooled & alike], atol=atol)


def crafted_model(sequence, classes=2, slope=0.0, record=None, still_from=None, rng=RNG,
                  directions=None):
  """A model whose score (class 1's logit; the others 0, or -10 beyond the second class)
  follows `sequence` call by call (eagerly), plus `slope` times a random ±1 direction per
  call (or `directions[call]`) dotted with the input, so that the iterates move (from call
  `still_from` on the gradient is exactly 0). `record` collects the inputs."""
  calls = iter(range(len(sequence)))
  if directions is None:
    directions = rng.choice([-1.0, 1.0], (len(sequence), 8)).astype(np.float32)

  def model_fn(x):
    call = next(calls)
    if record is not None:
      record.append(x.numpy().copy())
    moving = slope if still_from is None or call < still_from else 0.0
    score = sequence[call] + moving * tf.reduce_sum(x * directions[call], axis=1)
    others = [tf.fill(tf.shape(score), -10.0)] * (classes - 2)
    return tf.stack([tf.zeros_like(score), score] + others, axis=1)
  return model_fn


def test_apgd_returns_the_last_misclassified_iterate():
  # Label 0; misclassified at iterations 2, 5 and 7 (class 1's score positive).
  sequence = [-5.0, -5.0, 5.0, -5.0, -5.0, 5.0, -5.0, 5.0, -5.0, -5.0, -5.0]
  inputs = []
  model_fn = crafted_model(sequence, slope=1e-3, record=inputs)
  x = tf.constant(RNG.uniform(0.2, 0.8, (1, 8)).astype(np.float32))
  x_adv, fooled = apgd.apgd(model_fn, x, tf.zeros(1, tf.int64), linf(0.1), 10,
                            losses.xent, x)
  assert fooled.numpy()[0] and len(inputs) == 11
  assert not np.array_equal(inputs[7], inputs[2])
  np.testing.assert_array_equal(x_adv.numpy(), inputs[7])


def counted(model_fn):
  """model_fn, and a variable counting its calls (inside compiled loops too)."""
  calls = tf.Variable(0)

  def counting(v):
    with tf.control_dependencies([calls.assign_add(1)]):
      return tf.identity(model_fn(v))
  return counting, calls


def test_apgd_and_fab_stop_where_no_example_can_move_and_return_the_same():
  # Every input gradient is exactly 0 (shattered gradients): nothing can move after APGD's
  # first iteration, and FAB soon stands still; stopping there gives every iteration's result.
  model_fn, calls = counted(masked_model())
  x = tf.constant(RNG.uniform(0, 1, (16, 784)).astype(np.float32))
  y = tf.argmax(model_fn(x), axis=1)
  targets = apgd.ranked_targets(model_fn(x), 2)
  start = apgd.boundary_start(x, linf(0.3), tf.constant([1, 2], tf.int64),
                              tf.range(16, dtype=tf.int64))
  runs = {
      'apgd-ce': lambda stop: apgd.apgd(model_fn, x, y, linf(0.3), 100, losses.xent, start,
                                        stop_when_stationary=stop),
      'apgd-t': lambda stop: apgd.apgd(model_fn, x, y, linf(0.3), 100,
                                       apgd.targeted_dlr(targets), start,
                                       stop_when_stationary=stop),
      'fab-t': lambda stop: fab.fab_targeted(model_fn, x, y, targets, linf(0.3), 100,
                                             stop_when_stationary=stop)}
  for name, run in runs.items():
    counts, results = [], []
    for stop in (True, False):
      calls.assign(0)
      results.append(tf.function(lambda: run(stop))())
      counts.append(int(calls.numpy()))
    for ours, every in zip(*results):
      np.testing.assert_array_equal(ours.numpy(), every.numpy(), err_msg=name)
    if name == 'fab-t':  # two calls per iteration
      assert counts[1] == 200 and counts[0] < 40, counts
    else:  # the start, then each iteration
      assert counts == [2, 101], (name, counts)


def apgd_stopping_and_not(**crafted):
  """APGD (CE, 100 iterations, ε 0.1) from x = 0.5 on `crafted_model(**crafted)`, made anew
  (the same directions) for each run, with and without stopping: [(x_adv, fooled, the
  model's inputs)] per run."""
  results = []
  for stop in (True, False):
    inputs = []
    model_fn = crafted_model(record=inputs, rng=np.random.default_rng(0), **crafted)
    x = tf.constant(np.full((1, 8), 0.5, np.float32))
    x_adv, fooled = apgd.apgd(model_fn, x, tf.zeros(1, tf.int64), linf(0.1), 100,
                              losses.xent, x, stop_when_stationary=stop)
    results.append((x_adv.numpy(), fooled.numpy(), inputs))
  return results


@pytest.mark.parametrize('case', ['momentum', 'restart'])
def test_apgd_runs_on_while_a_point_with_zero_gradient_can_still_move(case):
  # From iteration 10 the gradient is exactly 0. 'momentum': iteration 10 is the best and
  # misclassified, and momentum still carries the point on to later misclassified points
  # (the last is the result). 'restart': the best point is earlier; at the checkpoint after
  # iteration 22 APGD restarts from it and its gradient, and a later point is misclassified.
  if case == 'momentum':
    sequence = [-5.0] * 10 + [9.0] + [3.0] * 90
  else:
    sequence = [-5.0] * 5 + [-1.0] + [-5.0] * 20 + [2.0] * 75
  (ours, fooled, inputs), (every, _, every_inputs) = apgd_stopping_and_not(
      sequence=sequence, slope=0.05, still_from=10)
  assert fooled[0]
  np.testing.assert_array_equal(ours, every)
  assert not np.array_equal(every, every_inputs[10])  # a later point than iteration 10's
  assert len(inputs) == 101


def test_apgd_runs_on_while_a_point_that_stands_still_has_a_gradient():
  # The loss rises at every call; its gradient points out of the ε-box's corner the point
  # reaches (it stands still there, the best point so far) until call 10, then the other way.
  directions = np.ones((101, 8), np.float32)
  directions[10:] = -1.0
  (ours, _, inputs), (every, _, _) = apgd_stopping_and_not(
      sequence=[-5.0 + 0.04 * k for k in range(101)], slope=0.05, directions=directions)
  np.testing.assert_array_equal(ours, every)
  assert np.all(ours < 0.6)  # it left the corner
  assert len(inputs) == 101


def test_square_stops_once_every_example_is_fooled():
  model_fn, calls = counted(lambda v: tf.stack([tf.zeros([tf.shape(v)[0]]),
                                                tf.reduce_sum(v, 1)], axis=1))
  x = tf.constant(RNG.uniform(0.1, 1, (4, 784)).astype(np.float32))  # class 1 already
  x_adv, fooled = tf.function(lambda: square.square(
      model_fn, x, tf.zeros(4, tf.int64), linf(0.1), (28, 28, 1), 5000,
      tf.constant([3, 0], tf.int64)))()
  assert fooled.numpy().all() and int(calls.numpy()) == 1


@pytest.mark.parametrize('rows', [1, 3])
def test_each_attack_compiles_for_a_batch_of_any_size(rows):
  # A partial batch may be padded to a single row.
  model_fn = mlp(seed=2, inputs=12, classes=10)
  x = tf.constant(RNG.uniform(0, 1, (rows, 12)).astype(np.float32))
  y = tf.argmax(model_fn(x), axis=1)
  targets = apgd.ranked_targets(model_fn(x), 2)
  for run in (lambda: apgd.apgd(model_fn, x, y, linf(0.1), 5, losses.xent, x),
              lambda: fab.fab_targeted(model_fn, x, y, targets, linf(0.1), 5),
              lambda: square.square(model_fn, x, y, linf(0.1), (2, 2, 3), 5,
                                    tf.constant([1, 1], tf.int64))):
    x_adv, fooled = tf.function(run)()
    assert x_adv.shape == x.shape and fooled.shape == (rows,)


def test_a_partial_batch_is_padded_to_the_next_sixteenth_of_the_batch():
  one = autoattack.AutoAttack(lambda v: v, 0.3, 0.0, 1.0, (28, 28, 1), batch_size=200, log=quiet)
  assert [one.padded_size(n) for n in (1, 13, 14, 180, 195, 196)] == [13, 13, 26, 182, 195, 200]
  two = autoattack.AutoAttack(lambda v: v, 0.3, 0.0, 1.0, (28, 28, 1), batch_size=199, log=quiet,
                              strategy=tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']))
  # batch 200 for two replicas; each padded size a multiple of 14 (two rows per replica).
  assert two.batch_size == 200
  assert [two.padded_size(n) for n in (1, 15, 180, 199)] == [14, 28, 182, 200]


def test_the_model_is_traced_for_the_padded_batch_shapes_only(monkeypatch):
  # Judging a batch's adversarial examples at their own count traced the model anew for each
  # count (TensorFlow's retracing warning in every long run); the padded sizes are few.
  model_fn = mlp(seed=2, inputs=12, classes=10)
  x = RNG.uniform(0, 1, (47, 12)).astype(np.float32)
  y = np.argmax(model_fn(x).numpy(), 1)
  counts = []
  real = runner.Runner._replicated

  def spy(self, fn, batch, tensors):
    counts.append(len(set(tensors[3].numpy().tolist())))  # the batch's examples
    return real(self, fn, batch, tensors)
  monkeypatch.setattr(runner.Runner, '_replicated', spy)
  attacker = autoattack.AutoAttack(model_fn, 0.1, 0.0, 1.0, (2, 2, 3), ['apgd-ce', 'apgd-t'],
                                   batch_size=20, apgd_iterations=5, log=quiet)
  report = attacker.run(x, y)
  assert 0 < report.robust.sum() < 47  # some broken, some left: the counts vary
  padded = {attacker.padded_size(c) for c in counts}
  assert set(counts) - padded - {20, 7}  # counts the old judging traced for
  shapes = padded | {20, 7}  # and the clean pass's batches of 20, 20, 7
  assert attacker._logits.experimental_get_tracing_count() == len(shapes)


def test_apgd_halves_at_the_first_checkpoint_as_the_reference_counts_the_first_rise():
  # Targeted DLR of logits (0, v, -10, -10), label 0, target 1: v / (max(0, v) + 10), negative
  # while the example is robust. The start's loss is -0.9, the first iterate's -0.8: a rise
  # over the start, but the reference compares it with its loss history's still-zero last
  # entry, so it is no rise. Then 16 rises in the 21 steps to iteration 22: 16 of 22 counted
  # (<= 0.75 x 22: η halves there), where counting the first would make 17 (no halving).
  values = [-9.0, -8.0]
  for k in range(21):
    values.append(values[-1] + (0.1 if k < 16 else -0.05))
  sequence = values + [-7.0] * (101 - len(values))
  model_fn = crafted_model(sequence, classes=4)
  x = tf.constant(RNG.uniform(0.2, 0.8, (1, 8)).astype(np.float32))
  loss_fn = apgd.targeted_dlr(tf.constant([1]))
  _, _, steps = apgd.apgd(model_fn, x, tf.zeros(1, tf.int64), linf(0.1), 100, loss_fn, x,
                          trace=True)
  steps = steps.numpy()[:, 0]
  np.testing.assert_allclose(steps[:21], 0.2)
  np.testing.assert_allclose(steps[21], 0.1)  # halved after iteration 22


def crafted_sequence_model(sequence):
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
  _, _, steps = apgd.apgd(crafted_sequence_model(sequence), x, tf.zeros(3, tf.int64),
                          linf(0.1), 100, losses.xent, x, trace=True)
  expected = np.empty(100)
  for first, last, value in ((0, 40, 0.2), (40, 69, 0.1), (69, 79, 0.05), (79, 86, 0.025),
                             (86, 92, 0.0125), (92, 98, 0.00625), (98, 100, 0.003125)):
    expected[first:last] = value
  np.testing.assert_allclose(steps.numpy()[:, 0], expected, rtol=1e-6)


# --- FAB-T against the reference's projection ----------------------------------------------

def reference_projection(t, w, b):
  """The reference's ℓ∞ projection (fab_projections.projection_linf) onto w·z = b within the
  box [0, 1], row by row in float64, by its sorted breakpoints: each coordinate moves towards
  the hyperplane by min(r, its room), coordinates with w = 0 not at all; r from the first
  breakpoint at which the gap closes, else the box's corner."""
  d = np.zeros_like(t, np.float64)
  for row, (p, v, target) in enumerate(zip(t.astype(np.float64), w.astype(np.float64), b)):
    gap = target - v @ p
    if gap == 0:
      continue
    direction = np.sign(gap) * np.sign(v)
    room = np.where(direction > 0, 1.0 - p, p)
    weight = np.abs(v)
    if weight @ room <= abs(gap):
      d[row] = direction * room
      continue
    closed, free = 0.0, weight.sum()
    for j in np.argsort(room, kind='stable'):
      if closed + free * room[j] >= abs(gap):
        break
      closed, free = closed + weight[j] * room[j], free - weight[j]
    d[row] = direction * np.minimum((abs(gap) - closed) / free, room)
  return d


def test_the_projection_is_the_references_on_both_sides_where_the_box_binds_and_w_is_zero():
  n, size = 48, 30
  t = RNG.uniform(0, 1, (n, size))
  t[:, :4] = RNG.choice([0.0, 1.0], (n, 4))  # no room one way
  w = RNG.normal(0, 1, (n, size))
  w[:, 4:8] = 0.0  # exactly-zero gradients never move
  # The gap to close as a fraction of what the box allows that way: tiny (no coordinate
  # saturates), some saturate, most saturate, beyond reach (the corner); either sign.
  fractions = np.tile([0.001, 0.3, 0.9, 1.5], n // 4) * np.repeat([1, -1], n // 2)
  reach = np.array([np.abs(v) @ np.where(np.sign(f) * np.sign(v) > 0, 1 - p, p)
                    for p, v, f in zip(t, w, fractions)])
  b = np.sum(w * t, 1) + fractions * reach
  expected = reference_projection(t, w, b)
  points, w32 = t.astype(np.float32), w.astype(np.float32)
  ours = fab.project_linf(tf.constant(points), tf.constant(w32), tf.constant(b, tf.float32),
                          tf.constant(-points), tf.constant(1 - points)).numpy()
  np.testing.assert_allclose(ours, expected, atol=2e-5)
  assert np.all(ours[:, 4:8] == 0.0)
  assert np.all(np.abs(ours[fractions < 0]).max(1) > 0)  # past the hyperplane: it steps back
  assert np.all(points + ours >= 0.0) and np.all(points + ours <= 1.0)


def test_fab_t_finds_the_minimal_linf_distance_where_the_box_binds_and_dead_pixels_stay():
  w = RNG.normal(0, 1, (30, 2)).astype(np.float32)
  w[:6] = 0.0  # pixels with an exactly-zero gradient
  x = RNG.uniform(0.3, 0.7, (24, 30)).astype(np.float32)
  x[:, 6:14] = RNG.choice([0.0, 1.0], (24, 8))  # the box binds
  y = np.argmax(x @ w, 1)
  # The minimal distance: the projection of x onto the (linear) boundary within the box.
  boundary = (w[:, 1 - y] - w[:, y]).T  # boundary·z >= 0: the target class wins
  minimal = np.abs(reference_projection(x, boundary, np.zeros(len(x)))).max(1)
  unboxed = np.abs(np.sum(boundary * x, 1)) / np.abs(boundary).sum(1)
  assert np.sum(minimal > unboxed * 1.05) >= 5  # the box binds on several
  x_adv, fooled = fab.fab_targeted(lambda v: tf.matmul(v, w), tf.constant(x), y, 1 - y,
                                   linf(0.6))
  x_adv = x_adv.numpy()
  found = np.abs(x_adv - x).max(1)
  assert fooled.numpy().all()
  np.testing.assert_allclose(found, minimal, rtol=0.02)
  assert np.all(found >= minimal * (1 - 1e-4))  # never below the true minimum
  # (Only float rounding of the mixing and the backward step moves them, as in the reference.)
  np.testing.assert_allclose(x_adv[:, :6], x[:, :6], atol=1e-6)
  # Success counts only within ε.
  _, within = fab.fab_targeted(lambda v: tf.matmul(v, w), tf.constant(x), y, 1 - y,
                               linf(float(np.median(minimal))))
  assert 0 < within.numpy().sum() < len(y)


# --- Square against the reference's schedule -----------------------------------------------

# The standard version's square sides over its 5,000 iterations (p_init 0.8 halved after
# iterations 10, 50, 200, 500, 1,000, 2,000, 4,000; side round(√(p·H·W))), as
# (first iteration, side).
SQUARE_SIDES = {
    (28, 28): [(0, 25), (11, 18), (51, 13), (201, 9), (501, 6), (1001, 4), (2001, 3), (4001, 2)],
    (32, 32): [(0, 29), (11, 20), (51, 14), (201, 10), (501, 7), (1001, 5), (2001, 4),
               (4001, 3)]}


@pytest.mark.parametrize('shape', list(SQUARE_SIDES))
def test_square_sides_follow_the_standard_versions_schedule(shape):
  table = SQUARE_SIDES[shape]
  sides = [square.square_side(i, *shape) for i in range(5000)]
  assert sides == [[side for first, side in table if first <= i][-1] for i in range(5000)]
  runs = square.side_runs(5000, *shape)
  assert sum(count for _, count in runs) == 5000
  assert [side for side, _ in runs] == [side for _, side in table]


def test_square_corners_never_touch_the_last_row_unless_the_square_fills_the_image():
  draw = lambda side, size, s: int(square.corner(side, size, tf.constant([s, 7], tf.int64)))
  for side in (2, 25, 27):
    assert {draw(side, 28, s) for s in range(400)} == set(range(28 - side)), side
  assert {draw(28, 28, s) for s in range(20)} == {0}


def test_square_queries_the_model_once_more_than_its_iterations_and_spares_the_last_row():
  # A model that accepts every candidate (its margin falls at every call) and marks each
  # pixel that changes between consecutive queries.
  calls = tf.Variable(0)
  previous = tf.Variable(tf.zeros([1, 784]))
  touched = tf.Variable(tf.zeros([784], tf.bool))

  def model_fn(v):
    changed = tf.reduce_any(tf.not_equal(v, previous), axis=0)
    with tf.control_dependencies([touched.assign(touched | (changed & (calls > 0))),
                                  previous.assign(v)]):
      margin = 1e6 - tf.cast(calls.assign_add(1), tf.float32)
    return tf.stack([margin[None], tf.zeros([1])], axis=1)

  x = tf.fill([1, 784], 0.5)
  run = tf.function(lambda: square.square(model_fn, x, tf.zeros([1], tf.int64), linf(0.1),
                                          (28, 28, 1), 5000, tf.constant([3, 0], tf.int64)))
  run()
  assert int(calls.numpy()) == 5001  # the stripes, then 5,000 iterations
  touched = touched.numpy().reshape(28, 28)
  assert not touched[27].any() and not touched[:, 27].any()
  assert touched[:27, :27].mean() > 0.9


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
  x_adv, fooled = square.square(model_fn, x, y, linf(0.3), (28, 28, 1), 300,
                                tf.constant([1, 1], tf.int64))
  assert np.all(np.abs(x_adv.numpy() - x.numpy()) <= 0.3 + 1e-6)
  before = square.margin(y, model_fn(x)).numpy()
  after = square.margin(y, model_fn(x_adv)).numpy()
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


@pytest.mark.parametrize('square_broke, warns', [(2, False), (3, True)])
def test_the_masking_warning_counts_examples_so_that_exactly_0_2_percent_is_silent(
    square_broke, warns):
  # 903 robust after FAB-T, Square breaks 2 or 3: 0.903 - 0.901 > 0.002 in floats, which
  # warned at exactly 0.2% before.
  broken_by = np.array([''] * 903 + ['apgd-ce'] * 97, dtype=object)
  broken_by[:square_broke] = 'square'
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    autoattack.warn_if_square_beats_gradients(autoattack.STANDARD, broken_by)
    # Square first: no gradient attack before it, nothing to compare.
    autoattack.warn_if_square_beats_gradients(['square', 'apgd-ce'], broken_by)
  messages = [str(w.message) for w in caught]
  assert len(messages) == int(warns)
  assert not warns or f'broke {square_broke / 10:.2f}% more' in messages[0]


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
  attacked, batches = [], []
  real_attack, real_replicated = runner.Runner.attack, runner.Runner._replicated

  def spy_attack(self, attack, model_fn, images, labels, targets, examples, *args, **kwargs):
    attacked.append((attack.name, examples, targets))
    return real_attack(self, attack, model_fn, images, labels, targets, examples, *args,
                       **kwargs)

  def spy_replicated(self, fn, batch, tensors):
    batches.append(tensors[3].numpy())  # each padded batch's examples
    return real_replicated(self, fn, batch, tensors)
  monkeypatch.setattr(runner.Runner, 'attack', spy_attack)
  monkeypatch.setattr(runner.Runner, '_replicated', spy_replicated)
  # 25 iterations (100 took 66 s of this test on 2 cores): still more than PGD's 20 steps.
  attacker = autoattack.AutoAttack(lambda v: model(v, training=False), 0.05, 0.0, 1.0,
                                   (28, 28, 1), ['apgd-ce', 'apgd-t'], batch_size=20, seed=3,
                                   apgd_iterations=25, log=quiet)
  report = attacker.run(test.images, test.labels)
  after_ce, after_t = (o.robust_accuracy for o in report.outcomes)
  print(f'PGD-20 {pgd:.3f}, APGD-CE {after_ce:.3f}, APGD-T {after_t:.3f}')
  assert after_ce <= pgd
  clean_logits = model(test.images, training=False).numpy()
  correct = set(np.flatnonzero(np.argmax(clean_logits, 1) == test.labels))
  robust_after_ce = correct - set(np.flatnonzero(report.broken_by == 'apgd-ce'))
  targeted = [(examples, targets) for name, examples, targets in attacked if name == 'apgd-t']
  # APGD-T: the 2nd ... 10th class of each example's clean logits, one run each in that
  # order, on points APGD-CE did not break (and, run by run, on the points the earlier ranks
  # left).
  assert len(targeted) == 9
  by_class = np.argsort(-clean_logits, axis=1, kind='stable')
  left = robust_after_ce
  for rank, (examples, targets) in enumerate(targeted, start=2):
    assert set(examples.tolist()) <= left
    left = set(examples.tolist())
    np.testing.assert_array_equal(targets, by_class[examples, rank - 1])
    assert not np.any(targets == test.labels[examples])
  for examples in batches:  # each batch padded to the next sixteenth of the batch size
    assert len(examples) == attacker.padded_size(len(set(examples.tolist())))
  assert all(report.broken_by[report.robust] == '')
  assert set(report.broken_by[~report.robust]) <= {'', 'apgd-ce', 'apgd-t'}


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


def test_the_reference_benchmark_skips_saying_why_without_the_reference(tmp_path):
  script = os.path.join(REPO, 'benchmarks', 'autoattack_reference.py')
  result = run_script([script, '--reference', str(tmp_path / 'absent')])
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('skipped: no copy of the reference at --reference')
  (tmp_path / 'copy' / 'autoattack').mkdir(parents=True)
  (tmp_path / 'copy' / 'autoattack' / 'autoattack.py').write_text('')
  no_torch = tmp_path / 'python'  # a Python whose `import torch` fails
  no_torch.write_text(f'#!/bin/sh\nexec {sys.executable} -c "import sys; sys.exit(1)"\n')
  no_torch.chmod(0o755)
  result = run_script([script, '--reference', str(tmp_path / 'copy'),
                       '--reference_python', str(no_torch)])
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f'skipped: {no_torch} cannot import torch')
  # Its torch networks are Madry's and the Small CNN: no model is a skip, another network an
  # error.
  torch = tmp_path / 'torch_python'  # a Python whose `import torch` succeeds
  torch.write_text(f'#!/bin/sh\nexec {sys.executable} -c "import sys; sys.exit(0)"\n')
  torch.chmod(0o755)
  arguments = [script, '--reference', str(tmp_path / 'copy'), '--reference_python', str(torch)]
  result = run_script(arguments + ['--model_dir', str(tmp_path / 'none')])
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f'skipped: no model at --model_dir "{tmp_path / "none"}"')
  (tmp_path / 'tramer').mkdir()
  (tmp_path / 'tramer' / 'config.json').write_text('{"model": "tramer_b"}')
  result = run_script(arguments + ['--model_dir', str(tmp_path / 'tramer')])
  assert result.returncode == 1
  assert 'holds the tramer_b network; the PyTorch ports are madry, small_cnn' in result.stderr
