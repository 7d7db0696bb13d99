"""Evaluation over a test split: natural and PGD accuracy and loss, adversarial examples,
and plain predictions (for scoring submissions). Batches run in compiled steps under a
strategy; results come back in the split's order."""
import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from common import data, losses, precision
from common.attacks import pgd
from common.errors import NonFiniteLogits

SUM = tf.distribute.ReduceOp.SUM


@dataclasses.dataclass
class Results:
  num_examples: int
  nat_correct: int
  adv_correct: int
  nat_xent: float  # summed over examples
  adv_xent: float
  adversarial: Optional[np.ndarray] = None

  @property
  def nat_accuracy(self):
    return self.nat_correct / self.num_examples

  @property
  def adv_accuracy(self):
    return self.adv_correct / self.num_examples

  @property
  def avg_nat_xent(self):
    return self.nat_xent / self.num_examples

  @property
  def avg_adv_xent(self):
    return self.adv_xent / self.num_examples


def _num_not_finite(logits):
  """How many rows of logits hold a NaN or an infinity."""
  finite = tf.reduce_all(tf.math.is_finite(tf.cast(logits, tf.float32)), axis=1)
  return tf.reduce_sum(tf.cast(~finite, tf.int32))


def _local_concat(strategy, per_replica):
  return np.concatenate([t.numpy() for t in strategy.experimental_local_results(per_replica)])


class Evaluator:
  """Compiled per-batch attack and prediction for one model (weights may be reloaded).

  The attack runs in the precision of `attack_twin` (default: the model, float32);
  accuracies, losses and predictions are always the float32 model's. With `restarts` > 1
  each example gets the worst case of that many random starts (`pgd.pgd_restarts`).
  With a `seed`, each example's random starts (and random target) are stateless draws from
  (seed, its index in the split): the same on every run, whatever the batch size and the
  number of replicas; without one, TF's global generator draws them.

  Transfer (black-box) attacks: an `attack_twin` of another (source) model; its gradients
  craft the examples, the evaluated model only scores them (and, with restarts, judges
  which restart is worst). `loss_fn` replaces params.loss_func (e.g. CW with another κ);
  `target_rule` (pgd.TARGET_RULES) makes the attack targeted: it descends the loss of a
  target class chosen from the attacking model's natural logits.

  `jit_compile`: the attack and scoring of each replica's batch are compiled by XLA; what
  is random is drawn before, by TF's generators (XLA's give other numbers), so the results
  are those without XLA up to float rounding.

  Logits that are not finite (NaN, ±inf) on a natural or an adversarial example cannot be
  scored (argmax would call NaN class 0): `attack` and `predict` raise NonFiniteLogits
  naming the model (`name`).
  """

  def __init__(self, model, params: pgd.PGDParams, strategy=None,
               attack_twin: Optional[precision.Twin] = None, restarts: int = 1,
               seed: Optional[int] = None, loss_fn=None, target_rule: Optional[str] = None,
               jit_compile: bool = False, name: str = 'the model'):
    self.model, self.name = model, name
    self.strategy = strategy or tf.distribute.get_strategy()
    self._model_fn = lambda x: model(x, training=False)
    self.attack_twin = attack_twin or precision.Twin(model, None, 'float32')
    self._attack_fn = lambda x: self.attack_twin(x, training=False)
    self.params = params
    self._loss_fn = loss_fn or losses.attack_loss(params.loss_func)
    self.restarts, self.seed, self.target_rule = restarts, seed, target_rule
    if target_rule is not None:
      pgd.check_target_rule(target_rule)
      if restarts > 1:
        raise ValueError('targeted PGD with restarts is not supported')
    if restarts > 1 and seed is None:
      self.seed = 0
    self._attack_and_score = (tf.function(self._attack_and_score_fn, jit_compile=True)
                              if jit_compile else self._attack_and_score_fn)

  def _replica_attack(self, x, y, examples):
    """Draws the random starts and targets, then attacks and scores (compiled)."""
    seed, draws = None, None
    if self.seed is not None:
      seed, draws = tf.constant([self.seed, 0], tf.int64), examples
    targets = y
    if self.target_rule is not None:
      target_seed = None if seed is None else tf.random.experimental.stateless_fold_in(seed, -1)
      targets = pgd.choose_targets(self.target_rule, self._attack_fn(x), y, target_seed,
                                      draws)
    starts = pgd.starting_points(x, self.params, seed, self.restarts, examples=draws)
    return self._attack_and_score(x, y, targets, starts)

  def _attack_and_score_fn(self, x, y, targets, starts):
    scale = self.attack_twin.loss_scale
    if self.target_rule is not None:
      x_adv = pgd.pgd(self._attack_fn, x, targets, self.params,
                         loss_fn=pgd.targeted(self._loss_fn), loss_scale=scale,
                         start=starts[0])
    elif self.restarts > 1:
      x_adv = pgd.pgd_restarts(self._attack_fn, x, y, self.params, self.restarts,
                                  loss_fn=self._loss_fn, loss_scale=scale,
                                  score_fn=self._model_fn, starts=starts)
    else:
      x_adv = pgd.pgd(self._attack_fn, x, y, self.params, loss_fn=self._loss_fn,
                         loss_scale=scale, start=starts[0])
    nat_logits, adv_logits = self._model_fn(x), self._model_fn(x_adv)
    return (losses.num_correct(y, nat_logits), tf.reduce_sum(losses.xent(y, nat_logits)),
            losses.num_correct(y, adv_logits), tf.reduce_sum(losses.xent(y, adv_logits)),
            _num_not_finite(nat_logits) + _num_not_finite(adv_logits), x_adv)

  @tf.function(reduce_retracing=True)
  def _attack_batch(self, batch):
    *stats, x_adv = self.strategy.run(self._replica_attack, args=batch)
    return [self.strategy.reduce(SUM, s, axis=None) for s in stats], x_adv

  @tf.function(reduce_retracing=True)
  def _predict_batch(self, batch):
    def predict(x, y):
      logits = self._model_fn(x)
      return tf.argmax(logits, axis=1), _num_not_finite(logits)
    predictions, not_finite = self.strategy.run(predict, args=batch)
    return predictions, self.strategy.reduce(SUM, not_finite, axis=None)

  def _batches(self, split, batch_size, with_index=False):
    return self.strategy.experimental_distribute_dataset(
        data.eval_batches(split, batch_size, with_index))

  def attack(self, split: data.Split, batch_size: int, keep_adversarial=False,
             log=None) -> Results:
    totals = np.zeros(5)
    adversarial = []
    for i, batch in enumerate(self._batches(split, batch_size, with_index=True)):
      stats, x_adv = self._attack_batch(batch)
      totals += [float(s) for s in stats]
      if keep_adversarial:
        adversarial.append(_local_concat(self.strategy, x_adv))
      if log:
        log(i)
    if totals[4]:
      raise NonFiniteLogits(self.name, int(totals[4]), 2 * len(split),
                            'natural and adversarial examples')
    return Results(len(split), int(totals[0]), int(totals[2]), totals[1], totals[3],
                   np.concatenate(adversarial) if keep_adversarial else None)

  def predict(self, split: data.Split, batch_size: int) -> np.ndarray:
    """int64 predicted labels for split.images, in order."""
    predictions, not_finite = [], 0
    for batch in self._batches(split, batch_size):
      labels, count = self._predict_batch(batch)
      predictions.append(_local_concat(self.strategy, labels))
      not_finite += int(count)
    if not_finite:
      raise NonFiniteLogits(self.name, not_finite, len(split), 'examples')
    return np.concatenate(predictions).astype(np.int64)


