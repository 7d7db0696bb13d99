"""AutoAttack (Croce & Hein, ICML 2020), ℓ∞, in TensorFlow: APGD-CE, APGD-T, FAB-T and
Square, and the standard version chaining them, for any `model_fn` x -> logits and either
pixel scale. Written from the algorithms of the reference implementation (fra31/auto-attack),
not from its code.

* APGD (`apgd`): from x + ε·t/max|t|, t ~ U[-1, 1] (on the box's boundary), clipped to the
  pixel range; step η = 2ε per example; momentum 0.75 (none at the first iteration):
  z = P(x_k + η·sign(∇)), x_{k+1} = P(x_k + 0.75(z - x_k) + 0.25(x_k - x_{k-1})). At the
  checkpoints (`checkpoints`: for 100 iterations 22, 41, 57, 70, 80, 87, 93, 99) η halves for
  an example whose loss increased in at most 75% of the steps since the last checkpoint, or
  which was not halved at the last checkpoint and whose best loss has not improved since;
  a halved example restarts from its best point. One gradient per iteration, the loss from
  the same forward pass. Result: per example the first misclassified iterate, else the point
  of highest loss.
* Losses (`dlr`, `targeted_dlr`; logits in float32): DLR = -(z_y - max_{i≠y} z_i) /
  (z_π1 - z_π3 + 1e-12); targeted DLR = -(z_y - z_t) / (z_π1 - ½(z_π3 + z_π4) + 1e-12).
* APGD-T: targeted DLR towards the 2nd ... 10th highest clean logit, one run per target.
* FAB-T (`fab_targeted`): minimal ℓ∞ perturbation towards the boundary with a target class:
  100 iterations of the projection onto the linearised boundary within the box, mixed with
  the projection of the clean point (α_max 0.1), overshoot η 1.05, a backward step β 0.9
  after each success; the first run from the clean point. Success counts only within ε. The
  projection (minimal ℓ∞ step onto a hyperplane within the pixel box) is solved by bisection
  on the ℓ∞ radius (the reference sorts breakpoints; the result is the same projection).
* Square (`square`): score-based, no gradients: 5,000 queries, vertical-stripe start, at each
  query a square window (side from p, starting at p_init 0.8 and halved on the reference's
  schedule) set to ±ε per channel, kept if the margin loss falls or the model is fooled.
* `AutoAttack`: the chain, each attack on the points no earlier attack broke, in fixed-size
  padded batches (one trace per attack and shape), compiled (XLA where asked), under a
  strategy, seeded: the starts and the squares are stateless draws from (seed, the example's
  index) and (seed, the batch, the query).
"""
import dataclasses
import time
import warnings
from typing import List, Sequence

import numpy as np
import tensorflow as tf

from common import attack, losses
from common.errors import ChallengeError

APGD_MOMENTUM = 0.75
APGD_RHO = 0.75  # η halves if the loss rose in at most this fraction of the steps
FAB_ALPHA_MAX, FAB_ETA, FAB_BETA = 0.1, 1.05, 0.9
SQUARE_P_INIT = 0.8
STANDARD = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
STANDARD_ITERATIONS = 100  # the standard version's APGD and FAB iterations
SQUARE_QUERIES_PER_ITERATION = 50  # the standard version: 5,000 queries for 100 iterations
NUM_TARGETS = 9  # APGD-T and FAB-T: the 2nd ... 10th most likely classes


def budget(iterations: int) -> dict:
  """AutoAttack's keyword arguments for `iterations`: APGD's and FAB's iterations and
  Square's queries (the standard version: 100, 100 and 5,000)."""
  return dict(apgd_iterations=iterations, fab_iterations=iterations,
              square_queries=SQUARE_QUERIES_PER_ITERATION * iterations)


# --- losses --------------------------------------------------------------------------------

def _sorted_logits(logits):
  return tf.sort(tf.cast(logits, tf.float32), axis=-1, direction='DESCENDING')


