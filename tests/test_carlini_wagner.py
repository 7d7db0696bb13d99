"""The Carlini–Wagner attacks (common/attacks/cw_*.py) on models whose answer is known in closed
form: on a linear model the minimal ℓ2 perturbation to the other class is |margin| / ‖g‖₂ and
the minimal ℓ∞ one |margin| / ‖g‖₁; on a model where given pixels decide, ℓ0 changes exactly
those; the optimiser is TF1's Adam step for step; failures return the clean image. Agreement
with the authors' TF1 code on a real model: benchmarks/cw_reference.py."""
import os

import numpy as np
import pytest
import tensorflow as tf

from common.attacks import carlini_wagner as cw
from common.attacks import cw_l0, cw_l2, cw_linf
from common.attacks import cw_linf as linf_defaults
from common.attacks.threat import ThreatModel
from common.errors import ChallengeError
from conftest import REPO, run_script

RNG = np.random.default_rng(11)
BOX = ThreatModel('l2', 0.0)  # [0, 1] pixels; C&W minimises the distance, ε plays no part


def linear_problem(n=12, size=20, seed=0):
  """A two-class linear model z = (x - ½)·W on mid-range inputs, whose boundary is near
  enough that the box does not bind: (model_fn, x, labels, the minimal ℓ2 distance of each
  example to the other class, ‖w₁ - w₀‖₂)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(0, 1, (size, 2)).astype(np.float32)
  x = rng.uniform(0.35, 0.65, (n, size)).astype(np.float32)
  logits = (x - 0.5) @ w
  y = np.argmax(logits, 1)
  slope = np.linalg.norm(w[:, 1] - w[:, 0])
  minimal = np.abs(logits[:, 1] - logits[:, 0]) / slope
  return (lambda v: tf.matmul(v - 0.5, w)), x, y, minimal, slope


def test_adam_is_tf1s_adam_optimizer_step_for_step():
  v1 = tf.compat.v1
  start = RNG.normal(0, 1, (3, 5)).astype(np.float32)
  target = RNG.normal(0, 1, (3, 5)).astype(np.float32)
  objective = lambda v: tf.reduce_sum(tf.square(v - target) * tf.abs(v))
  theirs = []
  graph = tf.Graph()
  with graph.as_default():
    variable = v1.Variable(start)
    train = v1.train.AdamOptimizer(1e-2).minimize(objective(variable))
    with v1.Session() as session:
      session.run(v1.global_variables_initializer())
      for _ in range(50):
        session.run(train)
        theirs.append(session.run(variable))
  w, state = tf.constant(start), cw.Adam.start(tf.constant(start))
  for step in range(50):
    with tf.GradientTape() as tape:
      tape.watch(w)
      loss = objective(w)
    w, state = cw.Adam.step(w, tape.gradient(loss, w), state, 1e-2)
    # The first steps to float32 rounding (bias correction and ε̂ where TF1 has them); over
    # 50 steps rounding accumulates a little.
    np.testing.assert_allclose(w.numpy(), theirs[step], rtol=1e-6 if step < 3 else 1e-4,
                               atol=1e-7 if step < 3 else 1e-5)


def test_the_tanh_change_of_variables_maps_the_box_onto_the_reals():
  x = tf.constant([0.0, 0.25, 0.5, 1.0])
  w = cw.to_tanh_space(x, 0.0, 1.0)
  np.testing.assert_allclose(w.numpy()[1:3], np.arctanh(np.array([-0.5, 0.0]) * 0.999999))
  np.testing.assert_allclose(cw.from_tanh_space(w, 0.0, 1.0).numpy(), x.numpy(), atol=1e-6)
  assert np.isfinite(w.numpy()).all()
  # The challenge's CIFAR-10 scale: the same w for the same relative position.
  np.testing.assert_allclose(cw.to_tanh_space(x * 255, 0.0, 255.0).numpy(), w.numpy(),
                             rtol=1e-6)


@pytest.mark.parametrize('targeted', [False, True])
def test_cw_l2_finds_the_minimal_l2_perturbation_of_a_linear_model(targeted):
  model_fn, x, y, minimal, _ = linear_problem()
  assert minimal.max() < 0.3  # the box (0.35 away at least) does not bind
  targets = (1 - y) if targeted else None
  # Adam circles the boundary at about its step's length (learning rate 1e-2 in tanh space:
  # a few hundredths of a pixel over 20 pixels): within 5% at the authors' rate, within 1%
  # at a tenth of it.
  for learning_rate, iterations, tolerance in ((1e-2, 1000, 0.05), (1e-3, 3000, 0.01)):
    run = tf.function(lambda: cw_l2.cw_l2(model_fn, tf.constant(x), y, BOX, targets=targets,
                                          learning_rate=learning_rate,
                                          max_iterations=iterations))
    x_adv, success = (t.numpy() for t in run())
    found = np.linalg.norm(x_adv - x, axis=1)
    assert success.all()
    assert np.all(np.argmax(model_fn(x_adv).numpy(), 1) != y)
    assert np.all(found >= minimal * (1 - 1e-3))
    np.testing.assert_allclose(found, minimal, rtol=tolerance)


def test_cw_l2_confidence_moves_past_the_boundary_by_kappa():
  model_fn, x, y, minimal, slope = linear_problem()
  kappa = 0.5
  x_adv, success = tf.function(lambda: cw_l2.cw_l2(
      model_fn, tf.constant(x), y, BOX, confidence=kappa, learning_rate=1e-3,
      max_iterations=3000))()
  logits = model_fn(x_adv).numpy()
  margins = logits[np.arange(len(y)), 1 - y] - logits[np.arange(len(y)), y]
  assert success.numpy().all() and np.all(margins >= kappa - 1e-3)
  # Farther than the boundary itself, by κ over the gradient's norm.
  found = np.linalg.norm(x_adv.numpy() - x, axis=1)
  np.testing.assert_allclose(found, minimal + kappa / slope, rtol=0.01)


def test_cw_l2_returns_the_clean_image_where_it_fails():
  x = RNG.uniform(0, 1, (4, 10)).astype(np.float32)
  constant = lambda v: tf.constant([[5.0, 0.0]]) + 0.0 * v[:, :2]  # never fooled
  x_adv, success = tf.function(lambda: cw_l2.cw_l2(
      constant, tf.constant(x), np.zeros(4, np.int64), BOX, max_iterations=20,
      binary_search_steps=3))()
  assert not success.numpy().any()
  np.testing.assert_array_equal(x_adv.numpy(), x)


def test_cw_l2_stays_in_the_pixel_range_where_the_box_binds():
  model_fn, x, y, _, _ = linear_problem(seed=3)
  x[:, :8] = np.where(RNG.uniform(size=(len(x), 8)) > 0.5, 1.0, 0.0)
  threat = ThreatModel('l2', 0.0, 0.0, 1.0)
  x_adv, success = tf.function(lambda: cw_l2.cw_l2(model_fn, tf.constant(x), y, threat,
                                                   max_iterations=300))()
  assert success.numpy().all()
  assert x_adv.numpy().min() >= 0.0 and x_adv.numpy().max() <= 1.0


# --- ℓ∞ ------------------------------------------------------------------------------------

@pytest.mark.parametrize('targeted', [False, True])
def test_cw_linf_ends_within_its_tau_schedule_of_the_minimal_linf_perturbation(targeted):
  # Minimal ℓ∞ distance of a linear model: |margin| / ‖w₁ - w₀‖₁. C&W-ℓ∞ lowers τ by 0.9 after
  # each success and ends at the first τ it cannot meet: its last solution lies between the
  # minimum and the minimum / 0.9 (up to Adam's jitter).
  model_fn, x, y, _, _ = linear_problem(n=8)
  w = model_fn(np.eye(20, dtype=np.float32) + 0.5).numpy()  # W itself
  margins = np.abs(np.diff(model_fn(x).numpy(), axis=1))[:, 0]
  minimal = margins / np.abs(w[:, 1] - w[:, 0]).sum()
  targets = (1 - y) if targeted else None
  x_adv, success = tf.function(lambda: cw_linf.cw_linf(
      model_fn, tf.constant(x), y, BOX, targets=targets, max_iterations=200))()
  found = np.abs(x_adv.numpy() - x).max(1)
  assert success.numpy().all() and np.all(np.argmax(model_fn(x_adv).numpy(), 1) != y)
  assert np.all(found >= minimal * (1 - 1e-3))
  # Adam's jitter: a step of 5e-3 in tanh space moves a pixel by at most 0.0025 on [0, 1].
  assert np.all(found <= minimal / linf_defaults.DECREASE_FACTOR + 0.003), found / minimal


def test_cw_linf_returns_the_clean_image_where_it_fails():
  x = RNG.uniform(0, 1, (3, 10)).astype(np.float32)
  constant = lambda v: tf.constant([[5.0, 0.0]]) + 0.0 * v[:, :2]
  x_adv, success = tf.function(lambda: cw_linf.cw_linf(
      constant, tf.constant(x), np.zeros(3, np.int64), BOX, max_iterations=10))()
  assert not success.numpy().any()
  np.testing.assert_array_equal(x_adv.numpy(), x)


# --- ℓ0 ------------------------------------------------------------------------------------

def pixel_model(decisive):
  """4 x 4 images (flat), pixels in [0, 0.2] of class 0. One decisive pixel (weight 2,
  threshold 1): it alone, above 0.5, makes class 1. Two (weight 1 each, threshold 1.3): one
  at most reaches 1.2, both are needed. No other pixel matters."""
  weights = np.zeros((16,), np.float32)
  weights[list(decisive)] = 2.0 / len(decisive) if len(decisive) == 1 else 1.0
  threshold = 1.0 if len(decisive) == 1 else 1.3
  return lambda v: tf.stack([tf.zeros(tf.shape(v)[0]),
                             10.0 * (tf.reduce_sum(v * weights, 1) - threshold)], axis=1)


@pytest.mark.parametrize('decisive', [(5,), (2, 9)])
def test_cw_l0_changes_exactly_the_pixels_that_decide(decisive):
  model_fn = pixel_model(decisive)
  x = RNG.uniform(0.0, 0.2, (3, 16)).astype(np.float32)
  y = np.zeros(3, np.int64)
  assert np.all(np.argmax(model_fn(x).numpy(), 1) == 0)
  x_adv, success = tf.function(lambda: cw_l0.cw_l0(
      model_fn, tf.constant(x), y, BOX, (4, 4, 1), max_iterations=100))()
  x_adv = x_adv.numpy()
  assert success.numpy().all() and np.all(np.argmax(model_fn(x_adv).numpy(), 1) == 1)
  changed = np.abs(x_adv - x) >= cw_l0.UNCHANGED
  assert [sorted(np.flatnonzero(row)) for row in changed] == [list(decisive)] * 3


def test_cw_l0_fixes_the_least_changed_pixels_first_up_to_its_bound():
  value = tf.constant([[0.5, 0.0, 0.002, 0.001, 0.3, 0.02]])
  allowed = tf.constant([[True, True, False, True, True, True]])
  # Changed pixels 100: at most 0.3·10 = 3 fixed; in order 1 (0.0), 3 (0.001), 5 (0.02 >
  # 0.01: the last).
  fixed = cw_l0.pixels_to_fix(value, allowed, tf.constant([100])).numpy()
  assert np.flatnonzero(fixed[0]).tolist() == [1, 3, 5]
  # Changed pixels 4: 0.3·2 = 0.6, so the first fixed pixel already reaches the bound.
  fixed = cw_l0.pixels_to_fix(value, allowed, tf.constant([4])).numpy()
  assert np.flatnonzero(fixed[0]).tolist() == [1]


def test_the_reference_benchmark_skips_saying_why_without_the_authors_code(tmp_path):
  script = os.path.join(REPO, 'benchmarks', 'cw_reference.py')
  result = run_script([script, '--reference', str(tmp_path / 'absent'), '--attacks', 'l2'])
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('skipped: no copy of the authors\' code at --reference')
  assert 'l2_attack.py' in result.stdout
  result = run_script([script, '--reference', str(tmp_path), '--attacks', 'l3'])
  assert result.returncode == 1 and 'unknown attack(s) l3' in result.stderr


@pytest.mark.parametrize('attack', ['l2', 'linf', 'l0'])
def test_a_model_without_input_gradient_is_refused_in_one_line(attack):
  model_fn, x, y, _, _ = linear_problem(n=2, size=16)
  frozen = lambda v: tf.stop_gradient(model_fn(v))
  budget = dict(max_iterations=20)  # short, should the refusal fail to come
  run = {'l2': lambda: cw_l2.cw_l2(frozen, tf.constant(x), y, BOX, **budget),
         'linf': lambda: cw_linf.cw_linf(frozen, tf.constant(x), y, BOX, **budget),
         'l0': lambda: cw_l0.cw_l0(frozen, tf.constant(x), y, BOX, (4, 4, 1), **budget)}[attack]
  with pytest.raises(ChallengeError, match=r'needs the gradient of the model\'s logits .* '
                                           'attack it with square'):
    tf.function(run)()