class _Inference:
  """A callable x -> logits as the Evaluator calls a model: model(x, training=False)."""

  def __init__(self, model_fn):
    self._model_fn = model_fn

  def __call__(self, x, training=False):
    del training
    return self._model_fn(x)


def evaluate(model, x, y, epsilon: float, num_steps: int = 40, step_size: float = 0.01,
             random_start: bool = True, loss: str = 'xent', restarts: int = 1,
             clip=(0.0, 1.0), batch_size: int = 200, seed: int = 0) -> Results:
  """ℓ∞ PGD on any Keras model or callable x -> logits (in inference mode), in one call:
  x a batch of inputs as the model takes them, pixels in `clip`; y integer labels; `loss`
  xent or cw; with `restarts` > 1, each example's worst of that many random starts. The
  random starts are stateless draws from (seed, the example's index). Returns the Results
  (natural and adversarial accuracy and cross-entropy, the adversarial examples)."""
  params = pgd.PGDParams(float(epsilon), num_steps, float(step_size), random_start, loss,
                         clip_min=clip[0], clip_max=clip[1])
  evaluator = Evaluator(_Inference(pgd.inference_fn(model)), params, restarts=restarts,
                        seed=seed)
  split = data.Split(np.asarray(x, np.float32), np.asarray(y, np.int64))
  return evaluator.attack(split, batch_size, keep_adversarial=True)