def dlr(labels, logits):
  """Difference of logits ratio (per example): -(z_y - max_{i≠y} z_i) / (z_π1 - z_π3)."""
  logits = tf.cast(logits, tf.float32)
  ordered = _sorted_logits(logits)
  mask = tf.one_hot(tf.cast(labels, tf.int64), tf.shape(logits)[-1], dtype=tf.float32)
  correct = tf.reduce_sum(mask * logits, axis=-1)
  best_other = tf.reduce_max(logits - 1e9 * mask, axis=-1)
  return -(correct - best_other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr(targets):
  """The targeted DLR towards `targets`: (labels, logits) -> -(z_y - z_t) /
  (z_π1 - ½(z_π3 + z_π4)); needs at least 4 classes."""
  def loss(labels, logits):
    logits = tf.cast(logits, tf.float32)
    ordered = _sorted_logits(logits)
    pick = lambda classes: tf.gather(logits, tf.cast(classes, tf.int64), batch_dims=1)
    return -(pick(labels) - pick(targets)) / (
        ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)
  return loss


# --- APGD ----------------------------------------------------------------------------------

def checkpoints(num_iterations: int) -> List[int]:
  """The iterations (counted from 1) after which APGD may halve its step: the first after
  22% of the run, then ever shorter intervals (3% less each time, at least 6%)."""
  interval = max(int(0.22 * num_iterations), 1)
  shrink, shortest = max(int(0.03 * num_iterations), 1), max(int(0.06 * num_iterations), 1)
  marks, at = [], interval
  while at <= num_iterations:
    marks.append(at)
    interval = max(interval - shrink, shortest)
    at += interval
  return marks


def boundary_start(x, epsilon, clip_min, clip_max, seed, examples):
  """APGD's start: x + ε·t / max|t|, t ~ U[-1, 1] per example (drawn from (seed, the
  example's index)), clipped to the pixel range. Draw it outside XLA-compiled code."""
  t = attack.per_example(seed, examples, lambda s: tf.random.stateless_uniform(
      tf.shape(x)[1:], s, -1.0, 1.0))
  scale = tf.reduce_max(tf.abs(tf.reshape(t, [tf.shape(t)[0], -1])), axis=1)
  scale = tf.reshape(scale, [-1] + [1] * (len(x.shape) - 1))
  return tf.clip_by_value(x + epsilon * t / (scale + 1e-12), clip_min, clip_max)


def _loss_and_gradient(model_fn, x, labels, loss_fn):
  """(logits, per-example loss, ∇ₓ of the summed loss) from one forward and backward pass."""
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(x)
    logits = tf.cast(model_fn(x), tf.float32)
    loss = loss_fn(labels, logits)
    total = tf.reduce_sum(loss)
  return logits, loss, tape.gradient(total, x)


def _expand(mask, like):
  return tf.reshape(mask, [-1] + [1] * (len(like.shape) - 1))


def apgd(model_fn, x, labels, epsilon, clip_min, clip_max, num_iterations, loss_fn, start,
         trace=False):
  """APGD from `start`: (x_adv, fooled); with `trace`, also the step sizes after every
  iteration [num_iterations, batch] (for tests). `loss_fn(labels, logits)` per example."""
  x = tf.convert_to_tensor(x)
  labels = tf.cast(labels, tf.int64)
  batch = tf.shape(x)[0]
  marks = checkpoints(num_iterations)
  # For each iteration (from 1): is it a checkpoint, and how many steps since the last one.
  is_mark = np.zeros(num_iterations + 1, bool)
  window = np.zeros(num_iterations + 1, np.float32)
  previous = 0
  for mark in marks:
    is_mark[mark], window[mark], previous = True, mark - previous, mark
  is_mark, window = tf.constant(is_mark), tf.constant(window)

  def project(z):
    return tf.clip_by_value(tf.clip_by_value(z, x - epsilon, x + epsilon), clip_min, clip_max)

  logits, loss, grad = _loss_and_gradient(model_fn, start, labels, loss_fn)
  fooled = tf.not_equal(tf.argmax(logits, axis=1), labels)
  step = tf.fill([batch], tf.constant(2.0 * epsilon, tf.float32))
  state = dict(
      i=tf.constant(0), x=start, x_prev=start, grad=grad, step=step,
      x_best=start, grad_best=grad, loss_best=loss, loss_prev=loss,
      increases=tf.zeros([batch]), loss_best_at_mark=loss,
      halved_at_mark=tf.ones([batch], tf.bool), first_adv=start, fooled=fooled,
      steps=tf.TensorArray(tf.float32, size=num_iterations))

  def body(s):
    i = s['i']
    momentum = tf.where(i > 0, APGD_MOMENTUM, 1.0)
    eta = _expand(s['step'], x)
    z = project(s['x'] + eta * tf.sign(s['grad']))
    x_new = project(s['x'] + momentum * (z - s['x']) + (1.0 - momentum) * (s['x'] - s['x_prev']))
    logits, loss, grad = _loss_and_gradient(model_fn, x_new, labels, loss_fn)
    now = tf.not_equal(tf.argmax(logits, axis=1), labels)
    first_adv = tf.where(_expand(now & ~s['fooled'], x), x_new, s['first_adv'])
    increases = s['increases'] + tf.cast(loss > s['loss_prev'], tf.float32)
    better = loss > s['loss_best']
    x_best = tf.where(_expand(better, x), x_new, s['x_best'])
    grad_best = tf.where(_expand(better, x), grad, s['grad_best'])
    loss_best = tf.where(better, loss, s['loss_best'])
    # At a checkpoint: halve η where the loss rose too rarely since the last one, or where it
    # was not halved last time and the best loss has not improved since; restart those from
    # their best point.
    mark = is_mark[i + 1]
    oscillating = increases <= APGD_RHO * window[i + 1]
    stalled = ~s['halved_at_mark'] & (s['loss_best_at_mark'] >= loss_best)
    halve = mark & (oscillating | stalled)
    step = tf.where(halve, s['step'] / 2.0, s['step'])
    x_next = tf.where(_expand(halve, x), x_best, x_new)
    grad_next = tf.where(_expand(halve, x), grad_best, grad)
    return dict(
        i=i + 1, x=x_next, x_prev=s['x'], grad=grad_next, step=step, x_best=x_best,
        grad_best=grad_best, loss_best=loss_best, loss_prev=loss,
        increases=tf.where(mark, tf.zeros_like(increases), increases),
        loss_best_at_mark=tf.where(mark, loss_best, s['loss_best_at_mark']),
        halved_at_mark=tf.where(mark, halve, s['halved_at_mark']),
        first_adv=first_adv, fooled=s['fooled'] | now, steps=s['steps'].write(i, step))

  final = tf.while_loop(lambda s: s['i'] < num_iterations, lambda s: (body(s),), (state,))[0]
  x_adv = tf.where(_expand(final['fooled'], x), final['first_adv'], final['x_best'])
  if trace:
    return x_adv, final['fooled'], final['steps'].stack()
  return x_adv, final['fooled']


def ranked_targets(logits, rank):
  """The class of the `rank`-th highest logit (rank 2: the most likely other class)."""
  return tf.argsort(tf.cast(logits, tf.float32), axis=-1, direction='DESCENDING')[:, rank - 1]


# --- FAB-T ---------------------------------------------------------------------------------

def project_linf(points, w, b, low, high, iterations=40):
  """The minimal ℓ∞ step d with w·(p + d) >= b (to the hyperplane w·z = b, or no step where
  p is past it already), low <= d <= high, for each row p of `points` [n, D] (low, high: the
  pixel box minus p, so low <= 0 <= high). By bisection on the radius r: the largest w·d with
  |d| <= r in the box, d = min(r, high) where w >= 0 and max(-r, low) where w < 0, grows
  with r; the smallest r that reaches b is the projection's ℓ∞ norm (where the box forbids
  reaching it, its corner)."""
  need = b - tf.reduce_sum(w * points, axis=1)

  def reach(radius):
    r = radius[:, None]
    d = tf.where(w >= 0, tf.minimum(r, high), tf.maximum(-r, low))
    return d, tf.reduce_sum(w * d, axis=1)

  upper = tf.reduce_max(tf.maximum(high, -low), axis=1)
  lower = tf.zeros_like(upper)
  for _ in range(iterations):  # unrolled: XLA-friendly
    middle = (lower + upper) / 2.0
    enough = reach(middle)[1] >= need
    upper = tf.where(enough, middle, upper)
    lower = tf.where(enough, lower, middle)
  d, _ = reach(tf.where(need <= 0, tf.zeros_like(upper), upper))
  return d


def fab_targeted(model_fn, x, labels, targets, epsilon, clip_min, clip_max,
                 num_iterations=100):
  """FAB-T from the clean point towards `targets`: (x_adv, fooled within ε). x_adv is the
  smallest ℓ∞ adversarial point found (x itself where none)."""
  x = tf.convert_to_tensor(x)
  labels, targets = tf.cast(labels, tf.int64), tf.cast(targets, tf.int64)
  batch = tf.shape(x)[0]
  flat = lambda t: tf.reshape(t, [batch, -1])
  x0 = flat(x)

  def difference_and_gradient(z):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(z)
      logits = tf.cast(model_fn(z), tf.float32)
      pick = lambda c: tf.gather(logits, c, batch_dims=1)
      difference = pick(labels) - pick(targets)  # > 0 while correctly ranked
      total = tf.reduce_sum(difference)
    return difference, tape.gradient(total, z)

  def body(i, x1, best, best_norm):
    f, g = difference_and_gradient(x1)
    w, p1 = -flat(g), flat(x1)
    b = tf.reduce_sum(w * p1, axis=1) + f  # the linearised boundary: w·z = b
    points = tf.concat([p1, x0], 0)
    d = project_linf(points, tf.concat([w, w], 0), tf.concat([b, b], 0),
                     clip_min - points, clip_max - points)
    d1, d2 = d[:batch], d[batch:]
    a1 = tf.maximum(tf.reduce_max(tf.abs(d1), axis=1), 1e-8)[:, None]
    a2 = tf.maximum(tf.reduce_max(tf.abs(d2), axis=1), 1e-8)[:, None]
    alpha = tf.clip_by_value(a1 / (a1 + a2), 0.0, FAB_ALPHA_MAX)
    new = tf.clip_by_value((p1 + FAB_ETA * d1) * (1 - alpha) + (x0 + FAB_ETA * d2) * alpha,
                           clip_min, clip_max)
    new_x = tf.reshape(new, tf.shape(x))
    adversarial = tf.not_equal(tf.argmax(model_fn(new_x), axis=1), labels)
    norm = tf.reduce_max(tf.abs(new - x0), axis=1)
    closer = adversarial & (norm < best_norm)
    best = tf.where(closer[:, None], new, best)
    best_norm = tf.where(closer, norm, best_norm)
    # After a success, step back towards the clean point.
    new = tf.where(adversarial[:, None], x0 + (new - x0) * FAB_BETA, new)
    return i + 1, tf.reshape(new, tf.shape(x)), best, best_norm

  _, _, best, best_norm = tf.while_loop(
      lambda i, *_: i < num_iterations, body,
      (tf.constant(0), x, x0, tf.fill([batch], tf.constant(np.inf, tf.float32))))
  fooled = best_norm <= epsilon
  return tf.reshape(tf.where(fooled[:, None], best, x0), tf.shape(x)), fooled


# --- Square --------------------------------------------------------------------------------

def square_fraction(query, num_queries, p_init=SQUARE_P_INIT):
  """The fraction p of the pixels a square covers at `query` (the reference's schedule,
  rescaled to num_queries): p_init, halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000
  and 8000 of 10,000."""
  at = int(query / num_queries * 10000)
  halvings = sum(at > mark for mark in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
  return p_init / 2 ** halvings


def margin(labels, logits):
  """z_y - max_{i≠y} z_i: negative once misclassified."""
  logits = tf.cast(logits, tf.float32)
  mask = tf.one_hot(tf.cast(labels, tf.int64), tf.shape(logits)[-1], dtype=tf.float32)
  return tf.reduce_sum(mask * logits, -1) - tf.reduce_max(logits - 1e9 * mask, -1)


def square(model_fn, x, labels, epsilon, clip_min, clip_max, image_shape, num_queries, seed):
  """Square attack (ℓ∞): (x_adv, fooled). `image_shape` (H, W, C) of x's rows. Queries
  whose square side is the same share one compiled loop; the windows and signs are
  stateless draws from (seed, query)."""
  x = tf.convert_to_tensor(x)
  labels = tf.cast(labels, tf.int64)
  height, width, channels = image_shape
  batch = tf.shape(x)[0]
  images = tf.reshape(x, [batch, height, width, channels])

  def as_input(z):
    return tf.reshape(z, tf.shape(x))

  def signs(shape, query_seed):
    return tf.sign(tf.random.stateless_uniform(shape, query_seed, -1.0, 1.0))

  stripes = signs([batch, 1, width, channels], tf.random.experimental.stateless_fold_in(seed, -1))
  best = tf.clip_by_value(images + epsilon * stripes, clip_min, clip_max)
  best_margin = margin(labels, model_fn(as_input(best)))
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]

  def body(query, side, best, best_margin):
    query_seed = tf.random.experimental.stateless_fold_in(seed, query)
    top = tf.random.stateless_uniform([], query_seed, 0, height - side + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(
        query_seed, 1), 0, width - side + 1, dtype=tf.int32)
    window = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side))
    window = tf.cast(window, tf.float32)[None, :, :, None]
    change = 2.0 * epsilon * signs([batch, 1, 1, channels],
                                   tf.random.experimental.stateless_fold_in(query_seed, 2))
    candidate = tf.clip_by_value(best + window * change, images - epsilon, images + epsilon)
    candidate = tf.clip_by_value(candidate, clip_min, clip_max)
    active = best_margin > 0  # the others are fooled already
    new_margin = margin(labels, model_fn(as_input(candidate)))
    keep = active & (new_margin < best_margin)
    best = tf.where(keep[:, None, None, None], candidate, best)
    best_margin = tf.where(keep, new_margin, best_margin)
    return query + 1, side, best, best_margin

  query = 0
  for side, count in _square_sides(num_queries, height * width):
    side = max(min(side, height, width), 1)
    _, _, best, best_margin = tf.while_loop(
        lambda q, *_: q < query + count, body,
        (tf.constant(query), tf.constant(side), best, best_margin))
    query += count
  return as_input(best), best_margin <= 0


