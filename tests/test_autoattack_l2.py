"""AutoAttack's ℓ2 attacks against the reference's formulas (fra31/auto-attack, `norm='L2'`):
FAB's ℓ2 projection (against the reference's sorted-breakpoint algorithm, transcribed in numpy
here), FAB-T's minimal ℓ2 distance on a linear model, Square's ℓ2 patterns and window update
(against the reference's slicing code in numpy, NCHW), and the chain in ℓ2. APGD's ℓ2 loop is
checked against the reference's loop in tests/test_autoattack.py, the command in ℓ2 in
tests/test_threat.py."""
import math

import numpy as np
import pytest
import tensorflow as tf

from common.attacks import autoattack, fab, square
from common.attacks.threat import ThreatModel
from conftest import quiet

RNG = np.random.default_rng(4)


# --- FAB's ℓ2 projection ------------------------------------------------------------------

def reference_projection_l2(t, w, b):
  """fab_projections.projection_l2 in numpy (the pixel box [0, 1]): the minimal ℓ2 step d
  with w·(t + d) = b, 0 <= t + d <= 1, found over the sorted breakpoints of the coordinates'
  saturation, with a binary search over them."""
  t, w, b = (np.asarray(a, np.float64) for a in (t, w, b))
  w = w.copy()
  c = np.sum(w * t, 1) - b
  sign = np.where(c >= 0, 1.0, -1.0)
  w *= sign[:, None]
  c *= sign
  with np.errstate(divide='ignore', invalid='ignore'):
    r = np.clip(np.maximum(t / w, (t - 1) / w), -1e12, 1e12)
  r[np.abs(w) < 1e-8] = 1e12
  r[r == -1e12] *= -1
  order = np.argsort(r, axis=1, kind='stable')
  rs = np.take_along_axis(r, order, 1)
  rs2 = np.pad(rs[:, 1:], ((0, 0), (0, 1)))
  rs[rs == 1e12] = 0
  rs2[rs2 == 1e12] = 0
  w3s = np.take_along_axis(w ** 2, order, 1)
  w5 = w3s.sum(1, keepdims=True)
  ws = w5 - np.cumsum(w3s, 1)
  d = -(r * w) * (np.abs(w) > 1e-8)
  s = np.concatenate([-w5 * rs[:, :1], np.cumsum((-rs2 + rs) * ws, 1) - w5 * rs[:, :1]], 1)
  c4 = s[:, 0] + c < 0
  c3 = np.sum(d * w, 1) + c > 0
  c2 = ~(c4 | c3)
  lb = np.zeros(c2.sum())
  ub = np.full_like(lb, w.shape[1] - 1)
  s_, c_ = s[c2], c[c2]
  for _ in range(math.ceil(math.log2(w.shape[1]))):
    middle = np.floor((lb + ub) / 2)
    above = s_[np.arange(len(s_)), middle.astype(int)] + c_ > 0
    lb, ub = np.where(above, middle, lb), np.where(above, ub, middle)
  lb = lb.astype(int)
  d[c4] = -(c[c4] / w5[c4, 0])[:, None] * w[c4]
  rows = np.flatnonzero(c2)
  alpha = (s[rows, lb] + c[rows]) / ws[rows, lb] + rs[rows, lb]
  alpha[ws[rows, lb] == 0] = 0
  beyond = (alpha[:, None] > r[rows]).astype(float)
  d[rows] = d[rows] * beyond - alpha[:, None] * w[rows] * (1 - beyond)
  return d * (np.abs(w) > 1e-8)


