"""Projected gradient descent (PGD), written once for both challenges and every norm.

PGD chains the threat model's operations (common/attacks/threat.py; ℓ∞, the original's, or
ℓ2, chosen by PGDParams.norm):
  random start -> (steepest-ascent step -> project) x num_steps.
`pgd` chains them for any callable mapping inputs to logits. It is plain TF code meant to
run inside a `tf.function` (the training step calls it there); `make_pgd` compiles it on
its own. The step order is the original's: random start (then clip to the pixel range),
then each step: x += step_size * sign(grad) (ℓ2: step_size * grad / ‖grad‖₂), project to the
ε-ball, clip to the pixel range. `random_start`, `sign_step` and `project` are the ℓ∞
operations on their own (the original's, for users' scripts). With `eot_samples` > 1 each
gradient is the mean over that many passes of a randomised model (`common/attacks/eot.py`).

The k steps are unrolled with a Python loop inside one compiled function. On our CPU this
was ~1.35x faster than a `tf.range`/`tf.while_loop` loop (same outputs, bit for bit) and as
fast as one compiled step called k times; unlike the latter it lets the attack and the
weight update share one compiled replica step, which also avoids k host round trips on a
GPU. The price is a graph k times the model's, traced once.
"""
import dataclasses
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from common import losses
from common.attacks import eot
from common.attacks.threat import ThreatModel
from common.errors import ChallengeError


def inference_fn(model):
  """x -> logits of `model` in inference mode: a Keras model (or layer) is called with
  training=False; any other callable (a function, a loaded SavedModel's) as it is."""
  if isinstance(model, keras.layers.Layer):
    return lambda x: model(x, training=False)
  if not callable(model):
    raise ChallengeError(f'a model must be a Keras model or a callable x -> logits, not '
                         f'{type(model).__name__}')
  return model


@dataclasses.dataclass(frozen=True)
class PGDParams:
  epsilon: float
  num_steps: int
  step_size: float
  random_start: bool = True
  loss_func: str = 'xent'
  clip_min: float = 0.0
  clip_max: float = 1.0
  # The random start's noise is U(-start_radius, start_radius) (default: ε); N-FGSM draws
  # it from a wider box.
  start_radius: Optional[float] = None
  # Each step is projected back to the ε-ball (then clipped to the pixel range); N-FGSM's is
  # not: its perturbation may exceed ε.
  project_to_ball: bool = True
  norm: str = 'linf'  # the threat model's (common/attacks/threat.py NORMS)
  # Each gradient the mean over this many passes of a randomised model (common/attacks/eot.py).
  eot_samples: int = 1

  @property
  def noise_radius(self) -> float:
    return self.epsilon if self.start_radius is None else self.start_radius

  @property
  def threat(self) -> ThreatModel:
    return ThreatModel(self.norm, self.epsilon, self.clip_min, self.clip_max)


def per_example(seed, examples, draw, dtype=tf.float32):
  """draw(seed_i) for each example, seed_i = fold_in(seed, examples[i]): each example's draw
  depends on (seed, its index in the whole set) alone, not on how the set is batched or split
  over replicas. `examples`: int64 tensor [batch]."""
  return tf.map_fn(lambda index: draw(tf.random.experimental.stateless_fold_in(seed, index)),
                   tf.cast(examples, tf.int64), fn_output_signature=dtype)


def random_start(x_nat, epsilon, clip_min, clip_max, seed=None, rows=None, examples=None,
                 norm='linf'):
  """x_nat + U(-ε, ε) (for `norm` ℓ2: a point of the sphere of radius ε), clipped to the
  pixel range. `seed`: optional shape-[2] int tensor
  for a stateless (reproducible, resumable) draw; with it, either
  `rows`: (first, total) when x_nat is rows first.. of a batch of `total` split over
  replicas: the noise is those rows of the whole batch's draw, so each example starts where
  it would on one device (training: a fixed global batch); or
  `examples`: each example's index in the whole set: its noise is drawn from (seed, index)
  alone (evaluation: independent of the batch size and of the replicas).
  Draw outside XLA-compiled code: XLA's stateless generators give other numbers than TF's."""
  shape = tf.shape(x_nat)
  threat = ThreatModel(norm, epsilon, clip_min, clip_max)
  if seed is None:
    noise = threat.noise(shape, None, epsilon, x_nat.dtype)
  elif examples is not None:
    noise = per_example(seed, examples, lambda example_seed: threat.noise(
        shape[1:], example_seed, epsilon, x_nat.dtype, batched=False), x_nat.dtype)
  else:
    noise = rows_of_whole_batch(lambda whole: threat.noise(whole, seed, epsilon, x_nat.dtype),
                                x_nat, rows or (0, shape[0]))
  return tf.clip_by_value(x_nat + noise, clip_min, clip_max)


