"""Evaluation over a test split: natural and PGD accuracy and loss, adversarial examples,
and plain predictions (for scoring submissions); any attack by name (`attack_by_name`) and
the robust accuracy of its examples (`robust_accuracy`). Batches run through the one runner
(common/attacks/runner.py), compiled, under a strategy; results come back in the split's
order."""
import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from common import data, losses, precision
from common.attacks import autoattack, pgd, registry, runner
from common.errors import NonFiniteLogits


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


def _not_finite(logits):
  """Whether each row of logits holds a NaN or an infinity."""
  return ~tf.reduce_all(tf.math.is_finite(tf.cast(logits, tf.float32)), axis=1)


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
    self._attack_rows = tf.function(self._replica_attack, reduce_retracing=True)
    self._predict_rows = tf.function(self._predict_fn, reduce_retracing=True)

  def _replica_attack(self, batch, x, y, examples):
    """Draws the random starts and targets, then attacks and scores (compiled)."""
    del batch
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
    """Per example: natural and adversarial correctness and cross-entropy, whether a logit
    is not finite, and the adversarial example."""
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
    correct = lambda logits: tf.equal(tf.argmax(logits, axis=1), tf.cast(y, tf.int64))
    return (correct(nat_logits), losses.xent(y, nat_logits), correct(adv_logits),
            losses.xent(y, adv_logits), _not_finite(nat_logits) | _not_finite(adv_logits),
            x_adv)

  def _predict_fn(self, batch, x):
    del batch
    logits = self._model_fn(x)
    return tf.argmax(logits, axis=1), _not_finite(logits)

  def attack(self, split: data.Split, batch_size: int, keep_adversarial=False,
             log=None) -> Results:
    """PGD on every example of `split` (common.attacks.runner: batches over the replicas);
    log(batch number) after each batch."""
    nat, nat_xent, adv, adv_xent, not_finite, *x_adv = runner.Runner(
        self.strategy, batch_size).map(
            self._attack_rows, [split.images, split.labels,
                                np.arange(len(split), dtype=np.int64)], log,
            keep=None if keep_adversarial else 5)  # the adversarial set only when kept
    if not_finite.any():
      raise NonFiniteLogits(self.name, int(not_finite.sum()), 2 * len(split),
                            'natural and adversarial examples')
    return Results(len(split), int(nat.sum()), int(adv.sum()),
                   float(np.sum(nat_xent, dtype=np.float64)),
                   float(np.sum(adv_xent, dtype=np.float64)),
                   x_adv[0] if keep_adversarial else None)

  def predict(self, split: data.Split, batch_size: int) -> np.ndarray:
    """int64 predicted labels for split.images, in order."""
    predictions, not_finite = runner.Runner(self.strategy, batch_size).map(
        self._predict_rows, [split.images])
    if not_finite.any():
      raise NonFiniteLogits(self.name, int(not_finite.sum()), len(split), 'examples')
    return predictions.astype(np.int64)


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


def attack_by_name(name: str, model_fn, params: pgd.PGDParams, split: data.Split, image_shape,
                   strategy=None, batch_size: int = 500, seed: int = 0, iterations: int = 0,
                   targets=None, jit_compile: bool = False,
                   model_name: str = 'the model', eot_samples: int = 1) -> np.ndarray:
  """The adversarial examples of the attack `name` (common.attacks.registry) on every
  example of `split`, in the threat model of `params` (PGD: params' steps, step size and
  loss): AutoAttack's four as its chain runs them (APGD-T and FAB-T towards the 2nd ... 10th
  most likely classes in turn, each run on the points still robust); the others in one pass
  of the runner (the C&W attacks towards `targets` where given). `iterations` 0: the
  attack's default. `eot_samples` > 1: PGD's and APGD's gradients averaged over that many
  passes of a randomised model (the others refuse it)."""
  if name in autoattack.CHAIN:
    if eot_samples > 1:
      registry.make(name, params.threat, eot_samples=eot_samples)  # refused where it must be
    return autoattack.AutoAttack(
        model_fn, params.epsilon, params.clip_min, params.clip_max, image_shape, [name],
        batch_size, seed, strategy, jit_compile,
        **autoattack.budget(iterations or autoattack.STANDARD_ITERATIONS),
        log=lambda *a, **k: None, model_name=model_name, norm=params.norm,
        eot_samples=eot_samples).run(split.images, split.labels).adversarial
  attack = registry.make(name, params.threat, iterations, image_shape, targets is not None,
                         eot_samples, **({'params': params} if name == 'pgd' else {}))
  return runner.Runner(strategy, batch_size).attack(
      attack, model_fn, split.images, split.labels, targets, seed=seed,
      jit_compile=jit_compile)[0]


def robust_accuracy(model_fn, threat, split: data.Split, adversarial, batch_size: int = 500,
                    strategy=None, name: str = 'the model') -> float:
  """The fraction of `split` classified correctly whose adversarial example is classified
  correctly too or lies outside the threat model's ε-ball (float32 rounding allowed:
  ThreatModel.rounding_tolerance)."""
  evaluator = Evaluator(_Inference(model_fn), pgd.PGDParams(threat.epsilon, 0, 0.0),
                        strategy, name=name)
  adversarial = np.asarray(adversarial, np.float32)
  clean = evaluator.predict(split, batch_size) == split.labels
  fooled = evaluator.predict(data.Split(adversarial, split.labels), batch_size) != split.labels
  size = int(np.prod(split.images.shape[1:]))
  inside = threat.contains(adversarial, split.images, threat.rounding_tolerance(size))
  return float(np.mean(clean & ~(fooled & inside)))
