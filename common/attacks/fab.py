"""FAB-T (Croce & Hein, ICML 2020), ℓ∞ and ℓ2, targeted, as fra31/auto-attack's `fab_base.py`
and `fab_projections.py` compute it (the reference's behaviour is the specification; written
anew from it, not copied). The threat model (`common.attacks.threat`) names the norm.

* From the clean point x0 (the first run has no random start), for `num_iterations`: at the
  current point x1, f = z_y - z_t and its input gradient g (one forward and backward pass);
  the boundary linearised there is w·z = b with w = -g, b = w·x1 + f. Both x1 and x0 are
  projected onto it within the pixel box (`project_linf`, `project_l2`: the norm's minimal
  step), giving steps d1 and d2; with α = min(max(a1 / (a1 + a2), 0), 0.1),
  a_i = max(‖d_i‖, 1e-8), the next point is ((x1 + 1.05·d1)(1 - α) + (x0 + 1.05·d2)α)
  clipped to the pixel box. If the model (a second forward pass) misclassifies it, it is
  kept when closer to x0 (in the norm) than the best so far, and the point steps back
  towards x0: x0 + 0.9(x1 - x0).
* Result: the closest misclassified point found; a success counts only within ε. Ours stops
  early, with the same result, once an iteration leaves every example's point unchanged.
* `project_linf`: the minimal ℓ∞ step d onto the hyperplane w·(p + d) = b within the box,
  from either side (towards the hyperplane whichever side p is on); coordinates whose w is
  exactly 0 never move. Along the radius r each coordinate moves by min(r, its room in the
  box) in the direction that closes the gap, so the gap closed grows piecewise linearly with
  r; the reference solves for r over the sorted breakpoints, we bisect on r (the same
  projection to float32 precision); where the box cannot close the gap, the box's corner
  that comes closest.
* `project_l2`: the minimal ℓ2 step, likewise: d = clip(λ·w', box) for the scalar λ ≥ 0 that
  closes the gap (w' = ±w, towards the hyperplane; the optimality conditions of the
  box-constrained least-norm problem), coordinates whose |w| < 1e-8 never move (the
  reference's threshold). Where no coordinate meets the box, λ = gap/‖w‖² exactly; else we
  bisect on λ geometrically between that and the λ at which every coordinate has met the
  box (the reference: over the sorted breakpoints); where even that cannot close the gap,
  the box's corner.
"""
import numpy as np
import tensorflow as tf

from common.attacks.threat import ThreatModel

ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9
L2_NEGLIGIBLE_WEIGHT = 1e-8  # the reference's ℓ2 projection: |w| below this never moves


def project_linf(points, w, b, low, high, iterations=40):
  """The minimal ℓ∞ step d with w·(p + d) = b, low <= d <= high (the box minus p, so
  low <= 0 <= high), for each row p of `points` [n, D]; d_i = 0 where w_i = 0."""
  gap = b - tf.reduce_sum(w * points, axis=1)
  # Close the gap from either side: towards larger w·z where it is positive, else smaller.
  direction = tf.where(gap >= 0, 1.0, -1.0)[:, None] * w
  gap = tf.abs(gap)

  def reach(radius):
    r = radius[:, None]
    d = tf.where(direction > 0, tf.minimum(r, high),
                 tf.where(direction < 0, tf.maximum(-r, low), tf.zeros_like(high)))
    return d, tf.reduce_sum(direction * d, axis=1)

  upper = tf.reduce_max(tf.maximum(high, -low), axis=1)
  lower = tf.zeros_like(upper)
  for _ in range(iterations):  # unrolled: XLA-friendly
    middle = (lower + upper) / 2.0
    enough = reach(middle)[1] >= gap
    upper = tf.where(enough, middle, upper)
    lower = tf.where(enough, lower, middle)
  return reach(tf.where(gap > 0, upper, tf.zeros_like(upper)))[0]