def uniform_noise(x, radius, seed, rows, norm='linf'):
  """A start's noise in x's shape (ThreatModel.noise: ℓ∞ U(-radius, radius), ℓ2 uniform on the
  sphere of that radius), stateless from `seed`: rows (first, total) of the whole batch's
  draw (see `random_start`). Draw outside XLA."""
  return rows_of_whole_batch(lambda whole: ThreatModel(norm, radius).noise(
      whole, seed, radius, x.dtype), x, rows)


def rows_of_whole_batch(draw, x, rows):
  """x's rows (first, total) of draw(the whole batch's shape): each example of a replica's
  share gets what it would on one device (without rows, x is the whole batch)."""
  first, total = rows
  shape = tf.shape(x)
  return draw(tf.concat([[total], shape[1:]], 0))[first:first + shape[0]]


def sign_step(x, grad, step_size):
  """The ℓ∞ step: x + step_size·sign(grad)."""
  return ThreatModel('linf', 0.0).ascent_step(x, grad, step_size)


def project(x, x_nat, epsilon, clip_min, clip_max):
  """Clip to the ℓ∞ ε-ball around x_nat, then to the pixel range (in that order)."""
  return ThreatModel('linf', 0.0, clip_min, clip_max).project(x, x_nat, epsilon)


def input_gradient(model_fn, x, labels, loss_fn, loss_scale=None, samples=1):
  """∇ₓ Σ loss_fn(labels, model_fn(x)); only x is watched, so no weight gradients. With
  `samples` > 1, the mean of that many passes' gradients (EOT, common/attacks/eot.py).

  loss_scale (for float16 models): the loss is multiplied by it first, so that small
  gradients do not underflow (their sign is what the attack uses), and components that
  overflow come back as 0 instead of inf/NaN.
  """
  def one_pass():
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(x)
      loss = tf.reduce_sum(loss_fn(labels, model_fn(x)))
      if loss_scale is not None:
        loss *= loss_scale
    # A model without any gradient (a step function in front) gives zeros, not None.
    grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    if loss_scale is not None:
      grad = tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))
    return (), (), grad
  return eot.averaged(one_pass, samples)[2]


def _iterates(model_fn, x_nat, labels, params: PGDParams, seed, loss_fn, loss_scale,
              rows=None, start=None):
  """x after the start and after each of the k steps, in the original's order: the one
  place the steps are chained (`pgd` keeps the last, `pgd_trace` looks at each)."""
  threat = params.threat
  if start is not None:
    x = start
  elif params.random_start:
    x = random_start(x_nat, params.noise_radius, params.clip_min, params.clip_max, seed, rows,
                     norm=params.norm)
  else:
    x = tf.identity(x_nat)
  yield x
  for _ in range(params.num_steps):
    grad = input_gradient(model_fn, x, labels, loss_fn, loss_scale, params.eot_samples)
    x = threat.ascent_step(x, grad, params.step_size)
    if params.project_to_ball:
      x = threat.project(x, x_nat)
    else:
      x = tf.clip_by_value(x, params.clip_min, params.clip_max)
    yield x


def pgd(model_fn, x_nat, labels, params: PGDParams, seed=None, loss_fn=None,
        loss_scale=None, rows=None, start=None):
  """Returns adversarial examples within params.epsilon of x_nat (in params.norm), in the
  pixel range.

  model_fn: callable x -> logits (e.g. `lambda x: model(x, training=False)`); x stays in
  x_nat's dtype (float32) whatever precision model_fn computes in.
  loss_fn: per-example loss (labels, logits) -> [batch]; default: params.loss_func.
  loss_scale: see `input_gradient` (`common.precision.Twin.loss_scale`).
  rows: see `random_start`.
  start: the starting point, if drawn already (`starting_points`; e.g. outside an
  XLA-compiled attack); it replaces the random start (or x_nat).
  """
  loss_fn = loss_fn or losses.attack_loss(params.loss_func)
  x_nat = tf.convert_to_tensor(x_nat)
  if params.epsilon == 0:
    return tf.stop_gradient(x_nat)  # the ε-ball is x_nat itself: natural training
  for x in _iterates(model_fn, x_nat, labels, params, seed, loss_fn, loss_scale, rows, start):
    pass
  return tf.stop_gradient(x)


def starting_points(x_nat, params: PGDParams, seed, restarts=1, rows=None, examples=None):
  """The starts of `restarts` PGD runs, [restarts, batch, ...]: x_nat if params has no
  random start; else the first from `seed` (as `pgd(..., seed=seed)` draws it), restart r
  from fold_in(seed, r). rows/examples: see `random_start`."""
  x_nat = tf.convert_to_tensor(x_nat)
  if not params.random_start:
    return tf.stack([x_nat] * restarts)
  seeds = [seed] + [tf.random.experimental.stateless_fold_in(seed, r)
                    for r in range(1, restarts)]
  return tf.stack([random_start(x_nat, params.noise_radius, params.clip_min, params.clip_max,
                                restart_seed, rows, examples, params.norm)
                   for restart_seed in seeds])


