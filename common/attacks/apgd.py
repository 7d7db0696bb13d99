"""APGD (Croce & Hein, ICML 2020), ℓ∞ and ℓ2, and its losses, as fra31/auto-attack's
`autopgd_base.py` computes them (the reference's behaviour is the specification; written anew
from it, not copied). The threat model (`common.attacks.threat`) supplies the norm's
operations.

* Start: x + ε·t/(‖t‖ + 1e-12) per example, on the ball's boundary (ℓ∞: t ~ U[-1, 1];
  ℓ2: t ~ N(0, 1)), clipped to the pixel range (`boundary_start`: drawn from (seed, the
  example's index), outside XLA).
* Step η = 2ε per example; momentum 0.75 (none at the first iteration):
  z = P(x_k + η·s(∇)), x_{k+1} = P(x_k + 0.75(z - x_k) + 0.25(x_k - x_{k-1})), s the norm's
  steepest-ascent direction (ℓ∞ sign(∇), ℓ2 ∇/‖∇‖₂), P the projection onto the ε-ball,
  then the pixel range. One forward and backward pass per iteration; the loss and the
  prediction come from the same pass.
* Checkpoints (`checkpoints`: for 100 iterations after iterations 22, 41, 57, 70, 80, 87, 93,
  99): η halves for an example whose loss rose in at most 75% of the steps since the last
  checkpoint, or which was not halved at the last checkpoint and whose best loss has not
  improved since; a halved example restarts from its best point (and that point's gradient).
  At the first checkpoint the reference counts the first iterate's loss as a rise when it
  is above 0 (it compares it with its still-zero loss history, not with the start's loss);
  so do we: it decides when η first halves for the targeted DLR, negative while the example
  is robust.
* Result: per example the last misclassified point (the start or an iterate), else the point
  of highest loss.
* EOT (`eot_samples`, the reference's eot_iter; its rand version: 20): each gradient the mean
  over that many passes of a randomised model, the loss and the prediction the last pass's
  (`common.attacks.eot`).
* Ours stops early, with the same result, once every example of the batch is at a fixed
  point of the iteration (`_stationary`); the reference runs every iteration.
* Losses (per example, logits in float32): the cross-entropy; DLR = -(z_y - max_{i≠y} z_i) /
  (z_π1 - z_π3 + 1e-12); targeted DLR = -(z_y - z_t) / (z_π1 - ½(z_π3 + z_π4) + 1e-12), towards
  the rank-th most likely clean class (`ranked_targets`; APGD-T: ranks 2 ... 10).
"""
from typing import List

import numpy as np
import tensorflow as tf

from common.attacks import eot, pgd
from common.attacks.threat import ThreatModel

MOMENTUM = 0.75
RHO = 0.75  # η halves if the loss rose in at most this fraction of the steps


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


def ranked_targets(logits, rank):
  """The class of the `rank`-th highest logit (rank 2: the most likely other class)."""
  return tf.argsort(tf.cast(logits, tf.float32), axis=-1, direction='DESCENDING')[:, rank - 1]


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


def boundary_start(x, threat: ThreatModel, seed, examples):
  """APGD's start: x + ε·t / (‖t‖ + 1e-12) per example (ℓ∞: t ~ U[-1, 1]; ℓ2: t ~ N(0, 1);
  drawn from (seed, the example's index)), clipped to the pixel range. Draw it outside
  XLA-compiled code."""
  if threat.norm == 'linf':
    draw = lambda s: tf.random.stateless_uniform(tf.shape(x)[1:], s, -1.0, 1.0)
  else:
    draw = lambda s: tf.random.stateless_normal(tf.shape(x)[1:], s)
  t = pgd.per_example(seed, examples, draw)
  # ε·t first, then divided: the order the ℓ∞ start was always computed in (bit for bit).
  return tf.clip_by_value(x + threat.epsilon * t / (threat.norms(t) + 1e-12), threat.clip_min,
                          threat.clip_max)