def project_l2(points, w, b, low, high, iterations=40):
  """The minimal ℓ2 step d with w·(p + d) = b, low <= d <= high (the box minus p, so
  low <= 0 <= high), for each row p of `points` [n, D]; d_i = 0 where |w_i| < 1e-8."""
  w = tf.where(tf.abs(w) < L2_NEGLIGIBLE_WEIGHT, tf.zeros_like(w), w)
  gap = b - tf.reduce_sum(w * points, axis=1)
  direction = tf.where(gap >= 0, 1.0, -1.0)[:, None] * w
  gap = tf.abs(gap)

  def reach(multiplier):
    d = tf.clip_by_value(multiplier[:, None] * direction, low, high)
    return d, tf.reduce_sum(direction * d, axis=1)

  squared = tf.reduce_sum(tf.square(direction), axis=1)
  movable = squared > 0
  # Unconstrained: λ = gap / ‖w‖²; clipping only lessens the gap closed, so the answer's λ is
  # at least this, and at most the λ at which every coordinate has met the box.
  free = tf.where(movable, gap / tf.where(movable, squared, 1.0), tf.zeros_like(gap))
  room = tf.where(direction > 0, high, tf.where(direction < 0, -low, tf.zeros_like(high)))
  saturated = tf.reduce_max(
      tf.where(direction != 0, room / tf.where(direction != 0, tf.abs(direction), 1.0),
               tf.zeros_like(room)), axis=1)
  upper = tf.maximum(saturated, free)
  lower = free
  for _ in range(iterations):  # unrolled: XLA-friendly; geometric, as λ spans decades
    middle = tf.sqrt(lower) * tf.sqrt(upper)
    enough = reach(middle)[1] >= gap
    upper = tf.where(enough, middle, upper)
    lower = tf.where(enough, lower, middle)
  fits = reach(free)[1] >= gap  # no coordinate meets the box (or none needs to)
  return reach(tf.where(fits, free, upper))[0]


def fab_targeted(model_fn, x, labels, targets, threat: ThreatModel, num_iterations=100,
                 stop_when_stationary=True):
  """FAB-T from the clean point towards `targets`: (x_adv, fooled within ε). x_adv is the
  smallest adversarial point found in the threat model's norm (x itself where none); the
  pixel box is the threat model's. `stop_when_stationary`: stop
  once an iteration leaves every example's point where it was: the iteration is a function
  of that point alone, so every later one would too and the result is the same (on models
  whose input gradient is exactly zero FAB soon stands still)."""
  x = tf.convert_to_tensor(x)
  labels, targets = tf.cast(labels, tf.int64), tf.cast(targets, tf.int64)
  # Static where known: the loop's shapes must not change (a batch of one otherwise does).
  batch = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]
  flat = lambda t: tf.reshape(t, [batch, -1])
  x0 = flat(x)
  project = project_linf if threat.norm == 'linf' else project_l2

  def difference_and_gradient(z):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(z)
      logits = tf.cast(model_fn(z), tf.float32)
      pick = lambda c: tf.gather(logits, c, batch_dims=1)
      difference = pick(labels) - pick(targets)  # > 0 while correctly ranked
      total = tf.reduce_sum(difference)
    return difference, tape.gradient(total, z,
                                     unconnected_gradients=tf.UnconnectedGradients.ZERO)

  def body(i, x1, best, best_norm, _):
    f, g = difference_and_gradient(x1)
    w, p1 = -flat(g), flat(x1)
    b = tf.reduce_sum(w * p1, axis=1) + f  # the linearised boundary: w·z = b
    points = tf.concat([p1, x0], 0)
    d = project(points, tf.concat([w, w], 0), tf.concat([b, b], 0),
                threat.clip_min - points, threat.clip_max - points)
    d1, d2 = d[:batch], d[batch:]
    a1 = tf.maximum(threat.norms(d1), 1e-8)
    a2 = tf.maximum(threat.norms(d2), 1e-8)
    alpha = tf.clip_by_value(a1 / (a1 + a2), 0.0, ALPHA_MAX)
    new = tf.clip_by_value((p1 + ETA * d1) * (1 - alpha) + (x0 + ETA * d2) * alpha,
                           threat.clip_min, threat.clip_max)
    new_x = tf.reshape(new, tf.shape(x))
    adversarial = tf.not_equal(tf.argmax(model_fn(new_x), axis=1), labels)
    norm = threat.norms(new - x0)[:, 0]
    closer = adversarial & (norm < best_norm)
    best = tf.where(closer[:, None], new, best)
    best_norm = tf.where(closer, norm, best_norm)
    # After a success, step back towards the clean point.
    new = tf.where(adversarial[:, None], x0 + (new - x0) * BETA, new)
    stationary = tf.reduce_all(tf.equal(new, p1)) if stop_when_stationary else tf.constant(False)
    return i + 1, tf.reshape(new, tf.shape(x)), best, best_norm, stationary

  _, _, best, best_norm, _ = tf.while_loop(
      lambda i, *s: (i < num_iterations) & ~s[-1], body,
      (tf.constant(0), x, x0, tf.fill([batch], tf.constant(np.inf, tf.float32)),
       tf.constant(False)))
  fooled = best_norm <= threat.epsilon
  return tf.reshape(tf.where(fooled[:, None], best, x0), tf.shape(x)), fooled