def pgd_restarts(model_fn, x_nat, labels, params: PGDParams, restarts: int, seed=None,
                 loss_fn=None, loss_scale=None, score_fn=None, starts=None):
  """The worst case, per example, of PGD from `restarts` random starts.

  An example counts as robust only if it survives every restart: the result is the first
  restart's example that `score_fn` (default: model_fn; e.g. the float32 model when the
  attack runs in another precision) misclassifies, or if none does, the one of highest
  loss. The starts are `starts` ([restarts, batch, ...]) or `starting_points(x_nat, params,
  seed, restarts)`: one restart is `pgd(..., seed=seed)`, and more can only lower
  accuracy. The restarts run in a `tf.while_loop` around the k unrolled steps (a graph of
  2k steps, not R·k).
  """
  loss_fn = loss_fn or losses.attack_loss(params.loss_func)
  score_fn = score_fn or model_fn
  labels = tf.cast(labels, tf.int64)
  if starts is None:
    starts = starting_points(x_nat, params, seed, restarts)

  def attempt(start):
    x = pgd(model_fn, x_nat, labels, params, loss_fn=loss_fn, loss_scale=loss_scale,
            start=start)
    logits = score_fn(x)
    return x, tf.not_equal(tf.argmax(logits, axis=1), labels), loss_fn(labels, logits)

  def keep_worse(restart, best_x, best_wrong, best_loss):
    x, wrong, loss = attempt(tf.gather(starts, restart))
    worse = ~best_wrong & (wrong | (loss > best_loss))  # a fooled example stays
    pick = lambda new, old: tf.where(
        tf.reshape(worse, [-1] + [1] * (len(old.shape) - 1)), new, old)
    return (restart + 1, pick(x, best_x), best_wrong | wrong, pick(loss, best_loss))

  first = attempt(starts[0])
  _, best_x, _, _ = tf.while_loop(lambda restart, *_: restart < restarts, keep_worse,
                                  (tf.constant(1),) + first)
  return best_x


def pgd_trace(model_fn, x_nat, labels, params: PGDParams, seed=None, loss_fn=None,
              start=None):
  """`pgd` that also returns the per-example loss at the start and after every step:
  (x_adv, losses [num_steps + 1, batch]). For studying the inner maximisation (the
  paper's Figures 1 and 2), not for speed."""
  loss_fn = loss_fn or losses.attack_loss(params.loss_func)
  trace = []
  for x in _iterates(model_fn, tf.convert_to_tensor(x_nat), labels, params, seed, loss_fn,
                     None, start=start):
    trace.append(loss_fn(labels, model_fn(x)))
  return tf.stop_gradient(x), tf.stack(trace)


def fgsm_params(epsilon, clip_min, clip_max, loss_func='xent', norm='linf') -> PGDParams:
  """FGSM, x + ε·sign(∇): PGD's one step of size ε from x itself (no random start); for ℓ2,
  its ℓ2 counterpart (the fast gradient method), x + ε·∇/‖∇‖₂."""
  return PGDParams(epsilon, 1, epsilon, False, loss_func, clip_min, clip_max, norm=norm)


# The attacks adversarial training can use: {name: what it is}.
TRAINING_ATTACKS = {
    'pgd': 'the configured PGD (k steps of a from a random start), as the original, or '
           'training_num_steps steps of training_step_size when they are set',
    'fgsm_rs': 'FGSM with random start (Wong, Rice & Kolter 2020, "Fast is better than '
               'free"): a start uniform in the ε-ball, one step of training_step_size '
               '(default 1.25 ε), projected to the ε-ball and the pixel range',
    'n_fgsm': 'N-FGSM (de Jorge et al. 2022): noise uniform in [-kε, kε] (k = '
              'noise_multiplier), one step of training_step_size (default ε), clipped to the '
              'pixel range but not projected to the ε-ball',
}
DEFAULT_STEP = {'fgsm_rs': 1.25, 'n_fgsm': 1.0}  # × ε, when training_step_size is 0