def _loss_and_gradient(model_fn, x, labels, loss_fn, samples=1):
  """(logits, per-example loss, ∇ₓ of the summed loss) from one forward and backward pass;
  with `samples` > 1 the gradient is the mean of that many passes' (EOT: the reference's
  eot_iter), the logits and loss the last pass's (common/attacks/eot.py)."""
  def one_pass():
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(x)
      logits = tf.cast(model_fn(x), tf.float32)
      loss = loss_fn(labels, logits)
      total = tf.reduce_sum(loss)
    # A model without any gradient (a step function in front): zeros, not None.
    return logits, loss, tape.gradient(total, x,
                                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
  return eot.averaged(one_pass, samples)


def _stationary(x, x_next, x_best, grad_next):
  """Whether every example is at a fixed point of the iteration: its gradient there exactly
  zero, its next point its current one (no momentum left) and its best one (a restart leaves
  it there). Then every later iteration repeats this one whatever the step size, so stopping
  returns what all `num_iterations` would: on models whose input gradient is exactly zero
  (shattered gradients) the run ends after its first iteration."""
  same = lambda a, b: tf.reduce_all(tf.equal(a, b))
  return same(x_next, x) & same(x_next, x_best) & same(grad_next, 0.0)


def _expand(mask, like):
  return tf.reshape(mask, [-1] + [1] * (len(like.shape) - 1))


def apgd(model_fn, x, labels, threat: ThreatModel, num_iterations, loss_fn, start,
         trace=False, stop_when_stationary=True, eot_samples=1):
  """APGD from `start` in the ball of `threat`: (x_adv, fooled); with `trace`, also the step
  sizes after every iteration [num_iterations, batch] (for tests; it runs every iteration).
  `loss_fn(labels, logits)` per example. `stop_when_stationary`: stop once no example can
  move again (the result is the same; see `_stationary`). `eot_samples`: each gradient the
  mean over that many passes of a randomised model (EOT), the loss and the prediction the
  last pass's, as the reference's eot_iter."""
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

  project = lambda z: threat.project(z, x)

  logits, loss, grad = _loss_and_gradient(model_fn, start, labels, loss_fn, eot_samples)
  fooled = tf.not_equal(tf.argmax(logits, axis=1), labels)
  step = tf.fill([batch], tf.constant(2.0 * threat.epsilon, tf.float32))
  # The reference's loss history starts as zeros and its first rise is counted against its
  # last entry: 0, or with a single iteration the first iterate's own loss.
  history_start = tf.zeros_like(loss)
  state = dict(
      i=tf.constant(0), x=start, x_prev=start, grad=grad, step=step,
      x_best=start, grad_best=grad, loss_best=loss, loss_prev=history_start,
      increases=tf.zeros([batch]), loss_best_at_mark=loss,
      halved_at_mark=tf.ones([batch], tf.bool), adversarial=start, fooled=fooled,
      stationary=tf.constant(False), steps=tf.TensorArray(tf.float32, size=num_iterations))
  may_stop = stop_when_stationary and not trace

  def body(s):
    i = s['i']
    momentum = tf.where(i > 0, MOMENTUM, 1.0)
    eta = _expand(s['step'], x)
    z = project(threat.ascent_step(s['x'], s['grad'], eta))
    x_new = project(s['x'] + momentum * (z - s['x']) + (1.0 - momentum) * (s['x'] - s['x_prev']))
    logits, loss, grad = _loss_and_gradient(model_fn, x_new, labels, loss_fn, eot_samples)
    now = tf.not_equal(tf.argmax(logits, axis=1), labels)
    adversarial = tf.where(_expand(now, x), x_new, s['adversarial'])
    loss_prev = s['loss_prev'] if num_iterations > 1 else tf.where(i > 0, s['loss_prev'], loss)
    increases = s['increases'] + tf.cast(loss > loss_prev, tf.float32)
    better = loss > s['loss_best']
    x_best = tf.where(_expand(better, x), x_new, s['x_best'])
    grad_best = tf.where(_expand(better, x), grad, s['grad_best'])
    loss_best = tf.where(better, loss, s['loss_best'])
    # At a checkpoint: halve η where the loss rose too rarely since the last one, or where it
    # was not halved last time and the best loss has not improved since; restart those from
    # their best point.
    mark = is_mark[i + 1]
    oscillating = increases <= RHO * window[i + 1]
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
        adversarial=adversarial, fooled=s['fooled'] | now,
        stationary=(_stationary(s['x'], x_next, x_best, grad_next) if may_stop
                    else s['stationary']),
        steps=s['steps'].write(i, step))

  final = tf.while_loop(lambda s: (s['i'] < num_iterations) & ~s['stationary'],
                        lambda s: (body(s),), (state,))[0]
  x_adv = tf.where(_expand(final['fooled'], x), final['adversarial'], final['x_best'])
  if trace:
    return x_adv, final['fooled'], final['steps'].stack()
  return x_adv, final['fooled']
