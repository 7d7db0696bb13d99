"""The Square attack (Andriushchenko et al., ECCV 2020), ℓ∞ and ℓ2, as fra31/auto-attack's
`square.py` computes it in AutoAttack's standard version (`resc_schedule=False`, the margin
loss; the reference's behaviour is the specification; written anew from it, not copied).
Score-based: no gradients. The threat model (`common.attacks.threat`) names the norm.

* Schedule (both norms): `num_queries` iterations i = 0, 1, ...; the fraction p of the
  pixels a square covers is p_init = 0.8 for i ≤ 10, halved for 10 < i ≤ 50, and halved
  again after 200, 500, 1,000, 2,000, 4,000, 6,000 and 8,000 (`square_fraction`, on the raw
  iteration number); its side is round(√(p·H·W)), at least 1 (ℓ∞) or at least 3 and odd
  (ℓ2), at most min(H, W) (`square_side`); a corner is uniform in 0 ... H - side - 1 and
  0 ... W - side - 1 (0 where the side is the image's: the reference's squares never touch
  the last row or column otherwise). A candidate is kept where the margin
  z_y - max_{i≠y} z_i falls (or turns negative); examples already fooled are not changed.
  Result: the best point; fooled where its margin is ≤ 0. The loop stops once every example
  of the batch is fooled.
* ℓ∞: start x + ε·s clipped to the pixel range, s = ±1 per example, channel and column
  (vertical stripes); one query. Each iteration moves the best point's window by 2ε times
  a sign per channel, projected onto the ε-ball and the pixel range.
* ℓ2: the perturbations are built of `l2_pattern(s)`: an s x s square whose upper half is
  +, lower half - nested rectangles weighted 1/(k+1)² from the centre out, unit ℓ2 norm,
  transposed with probability ½. Start: the image tiled by a grid of such patterns of side
  ⌊H/5⌋ from offset ⌊(H - 5⌊H/5⌋)/2⌋, each times a sign per example and channel, the whole
  scaled to ℓ2 norm ε, clipped to the pixel range. Each iteration draws two windows of the
  side: the perturbation δ of the best point loses the second window's content, and the
  first's becomes (its content normalised per channel + a new signed pattern), rescaled per
  channel to √(max(ε² - ‖δ‖², 0)/C + ‖δ on both windows‖²); the candidate is x + ε·δ'/‖δ'‖₂,
  clipped to the pixel range.

Ours draws the ℓ∞ squares' signs per example (the reference: one per channel for the batch)
and every draw statelessly from (seed, the batch, the iteration); the windows and the
patterns' transpositions are shared by the batch, as the reference's.
"""
import numpy as np
import tensorflow as tf

from common.attacks.threat import ThreatModel

P_INIT = 0.8
# The iterations after which p halves (the reference's schedule, not rescaled).
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
COMPACT_EVERY = 250  # ℓ2: iterations between two gatherings of the examples still robust


def square_fraction(iteration: int, p_init: float = P_INIT) -> float:
  """The fraction p of the pixels a square covers at `iteration` (counted from 0)."""
  return p_init / 2 ** sum(iteration > mark for mark in HALVINGS)


def square_side(iteration: int, height: int, width: int, p_init: float = P_INIT,
                norm: str = 'linf') -> int:
  """The square's side at `iteration` on an H x W image (ℓ2: at least 3, and odd)."""
  side = int(round(np.sqrt(square_fraction(iteration, p_init) * height * width)))
  if norm == 'linf':
    side = max(side, 1)
  else:
    side = max(side, 3)
    side += 1 - side % 2
  return min(side, height, width)


def margin(labels, logits):
  """z_y - max_{i≠y} z_i: negative once misclassified."""
  logits = tf.cast(logits, tf.float32)
  mask = tf.one_hot(tf.cast(labels, tf.int64), tf.shape(logits)[-1], dtype=tf.float32)
  return tf.reduce_sum(mask * logits, -1) - tf.reduce_max(logits - 1e9 * mask, -1)


def corner(side, size, seed):
  """A window's first row (or column): uniform in 0 ... size - side - 1 (0 if side = size)."""
  return tf.random.stateless_uniform([], seed, 0, tf.maximum(size - side, 1), dtype=tf.int32)


