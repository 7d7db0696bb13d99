"""The one runner: a per-batch function over a set of examples, written once for every
attack (attack.py, evaluate.py's rows, AutoAttack's chain) and for PGD's Evaluator
(common/evaluation.py).

* The examples run in order, in batches of `batch_size` rows (rounded up to a multiple of the
  strategy's replicas); a last, partial batch is padded with copies of its last row to the
  next sixteenth of the batch size, so that each compiled function is traced for at most 16
  shapes; the padding's outputs are dropped.
* Each batch's rows are split evenly over the strategy's replicas (under its device scope,
  one replica too) and the outputs gathered back in order (from other hosts' replicas too:
  `strategy.gather`).
* `map(fn, arrays)`: fn(batch, *rows) gets the batch's number (an int64 scalar) and its rows
  of each array, and returns a tuple of per-row outputs; `map` returns them for every example.
* `attack(attack, model_fn, images, labels, ...)`: a registered attack
  (common/attacks/registry.py) run this way: its random draws (from `seed`, each example's
  index in the whole set and the batch's number) outside its compiled function, which XLA
  compiles where asked and the attack allows. Returns (x_adv, success[, score_fn(x_adv)]).
"""
from typing import Callable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from common.attacks.registry import Attack

GRANULES = 16  # a partial batch is padded to the next 1/16 of the batch size


class _OnModel:
  """attack on model_fn as a callable object: TensorFlow counts the traces of functions made
  from one lambda together (a false "retracing" warning for each attack compiled), those of
  each object apart."""

  def __init__(self, attack, model_fn):
    self.attack, self.model_fn = attack, model_fn

  def __call__(self, x, y, t, *drawn):
    return self.attack(self.model_fn, x, y, t, *drawn)


class Runner:

  def __init__(self, strategy=None, batch_size: int = 500):
    if batch_size < 1:
      raise ValueError(f'the batch size must be at least 1, found {batch_size}')
    self.strategy = strategy or tf.distribute.get_strategy()
    replicas = self.strategy.num_replicas_in_sync
    self.batch_size = -(-batch_size // replicas) * replicas  # each replica gets equal rows
    self._compiled = {}

  def padded_size(self, count: int) -> int:
    """The rows a batch of `count` examples is padded to: the next multiple of a sixteenth
    of batch_size (and of the replicas)."""
    replicas = self.strategy.num_replicas_in_sync
    granule = -(-self.batch_size // (GRANULES * replicas)) * replicas
    return min(-(-count // granule) * granule, self.batch_size)

  def _replicated(self, fn, batch, tensors):
    """fn on the batch's rows split over the strategy's replicas; outputs gathered."""
    replicas = self.strategy.num_replicas_in_sync
    if replicas == 1:
      return self.strategy.run(fn, args=(batch, *tensors))
    rows = int(tensors[0].shape[0]) // replicas
    values = self.strategy.experimental_distribute_values_from_function(
        lambda context: tuple(t[context.replica_id_in_sync_group * rows:
                                (context.replica_id_in_sync_group + 1) * rows] for t in tensors))
    out = self.strategy.run(lambda *rows_of: fn(batch, *rows_of), args=values)
    local = [self.strategy.experimental_local_results(o) for o in out]
    if len(local[0]) < replicas:  # replicas on other hosts: gathered by a collective
      return tuple(self.strategy.gather(o, axis=0) for o in out)
    return tuple(tf.concat(parts, 0) for parts in local)

  def map(self, fn: Callable, arrays: Sequence[np.ndarray],
          log: Optional[Callable[[int], None]] = None,
          keep: Optional[int] = None) -> List[np.ndarray]:
    """fn's per-row outputs for every row of `arrays` (equal lengths, at least one row), in
    order (only the first `keep` of them, if given: the others are not held in memory);
    log(batch number) after each batch."""
    n, outputs = len(arrays[0]), []
    for batch, first in enumerate(range(0, n, self.batch_size)):
      count = min(self.batch_size, n - first)
      rows = np.arange(first, first + count)
      padded = np.concatenate([rows, np.full(self.padded_size(count) - count, rows[-1])])
      out = self._replicated(fn, tf.constant(batch, tf.int64),
                             [tf.constant(np.asarray(a)[padded]) for a in arrays])
      outputs.append([np.asarray(o)[:count] for o in out[:keep]])
      if log:
        log(batch)
    return [np.concatenate(parts) for parts in zip(*outputs)]

  def compiled(self, attack: Attack, model_fn, jit_compile: bool = False):
    """attack's function (x, labels, targets, *drawn) -> (x_adv, success) on model_fn,
    compiled once per (attack, model_fn): by XLA where asked and the attack allows."""
    key = (attack, model_fn, jit_compile)
    if key not in self._compiled:
      self._compiled[key] = tf.function(_OnModel(attack, model_fn),
                                        jit_compile=jit_compile and attack.xla)
    return self._compiled[key]

  def attack(self, attack: Attack, model_fn, images, labels, targets=None, examples=None,
             seed=0, jit_compile=False, score_fn=None) -> List[np.ndarray]:
    """[x_adv, success] (and score_fn(x_adv) per row, if given) for every example: `attack`
    on model_fn, towards `targets` where it is targeted; `examples` each row's index in the
    whole set (default: its position), `seed` an int or an int64 pair."""
    labels = np.asarray(labels, np.int64)
    targets = labels if targets is None else np.asarray(targets, np.int64)
    examples = (np.arange(len(labels), dtype=np.int64) if examples is None
                else np.asarray(examples, np.int64))
    seed = (tf.constant([seed, 0], tf.int64) if isinstance(seed, (int, np.integer))
            else tf.cast(seed, tf.int64))
    compiled = self.compiled(attack, model_fn, jit_compile)

    def batch_fn(batch, x, y, t, e):
      x_adv, success = compiled(x, y, t, *attack.draw(x, seed, e, batch))
      return (x_adv, success) + ((score_fn(x_adv),) if score_fn else ())
    return self.map(batch_fn, [np.asarray(images, np.float32), labels, targets, examples])