def _square_sides(num_queries, pixels):
  """[(side, queries)]: runs of consecutive queries with the same square side."""
  runs = []
  for query in range(1, num_queries):  # query 0 is the stripes
    side = max(int(round(np.sqrt(square_fraction(query, num_queries) * pixels))), 1)
    if runs and runs[-1][0] == side:
      runs[-1][1] += 1
    else:
      runs.append([side, 1])
  return [tuple(run) for run in runs]


# --- the standard version ------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
  """Per attack: the robust accuracy after it (cumulative, over all examples) and its time."""
  attack: str
  robust_accuracy: float
  seconds: float


@dataclasses.dataclass
class Report:
  clean_accuracy: float
  outcomes: List[Outcome]
  broken_by: np.ndarray  # per example: '' (robust or misclassified clean), or the attack
  adversarial: np.ndarray  # the adversarial set (x where nothing broke it)
  robust: np.ndarray  # bool per example

  @property
  def robust_accuracy(self):
    return float(self.robust.mean())


class AutoAttack:
  """The chain of attacks on a model.

  model_fn: x -> logits (inference mode). attacks: names from STANDARD (the standard
  version: all, in that order). The attacks run on the examples still robust, in padded
  batches of `batch_size` (one compiled function per attack), under `strategy` (a batch's
  rows split over its replicas; batch_size is rounded up to a multiple of their number).
  """

  def __init__(self, model_fn, epsilon, clip_min, clip_max, image_shape,
               attacks: Sequence[str] = STANDARD, batch_size=500, seed=0, strategy=None,
               jit_compile=False, apgd_iterations=STANDARD_ITERATIONS,
               fab_iterations=STANDARD_ITERATIONS,
               square_queries=SQUARE_QUERIES_PER_ITERATION * STANDARD_ITERATIONS, log=print):
    unknown = [a for a in attacks if a not in STANDARD]
    if unknown:
      raise ChallengeError(f'unknown attack(s) {", ".join(unknown)}; use: ' + ', '.join(STANDARD))
    self.model_fn, self.epsilon = model_fn, float(epsilon)
    self.clip_min, self.clip_max, self.image_shape = clip_min, clip_max, tuple(image_shape)
    self.strategy = strategy or tf.distribute.get_strategy()
    replicas = self.strategy.num_replicas_in_sync
    self.attacks, self.seed = tuple(attacks), seed
    self.batch_size = -(-batch_size // replicas) * replicas  # each replica gets equal rows
    self.jit_compile, self.log = jit_compile, log
    self.apgd_iterations, self.fab_iterations = apgd_iterations, fab_iterations
    self.square_queries = square_queries
    compile_ = lambda fn: tf.function(fn, jit_compile=jit_compile)
    self._apgd_ce = compile_(lambda x, y, start: apgd(
        self.model_fn, x, y, self.epsilon, clip_min, clip_max, apgd_iterations, losses.xent,
        start))
    self._apgd_t = compile_(lambda x, y, start, targets: apgd(
        self.model_fn, x, y, self.epsilon, clip_min, clip_max, apgd_iterations,
        targeted_dlr(targets), start))
    self._fab = compile_(lambda x, y, targets: fab_targeted(
        self.model_fn, x, y, targets, self.epsilon, clip_min, clip_max, fab_iterations))
    # Square's loop of thousands of single forward passes: compiled, not by XLA (its loops
    # per square size would each be compiled anew).
    self._square = tf.function(lambda x, y, seed: square(
        self.model_fn, x, y, self.epsilon, clip_min, clip_max, self.image_shape,
        square_queries, seed))
    self._logits = tf.function(lambda x: tf.cast(self.model_fn(x), tf.float32))

  def _attack_batch(self, run, x, y, examples, batch_index):
    """One run (e.g. 'apgd-t' towards the 3rd class: ('apgd-t', 3)) on one padded batch:
    (x_adv, fooled). What is random is drawn here, outside XLA."""
    name, rank = run
    seed = tf.constant([self.seed, 0], tf.int64)
    if name == 'apgd-ce':
      start = boundary_start(x, self.epsilon, self.clip_min, self.clip_max, seed, examples)
      return self._apgd_ce(x, y, start)
    if name == 'apgd-t':
      targets = ranked_targets(self._logits(x), rank)
      start = boundary_start(x, self.epsilon, self.clip_min, self.clip_max,
                             tf.random.experimental.stateless_fold_in(seed, rank), examples)
      return self._apgd_t(x, y, start, targets)
    if name == 'fab-t':
      return self._fab(x, y, ranked_targets(self._logits(x), rank))
    return self._square(x, y, tf.constant([self.seed, batch_index], tf.int64))

  def _replicated(self, fn, *tensors):
    """fn on the batch's rows split over the strategy's replicas; results concatenated."""
    replicas = self.strategy.num_replicas_in_sync
    if replicas == 1:
      return fn(*tensors)
    rows = int(tensors[0].shape[0]) // replicas
    values = self.strategy.experimental_distribute_values_from_function(
        lambda context: tuple(t[context.replica_id_in_sync_group * rows:
                                (context.replica_id_in_sync_group + 1) * rows] for t in tensors))
    out = self.strategy.run(fn, args=values)
    return tuple(tf.concat(self.strategy.experimental_local_results(o), 0) for o in out)

  def _runs(self, name):
    """The runs of an attack: one, or one per target (the 2nd ... 10th class)."""
    if name in ('apgd-t', 'fab-t'):
      return [(name, rank) for rank in range(2, NUM_TARGETS + 2)]
    return [(name, None)]

  def run(self, images: np.ndarray, labels: np.ndarray) -> Report:
    """Every attack of the chain on the examples still robust; prints the robust accuracy
    after each, with its time."""
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    predictions = np.concatenate([np.argmax(self._logits(images[i:i + self.batch_size]), 1)
                                  for i in range(0, n, self.batch_size)])
    robust = predictions == labels
    clean = float(robust.mean())
    adversarial = images.copy()
    broken_by = np.array([''] * n, dtype=object)
    self._check(images[:self.batch_size], labels[:self.batch_size])
    self.log(f'clean accuracy: {100 * clean:.2f}%')
    tolerance = 1e-6 * max(1.0, abs(self.clip_max))  # float32 rounding of the ball's bounds
    outcomes = []
    for name in self.attacks:
      began = time.perf_counter()
      for run in self._runs(name):
        todo = np.flatnonzero(robust)
        for batch_index, first in enumerate(range(0, len(todo), self.batch_size)):
          index = todo[first:first + self.batch_size]
          count = len(index)
          padded = np.concatenate([index, np.full(self.batch_size - count, index[-1])])
          x_adv, fooled = self._replicated(
              lambda xs, ys, es, run=run, b=batch_index: self._attack_batch(run, xs, ys, es, b),
              tf.constant(images[padded]), tf.constant(labels[padded]),
              tf.constant(padded.astype(np.int64)))
          x_adv, fooled = x_adv.numpy()[:count], fooled.numpy()[:count]
          # What counts is judged here again: misclassified by the model, inside the ball.
          inside = (np.abs(x_adv - images[index]).reshape(count, -1).max(1)
                    <= self.epsilon + tolerance)
          wrong = np.argmax(self._logits(x_adv), 1) != labels[index]
          broke = index[fooled & wrong & inside]
          adversarial[broke] = x_adv[fooled & wrong & inside]
          broken_by[broke] = name
          robust[broke] = False
      seconds = time.perf_counter() - began
      outcomes.append(Outcome(name, float(robust.mean()), seconds))
      self.log(f'robust accuracy after {name.upper()}: {100 * robust.mean():.2f}% '
               f'({seconds:.1f} s)')
    self._warn_if_square_beats_gradients(outcomes)
    return Report(clean, outcomes, broken_by, adversarial, robust)

  # --- checks, as the reference's --------------------------------------------------------

  def _check(self, x, y):
    logits = self._logits(x).numpy()
    if np.allclose(logits.sum(-1), 1.0, atol=1e-4) and logits.min() >= 0:
      warnings.warn('the model outputs look like probabilities (they sum to 1): AutoAttack '
                    'needs logits; remove the softmax', stacklevel=3)
    if not np.allclose(self._logits(x).numpy(), logits, atol=1e-5):
      warnings.warn('the model gives other logits for the same inputs: it is randomised; '
                    'AutoAttack assumes a deterministic model (see the reference\'s rand '
                    'version for randomised defences)', stacklevel=3)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
      tape.watch(xt)
      loss = tf.reduce_sum(losses.xent(y, self.model_fn(xt)))
    grad = tape.gradient(loss, xt)
    if grad is None or not np.any(grad.numpy()):
      warnings.warn('the input gradient is zero at the clean points: the gradient attacks '
                    'cannot move; the model may mask its gradients', stacklevel=3)
    if logits.shape[-1] < 4 and any(a in self.attacks for a in ('apgd-t', 'fab-t')):
      warnings.warn(f'the model has {logits.shape[-1]} classes: targeted DLR needs at least '
                    '4', stacklevel=3)

  def _warn_if_square_beats_gradients(self, outcomes):
    names = [o.attack for o in outcomes]
    if 'square' in names and names.index('square') > 0:
      at = names.index('square')
      gain = outcomes[at - 1].robust_accuracy - outcomes[at].robust_accuracy
      if gain > 0.002:
        warnings.warn(f'Square, which uses no gradients, broke {100 * gain:.2f}% more of the '
                      'examples after the gradient attacks: the model may mask its gradients',
                      stacklevel=2)