def side_runs(num_queries: int, height: int, width: int, norm: str = 'linf'):
  """[(side, iterations)]: runs of consecutive iterations with the same square side."""
  runs = []
  for iteration in range(num_queries):
    side = square_side(iteration, height, width, norm=norm)
    if runs and runs[-1][0] == side:
      runs[-1][1] += 1
    else:
      runs.append([side, 1])
  return [tuple(run) for run in runs]


def _nested_rectangles(rows: int, cols: int) -> np.ndarray:
  """rows x cols: rectangles nested about the centre, the k-th (from 0) adding 1/(k+1)² on
  its (2k+1)-square clipped to the array, normalised to unit ℓ2 norm (the reference's
  `eta_rectangles`)."""
  pattern = np.zeros([rows, cols], np.float64)
  top, left = rows // 2, cols // 2
  for k in range(max(top, left) + 1):
    pattern[max(top - k, 0):min(top + k + 1, rows), max(left - k, 0):min(left + k + 1, cols)] \
        += 1.0 / (k + 1) ** 2
  norm = np.sqrt(np.sum(pattern ** 2))
  return pattern / norm if norm else pattern


def l2_pattern(side: int) -> np.ndarray:
  """The ℓ2 attack's s x s perturbation: nested rectangles, + on the upper ⌊s/2⌋ rows and -
  on the others, unit ℓ2 norm (the reference's `eta` before its random transposition)."""
  pattern = np.concatenate([_nested_rectangles(side // 2, side),
                            -_nested_rectangles(side - side // 2, side)])
  return (pattern / np.sqrt(np.sum(pattern ** 2))).astype(np.float32)


def _as_images(x, labels, image_shape):
  """(x, labels as int64, the batch size (static where known: the loops' shapes must not
  change), x as images [batch, H, W, C])."""
  x = tf.convert_to_tensor(x)
  batch = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]
  return x, tf.cast(labels, tf.int64), batch, tf.reshape(x, [batch] + list(image_shape))


def square(model_fn, x, labels, threat: ThreatModel, image_shape, num_queries, seed):
  """Square attack in the threat model's norm: (x_adv, fooled). `image_shape` (H, W, C) of
  x's rows. Iterations whose square side is the same share one compiled loop."""
  if threat.norm == 'l2':
    return _square_l2(model_fn, x, labels, threat, image_shape, num_queries, seed)
  epsilon, clip_min, clip_max = threat.epsilon, threat.clip_min, threat.clip_max
  x, labels, batch, images = _as_images(x, labels, image_shape)
  height, width, channels = image_shape
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


def _norm_per_example(t):
  return tf.sqrt(tf.reduce_sum(tf.square(t), axis=[1, 2, 3], keepdims=True))


def _norm_per_channel(t):
  return tf.sqrt(tf.reduce_sum(tf.square(t), axis=[1, 2], keepdims=True))


def l2_window_update(delta, first, second, new, epsilon):
  """One ℓ2 iteration's perturbation δ' from the best point's δ [n, H, W, C]: `first` and
  `second` the windows' masks [1, H, W, 1], `new` the signed pattern placed in the first
  window [n, H, W, C]. The second window is emptied; the first holds (its content, unit norm
  per channel, + new) rescaled per channel to √(max(ε² - ‖δ‖², 0)/C + ‖δ on both‖²)."""
  channels = delta.shape[-1]
  old = delta * first / (1e-12 + _norm_per_channel(delta * first))
  budget = tf.sqrt(tf.maximum(epsilon ** 2 - tf.square(_norm_per_example(delta)), 0.0)
                   / channels + tf.square(_norm_per_channel(delta * tf.maximum(first, second))))
  new = new + old
  new = new / (1e-12 + _norm_per_channel(new)) * budget
  return tf.where(first > 0, new, tf.where(second > 0, tf.zeros_like(delta), delta))


def _placed(pattern, top, left, height, width):
  """An s x s pattern [s, s] at (top, left) of an H x W zero image, shaped [1, H, W, 1]."""
  side = pattern.shape[0]
  full = tf.pad(pattern, [[top, height - side - top], [left, width - side - left]])
  return full[None, :, :, None]


def l2_chunks(num_queries: int, height: int, width: int, longest: int = COMPACT_EVERY):
  """[(first iteration, iterations, side)]: the runs of one square side, cut into pieces of
  at most `longest` iterations (the ℓ2 attack re-gathers the examples still robust at each)."""
  chunks, first = [], 0
  for side, count in side_runs(num_queries, height, width, norm='l2'):
    for start in range(0, count, longest):
      chunks.append((first + start, min(longest, count - start), side))
    first += count
  return chunks


def _square_l2(model_fn, x, labels, threat, image_shape, num_queries, seed):
  """The ℓ2 Square attack (see the module's docstring). The examples still robust are
  gathered anew every COMPACT_EVERY iterations, so that the model sees only those, as the
  reference queries only the examples it has not fooled."""
  x, labels, batch, images = _as_images(x, labels, image_shape)
  height, width, channels = image_shape
  fold = tf.random.experimental.stateless_fold_in
  epsilon = threat.epsilon
  as_input = lambda z: tf.reshape(z, [-1] + x.shape[1:].as_list())

  def signs(draw_seed, rows):
    return tf.sign(tf.random.stateless_uniform([rows, 1, 1, channels], draw_seed, -1.0, 1.0))

  def oriented(pattern, draw_seed):
    """The pattern, transposed with probability ½ (one draw for the batch)."""
    flip = tf.random.stateless_uniform([], draw_seed) > 0.5
    return tf.where(flip, tf.transpose(pattern), pattern)

  def candidate_of(clean, delta):
    return tf.clip_by_value(clean + delta / (_norm_per_example(delta) + 1e-12) * epsilon,
                            threat.clip_min, threat.clip_max)

  # The start: a grid of patterns of side ⌊H/5⌋ (at least 1), each with its own signs.
  tile = max(height // 5, 1)
  offset = (height - 5 * tile) // 2 if height >= 5 else 0
  pattern = tf.constant(l2_pattern(tile))
  start = tf.zeros_like(images)
  for row_tile in range(height // tile):
    for col_tile in range(width // tile):
      top, left = offset + row_tile * tile, offset + col_tile * tile
      if top + tile > height or left + tile > width:
        continue  # the reference's grid may run past a small image's edge
      tile_seed = fold(fold(seed, -1), row_tile * width + col_tile)
      start += _placed(oriented(pattern, fold(tile_seed, 0)), top, left, height,
                       width) * signs(fold(tile_seed, 1), batch)
  best = candidate_of(images, start)
  best_margin = margin(labels, model_fn(as_input(best)))
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]

  def window(top, left, side):
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return tf.cast(inside, tf.float32)[None, :, :, None]

  def body_for(clean, goal):
    """The iteration on the examples gathered: `clean` their images, `goal` their labels;
    every one of them is still robust (margin > 0) when the chunk starts."""
    def body(iteration, side_pattern, best, best_margin):
      side = tf.shape(side_pattern)[0]
      iteration_seed = fold(seed, iteration)
      draw = lambda k: fold(iteration_seed, k)
      top, left = corner(side, height, draw(1)), corner(side, width, draw(2))
      top2, left2 = corner(side, height, draw(3)), corner(side, width, draw(4))
      first, second = window(top, left, side), window(top2, left2, side)
      new = _placed(oriented(side_pattern, draw(5)), top, left, height, width) * signs(
          draw(6), tf.shape(clean)[0])
      candidate = candidate_of(clean, l2_window_update(best - clean, first, second, new,
                                                       epsilon))
      active = best_margin > 0  # those fooled within the chunk stay as they are
      new_margin = margin(goal, model_fn(as_input(candidate)))
      keep = active & (new_margin < best_margin)
      best = tf.where(keep[:, None, None, None], candidate, best)
      best_margin = tf.where(keep, new_margin, best_margin)
      return iteration + 1, side_pattern, best, best_margin
    return body

  for first, count, side in l2_chunks(num_queries, height, width):
    robust = tf.where(best_margin > 0)[:, 0]
    _, _, chunk_best, chunk_margin = tf.while_loop(
        lambda i, _, __, margins: (i < first + count) & tf.reduce_any(margins > 0),
        body_for(tf.gather(images, robust), tf.gather(labels, robust)),
        (tf.constant(first), tf.constant(l2_pattern(side)), tf.gather(best, robust),
         tf.gather(best_margin, robust)))
    best = tf.tensor_scatter_nd_update(best, robust[:, None], chunk_best)
    best_margin = tf.tensor_scatter_nd_update(best_margin, robust[:, None], chunk_margin)
  return tf.reshape(best, tf.shape(x)), best_margin <= 0
