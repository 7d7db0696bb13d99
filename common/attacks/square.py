"""The Square attack (Andriushchenko et al., ECCV 2020), ℓ∞, as fra31/auto-attack's `square.py`
computes it in AutoAttack's standard version (`resc_schedule=False`; the reference's
behaviour is the specification; written anew from it, not copied). Score-based: no gradients.

* Start: x + ε·s clipped to the pixel range, s = ±1 per example, channel and column (vertical
  stripes); one query.
* Then `num_queries` iterations i = 0, 1, ...: the fraction p of the pixels a square covers
  is p_init = 0.8 for i ≤ 10, halved for 10 < i ≤ 50, and halved again after 200, 500,
  1,000, 2,000, 4,000, 6,000 and 8,000 (`square_fraction`, on the raw iteration number);
  its side is max(round(√(p·H·W)), 1), at most min(H, W) (`square_side`); its corner is
  uniform in 0 ... H - side - 1 and 0 ... W - side - 1 (0 where the side is the image's:
  the reference's squares never touch the last row or column otherwise). The window of the
  best point so far is moved by 2ε times a sign per channel, projected onto the ε-ball and
  the pixel range, and the candidate kept where the margin z_y - max_{i≠y} z_i falls (or
  turns negative); examples already fooled are not changed.
* Result: the best point; fooled where its margin is ≤ 0. The loop stops once every example
  of the batch is fooled.

Ours draws the square's signs per example (the reference: one per channel for the batch)
and every draw statelessly from (seed, the batch, the iteration).
"""
import numpy as np
import tensorflow as tf

P_INIT = 0.8
# The iterations after which p halves (the reference's schedule, not rescaled).
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(iteration: int, p_init: float = P_INIT) -> float:
  """The fraction p of the pixels a square covers at `iteration` (counted from 0)."""
  return p_init / 2 ** sum(iteration > mark for mark in HALVINGS)


def square_side(iteration: int, height: int, width: int, p_init: float = P_INIT) -> int:
  """The square's side at `iteration` on an H x W image."""
  side = max(int(round(np.sqrt(square_fraction(iteration, p_init) * height * width))), 1)
  return min(side, height, width)


def margin(labels, logits):
  """z_y - max_{i≠y} z_i: negative once misclassified."""
  logits = tf.cast(logits, tf.float32)
  mask = tf.one_hot(tf.cast(labels, tf.int64), tf.shape(logits)[-1], dtype=tf.float32)
  return tf.reduce_sum(mask * logits, -1) - tf.reduce_max(logits - 1e9 * mask, -1)


def corner(side, size, seed):
  """A window's first row (or column): uniform in 0 ... size - side - 1 (0 if side = size)."""
  return tf.random.stateless_uniform([], seed, 0, tf.maximum(size - side, 1), dtype=tf.int32)


def side_runs(num_queries: int, height: int, width: int):
  """[(side, iterations)]: runs of consecutive iterations with the same square side."""
  runs = []
  for iteration in range(num_queries):
    side = square_side(iteration, height, width)
    if runs and runs[-1][0] == side:
      runs[-1][1] += 1
    else:
      runs.append([side, 1])
  return [tuple(run) for run in runs]


def square(model_fn, x, labels, epsilon, clip_min, clip_max, image_shape, num_queries, seed):
  """Square attack (ℓ∞): (x_adv, fooled). `image_shape` (H, W, C) of x's rows. Iterations
  whose square side is the same share one compiled loop."""
  x = tf.convert_to_tensor(x)
  labels = tf.cast(labels, tf.int64)
  height, width, channels = image_shape
  batch = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]  # static where known
  images = tf.reshape(x, [batch, height, width, channels])
  fold = tf.random.experimental.stateless_fold_in

  def as_input(z):
    return tf.reshape(z, tf.shape(x))

  def signs(shape, draw_seed):
    return tf.sign(tf.random.stateless_uniform(shape, draw_seed, -1.0, 1.0))

  stripes = signs([batch, 1, width, channels], fold(seed, -1))
  best = tf.clip_by_value(images + epsilon * stripes, clip_min, clip_max)
  best_margin = margin(labels, model_fn(as_input(best)))
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]

  def body(iteration, side, best, best_margin):
    iteration_seed = fold(seed, iteration)
    top = corner(side, height, iteration_seed)
    left = corner(side, width, fold(iteration_seed, 1))
    window = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side))
    window = tf.cast(window, tf.float32)[None, :, :, None]
    change = 2.0 * epsilon * signs([batch, 1, 1, channels], fold(iteration_seed, 2))
    candidate = tf.clip_by_value(best + window * change, images - epsilon, images + epsilon)
    candidate = tf.clip_by_value(candidate, clip_min, clip_max)
    active = best_margin > 0  # the others are fooled already
    new_margin = margin(labels, model_fn(as_input(candidate)))
    keep = active & (new_margin < best_margin)
    best = tf.where(keep[:, None, None, None], candidate, best)
    best_margin = tf.where(keep, new_margin, best_margin)
    return iteration + 1, side, best, best_margin

  first = 0
  for side, count in side_runs(num_queries, height, width):
    # Once every example is fooled nothing changes any more: stop (as the reference does).
    _, _, best, best_margin = tf.while_loop(
        lambda i, _, __, margins: (i < first + count) & tf.reduce_any(margins > 0), body,
        (tf.constant(first), tf.constant(side), best, best_margin))
    first += count
  return as_input(best), best_margin <= 0