def training_attack_params(params: PGDParams, name: str, step_size: float = 0.0,
                           noise_multiplier: float = 2.0, num_steps: int = 0) -> PGDParams:
  """The training-time attack `name` (TRAINING_ATTACKS) at params' ε, pixel range and loss:
  for 'pgd', params with `num_steps` steps of `step_size` (0: params' own); else one step of
  `step_size` (0: the method's default) from a random start, on the same three operations."""
  if name not in TRAINING_ATTACKS:
    raise ChallengeError(f'unknown training_attack "{name}"; use one of: '
                         + ', '.join(TRAINING_ATTACKS))
  if name == 'pgd':
    if not (num_steps or step_size):
      return params
    return dataclasses.replace(params, num_steps=num_steps or params.num_steps,
                               step_size=step_size or params.step_size)
  if num_steps > 1:
    raise ChallengeError(f'training_num_steps is {num_steps}, but {name} takes one step; '
                         'set training_num_steps to 0 or use training_attack "pgd"')
  step = step_size or DEFAULT_STEP[name] * params.epsilon
  single = dataclasses.replace(params, num_steps=1, step_size=step, random_start=True)
  if name == 'n_fgsm':
    return dataclasses.replace(single, start_radius=noise_multiplier * params.epsilon,
                               project_to_ball=False)
  return single


# How targeted PGD picks the class to push each example into: {name: what it picks}.
TARGET_RULES = {
    'random': 'a wrong class drawn uniformly per example',
    'most_likely': 'the wrong class of highest logit on the natural input',
    'least_likely': 'the wrong class of lowest logit on the natural input',
}


def check_target_rule(rule: str) -> str:
  if rule not in TARGET_RULES:
    raise ChallengeError(f'unknown target rule "{rule}"; use one of: '
                         + ', '.join(TARGET_RULES))
  return rule


def choose_targets(rule, logits, labels, seed=None, examples=None):
  """The target class of each example under `rule` (TARGET_RULES); never its label.
  `logits`: the attacked model's on the natural inputs; `seed` (stateless) for 'random',
  with `examples` (see `random_start`) drawn per example."""
  check_target_rule(rule)
  labels = tf.cast(labels, tf.int64)
  num_classes = tf.shape(logits, out_type=tf.int64)[-1]
  if rule == 'random':
    shape = tf.shape(labels)
    if seed is None:
      shift = tf.random.uniform(shape, 1, num_classes, dtype=tf.int64)
    elif examples is not None:
      shift = per_example(seed, examples, lambda example_seed: tf.random.stateless_uniform(
          [], example_seed, 1, num_classes, dtype=tf.int64), tf.int64)
    else:
      shift = tf.random.stateless_uniform(shape, seed, 1, num_classes, dtype=tf.int64)
    return (labels + shift) % num_classes
  wrong = 1.0 - tf.one_hot(labels, tf.cast(num_classes, tf.int32), dtype=tf.float32)
  logits = tf.cast(logits, tf.float32)
  if rule == 'most_likely':
    return tf.argmax(logits - 1e9 * (1.0 - wrong), axis=-1)
  return tf.argmin(logits + 1e9 * (1.0 - wrong), axis=-1)  # least_likely


def targeted(loss_fn):
  """The loss whose ascent descends `loss_fn` of the target class: (targets, logits) ->
  -loss_fn(targets, logits). PGD on it pushes each example towards its target."""
  return lambda targets, logits: -loss_fn(targets, logits)


def make_pgd(model_fn, params: PGDParams, loss_scale=None, jit_compile=False):
  """`pgd` compiled once: a function (x_nat, labels) -> x_adv. With `jit_compile` the steps
  are compiled by XLA and the random start is drawn before them, by TF's own generator."""
  loss_fn = losses.attack_loss(params.loss_func)  # fails early on an unknown name
  steps = tf.function(lambda x_nat, labels, start: pgd(
      model_fn, x_nat, labels, params, loss_fn=loss_fn, loss_scale=loss_scale, start=start),
      jit_compile=jit_compile)
  return tf.function(lambda x_nat, labels: steps(
      x_nat, labels, starting_points(x_nat, params, None)[0]))


class LinfPGDAttack:
  """The original challenges' attack object, for users' scripts.

  `LinfPGDAttack(model, epsilon, k, a, random_start, loss_func).perturb(x_nat, y)` returns
  a float32 numpy array. `model` is a Keras model returning logits. The pixel range is
  the challenge's (each challenge's `pgd_attack` module fixes it).
  """
  clip_min = 0.0
  clip_max = 1.0

  def __init__(self, model, epsilon, num_steps, step_size, random_start, loss_func):
    self.model = model
    self.params = PGDParams(float(epsilon), int(num_steps), float(step_size),
                            bool(random_start), loss_func, self.clip_min, self.clip_max)
    self._attack = make_pgd(lambda x: model(x, training=False), self.params)

  def perturb(self, x_nat, y, sess=None):
    """`sess` is ignored; it is accepted so that scripts written for the TF1 original run."""
    del sess
    x_nat = np.asarray(x_nat, dtype=np.float32)
    return self._attack(tf.constant(x_nat), tf.constant(np.asarray(y, np.int64))).numpy()