def test_the_l2_projection_is_the_references_where_the_box_binds_and_w_is_negligible():
  n, size = 48, 30
  t = RNG.uniform(0, 1, (n, size))
  t[:, :4] = RNG.choice([0.0, 1.0], (n, 4))  # no room one way
  w = RNG.normal(0, 1, (n, size))
  w[:, 4:8] = RNG.uniform(-5e-9, 5e-9, (n, 4))  # below the reference's 1e-8: never move
  # The gap as a fraction of what the box allows that way: tiny (no coordinate saturates),
  # some saturate, most saturate, beyond reach (the corner); either sign.
  fractions = np.tile([0.001, 0.3, 0.9, 1.5], n // 4) * np.repeat([1, -1], n // 2)
  movable = np.abs(w) >= 1e-8
  reach = np.array([np.abs(v * m) @ np.where(np.sign(f) * np.sign(v) > 0, 1 - p, p)
                    for p, v, m, f in zip(t, w, movable, fractions)])
  b = np.sum(w * t, 1) + fractions * reach
  expected = reference_projection_l2(t, w, b)
  points, w32 = t.astype(np.float32), w.astype(np.float32)
  ours = fab.project_l2(tf.constant(points), tf.constant(w32), tf.constant(b, tf.float32),
                        tf.constant(-points), tf.constant(1 - points)).numpy()
  np.testing.assert_allclose(ours, expected, atol=2e-5)
  assert np.all(ours[:, 4:8] == 0.0)
  # Each regime is present: nothing saturated, some coordinates saturated, the corner.
  saturated = np.isclose(points + ours, 0, atol=1e-6) | np.isclose(points + ours, 1, atol=1e-6)
  moved_and_saturated = (saturated & ~np.isin(points, [0.0, 1.0])).sum(1)
  assert (moved_and_saturated[::4] == 0).all() and (moved_and_saturated[1::4] > 0).all()
  # Where the hyperplane is reachable, the step reaches it.
  reachable = np.abs(fractions) < 1
  np.testing.assert_allclose(np.sum(w32 * (points + ours), 1)[reachable], b[reachable],
                             atol=1e-4)


def test_fab_t_finds_the_minimal_l2_distance_to_a_linear_boundary():
  # A linear model: the smallest ℓ2 perturbation to the target's side is the projection of
  # x onto the boundary within the box; FAB-T finds it and never goes below it.
  w = RNG.normal(0, 1, (30, 2)).astype(np.float32)
  x = RNG.uniform(0.3, 0.7, (24, 30)).astype(np.float32)
  x[:, 6:14] = RNG.choice([0.0, 1.0], (24, 8))  # the box binds
  y = np.argmax(x @ w, 1)
  boundary = (w[:, 1 - y] - w[:, y]).T  # boundary·z >= 0: the target class wins
  minimal = np.linalg.norm(reference_projection_l2(x, boundary, np.zeros(len(x))), axis=1)
  unboxed = np.abs(np.sum(boundary * x, 1)) / np.linalg.norm(boundary, axis=1)
  assert np.sum(minimal > unboxed * 1.05) >= 3  # the box binds on several
  threat = ThreatModel('l2', 3.0)
  x_adv, fooled = fab.fab_targeted(lambda v: tf.matmul(v, w), tf.constant(x), y, 1 - y, threat)
  found = np.linalg.norm(x_adv.numpy() - x, axis=1)
  assert fooled.numpy().all()
  np.testing.assert_allclose(found, minimal, rtol=0.02)
  assert np.all(found >= minimal * (1 - 1e-4))
  # Success counts only within ε (in ℓ2: the ℓ∞ distances are far smaller).
  median = float(np.median(minimal))
  _, within = fab.fab_targeted(lambda v: tf.matmul(v, w), tf.constant(x), y, 1 - y,
                               ThreatModel('l2', median))
  assert 0 < within.numpy().sum() < len(y)


# --- Square's ℓ2 perturbations ------------------------------------------------------------

def reference_rectangles(rows, cols):
  """square.py's eta_rectangles (ℓ2) in numpy."""
  delta = np.zeros([rows, cols])
  x_c, y_c = rows // 2 + 1, cols // 2 + 1
  corner = [x_c - 1, y_c - 1]
  for counter in range(max(x_c, y_c)):
    delta[max(corner[0], 0):min(corner[0] + (2 * counter + 1), rows),
          max(0, corner[1]):min(corner[1] + (2 * counter + 1), cols)] += 1.0 / (counter + 1) ** 2
    corner[0] -= 1
    corner[1] -= 1
  return delta / np.sqrt((delta ** 2).sum())


def reference_eta(s):
  """square.py's eta (ℓ2) before its random transposition, in numpy."""
  delta = np.zeros([s, s])
  delta[:s // 2] = reference_rectangles(s // 2, s)
  delta[s // 2:] = -1.0 * reference_rectangles(s - s // 2, s)
  return delta / np.sqrt((delta ** 2).sum())


@pytest.mark.parametrize('side', [3, 5, 7, 13, 25, 28])
def test_the_l2_pattern_is_the_references(side):
  np.testing.assert_allclose(square.l2_pattern(side), reference_eta(side), atol=1e-7)


def test_the_l2_square_sides_are_odd_and_at_least_three():
  sides = [square.square_side(i, 28, 28, norm='l2') for i in range(5000)]
  assert sides[0] == 25 and min(sides) == 3 and all(s % 2 == 1 for s in sides)
  # The reference: max(round(√(p·784)), 3), made odd: 0.8·784 -> 25; 0.4·784 -> 18 -> 19.
  assert sides[11] == 19 and square.square_side(5000, 28, 28, norm='l2') == 3
  assert [s for s, _ in square.side_runs(5000, 28, 28, norm='l2')] == sorted(
      set(sides), reverse=True)


def reference_window_update(delta, vh, vw, vh2, vw2, eta, signs, epsilon):
  """One iteration of square.py's ℓ2 loop on δ (NCHW) in numpy, its slicing as it is:
  windows at (vh, vw) and (vh2, vw2) of eta's side, `signs` [n, c, 1, 1]."""
  delta = delta.copy()
  n, c, h, w = delta.shape
  s = eta.shape[0]
  norm = lambda v, axes: np.sqrt(np.sum(v ** 2, axis=axes, keepdims=True))
  mask1 = np.zeros_like(delta)
  mask1[:, :, vh:vh + s, vw:vw + s] = 1.0
  mask2 = np.zeros_like(delta)
  mask2[:, :, vh2:vh2 + s, vw2:vw2 + s] = 1.0
  norms_window_1 = norm(delta[:, :, vh:vh + s, vw:vw + s], (-2, -1))
  norms_image = norm(delta, (1, 2, 3))
  norms_windows = norm(delta * np.maximum(mask1, mask2), (-2, -1))
  new = np.ones([n, c, s, s]) * (eta.reshape(1, 1, s, s) * signs)
  new += delta[:, :, vh:vh + s, vw:vw + s] / (1e-12 + norms_window_1)
  new = new / (1e-12 + norm(new, (-2, -1))) * np.sqrt(
      np.maximum(epsilon ** 2 - norms_image ** 2, 0) / c + norms_windows ** 2)
  delta[:, :, vh2:vh2 + s, vw2:vw2 + s] = 0.0
  delta[:, :, vh:vh + s, vw:vw + s] = new
  return delta


@pytest.mark.parametrize('overlap', [False, True])
def test_the_l2_window_update_is_the_references(overlap):
  n, c, h, w, s, epsilon = 5, 3, 12, 12, 5, 1.5
  delta = RNG.normal(0, 0.1, (n, c, h, w))
  delta[0] *= 0.01  # well inside the ball: the budget grows
  delta[1] *= 10.0  # beyond it: only the windows' own norm is redistributed
  vh, vw, vh2, vw2 = (2, 3, 4, 5) if overlap else (0, 1, 7, 6)
  eta = square.l2_pattern(s).T  # the transposed draw
  signs = RNG.choice([-1.0, 1.0], (n, c, 1, 1))
  expected = reference_window_update(delta, vh, vw, vh2, vw2, eta.astype(np.float64), signs,
                                     epsilon)

  def window(top, left):
    mask = np.zeros([1, h, w, 1], np.float32)
    mask[:, top:top + s, left:left + s] = 1.0
    return tf.constant(mask)

  placed = np.zeros([n, h, w, c], np.float32)
  placed[:, vh:vh + s, vw:vw + s, :] = eta[None, :, :, None] * signs.reshape(n, 1, 1, c)
  ours = square.l2_window_update(tf.constant(delta.transpose(0, 2, 3, 1), tf.float32),
                                 window(vh, vw), window(vh2, vw2), tf.constant(placed),
                                 epsilon).numpy().transpose(0, 3, 1, 2)
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)


def margin_model():
  """A linear model on 28 x 28 images whose margin falls along a fixed direction."""
  w = RNG.normal(0, 1, (784, 10)).astype(np.float32) / 28
  return lambda v: tf.matmul(tf.reshape(v, [-1, 784]), w)


def test_square_l2_stays_in_the_ball_lowers_the_margin_and_breaks_a_masked_model():
  model_fn = margin_model()
  x = RNG.uniform(0, 1, (16, 784)).astype(np.float32)
  masked = lambda v: model_fn(tf.stop_gradient(tf.round(v)))  # no gradient: Square decides
  threat = ThreatModel('l2', 2.0)
  for fn in (model_fn, masked):
    y = tf.argmax(fn(x), axis=1)
    x_adv, fooled = tf.function(lambda: square.square(
        fn, x, y, threat, (28, 28, 1), 300, tf.constant([5, 0], tf.int64)))()
    x_adv = x_adv.numpy()
    assert threat.contains(x_adv, x, threat.rounding_tolerance(784)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    before = square.margin(y, fn(x)).numpy()
    after = square.margin(y, fn(x_adv)).numpy()
    assert np.all(after <= before) and np.mean(after < before) > 0.9
    np.testing.assert_array_equal(fooled.numpy(), after <= 0)
    assert fooled.numpy().any()


def test_square_l2_repeats_with_its_seed_and_varies_with_another():
  model_fn = margin_model()
  x = RNG.uniform(0, 1, (4, 784)).astype(np.float32)
  y = tf.argmax(model_fn(x), axis=1)
  run = lambda seed: square.square(model_fn, x, y, ThreatModel('l2', 1.0), (28, 28, 1), 30,
                                   tf.constant([seed, 0], tf.int64))[0].numpy()
  np.testing.assert_array_equal(run(1), run(1))
  assert not np.array_equal(run(1), run(2))


# --- the chain and the command ------------------------------------------------------------

def test_the_chain_in_l2_breaks_only_within_the_l2_ball():
  model_fn = margin_model()
  x = RNG.uniform(0, 1, (24, 784)).astype(np.float32)
  y = np.argmax(model_fn(x).numpy(), 1)
  report = autoattack.AutoAttack(model_fn, 0.3, 0.0, 1.0, (28, 28, 1), batch_size=24,
                                 apgd_iterations=10, fab_iterations=10, square_queries=100,
                                 log=quiet, norm='l2').run(x, y)
  broken = report.broken_by != ''
  assert 0 < broken.sum() < len(y)
  distance = np.linalg.norm((report.adversarial - x).reshape(len(x), -1), axis=1)
  assert np.all(distance[broken] <= 0.3 + 1e-4)
  assert np.all(distance[~broken] == 0)
  # The same ε as an ℓ∞ radius breaks everything: the norm was honoured, not ℓ∞'s.
  linf = autoattack.AutoAttack(model_fn, 0.3, 0.0, 1.0, (28, 28, 1), ['apgd-ce'], 24,
                               apgd_iterations=10, log=quiet).run(x, y)
  assert linf.robust_accuracy == 0 < report.robust_accuracy

