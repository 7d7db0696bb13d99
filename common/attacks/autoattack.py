"""AutoAttack (Croce & Hein, ICML 2020), ℓ∞ and ℓ2, as fra31/auto-attack's `autoattack.py`
runs it (`norm='Linf'` or `'L2'`; the reference's behaviour is the specification), for any
`model_fn` x -> logits and either pixel scale, in two versions:

* standard (`version='standard'`): APGD-CE, APGD-T, FAB-T and Square (`common.attacks.apgd`,
  `.fab`, `.square`, each in the norm), each on the points no earlier attack broke.
* rand (`version='rand'`, for randomised defences): APGD-CE and APGD-DLR (untargeted DLR),
  each gradient the mean over 20 passes of the model (EOT, `common.attacks.eot`; the
  reference's eot_iter 20), one restart. As the reference judges it: a point is broken when
  one more pass of the (random) model misclassifies what the attack returned, the point it
  found misclassified or else the clean image (the reference's perturb returns the clean
  image where its attack never fooled the model). The reference also skips, before each
  attack, the points one random pass already misclassifies (returning them clean, judged by
  the next pass); ours attacks them (it can only break more).

* Budget (`budget`): APGD's and FAB's 100 iterations, Square's 5,000; one restart each;
  APGD-T and FAB-T towards the 2nd ... 10th most likely clean classes (9 runs, each on the
  points still robust; the targets from the clean logits, computed once).
* The chain is a list of the interface's attacks (common/attacks/registry.py), each run by
  the one runner (common/attacks/runner.py: padded batches, replicas, compiled, by XLA where
  asked), seeded: the starts and the squares are stateless draws from (seed, the example's
  index) and (seed, the batch, the iteration).
* A success counts when the model misclassifies the returned point and it lies in the ε-ball
  (the reference checks the prediction only; the ball's slack for float32 rounding:
  `ThreatModel.rounding_tolerance`).
* Checks, as the reference's `checks.py`, are warnings: outputs that look like
  probabilities, logits that change between calls, a zero input gradient at the clean
  points, Square breaking more than 0.2% after the gradient attacks, fewer than 4 classes.
* One call (`evaluate`), as the reference's `run_standard_evaluation`: any Keras model or
  callable, a batch of inputs and labels, ε, the norm and the pixel range; Square's image
  shape from the inputs' shape.
"""
import dataclasses
import time
import warnings
from typing import List, Sequence

import numpy as np
import tensorflow as tf

from common import losses
from common.attacks import apgd, pgd, registry, runner
from common.attacks.threat import ThreatModel
from common.config import MAX_EVAL_BATCH
from common.errors import ChallengeError, require_finite_logits

STANDARD = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
RAND = ('apgd-ce', 'apgd-dlr')
VERSIONS = {'standard': STANDARD, 'rand': RAND}
RAND_EOT_SAMPLES = 20  # the reference's eot_iter in the rand version
CHAIN = STANDARD + ('apgd-dlr',)  # the attacks a chain may hold
STANDARD_ITERATIONS = 100  # the standard version's APGD and FAB iterations
SQUARE_QUERIES_PER_ITERATION = 50  # the standard version: 5,000 queries for 100 iterations
NUM_TARGETS = 9  # APGD-T and FAB-T: the 2nd ... 10th most likely classes


# What to do when the gradients look masked (docs/obfuscated_gradients.md).
NEXT_STEP = ('attack it with BPDA if it is deterministic (--bpda on behind a defence: the '
             'defence\'s backward pass replaced), with the rand version if it is randomised '
             '(--version rand: EOT over 20 draws)')

PROBABILITIES_WARNING = ('the model outputs look like probabilities (they sum to 1): AutoAttack '
                         'needs logits; remove the softmax')


def looks_like_probabilities(outputs) -> bool:
  """The reference's check: non-negative rows that sum to 1."""
  outputs = np.asarray(outputs)
  return bool(np.allclose(outputs.sum(-1), 1.0, atol=1e-4) and outputs.min() >= 0)


def budget(iterations: int) -> dict:
  """AutoAttack's keyword arguments for `iterations`: APGD's and FAB's iterations and
  Square's queries (the standard version: 100, 100 and 5,000)."""
  return dict(apgd_iterations=iterations, fab_iterations=iterations,
              square_queries=SQUARE_QUERIES_PER_ITERATION * iterations)


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

  model_fn: x -> logits (inference mode). The threat model: `norm` ('linf' or 'l2'), ε and
  the pixel range. attacks: names from CHAIN (default: the version's, in order). `version`:
  'standard' or 'rand' (its judging rule, EOT over 20 passes, no randomness warning);
  `eot_samples` (default: the version's, 1 or 20): APGD's passes per gradient.
  The attacks run on the examples still robust, through the runner: in batches of
  `batch_size` (the last padded to `padded_size`; one compiled function per attack), under
  `strategy` (a batch's rows split over its replicas; batch_size is rounded up to a multiple
  of their number). Logits that are not finite, on a clean or an adversarial example, raise
  NonFiniteLogits naming the model (`model_name`): NaN would be judged a misclassification.
  """

  def __init__(self, model_fn, epsilon, clip_min, clip_max, image_shape,
               attacks: Sequence[str] = (), batch_size=500, seed=0, strategy=None,
               jit_compile=False, apgd_iterations=STANDARD_ITERATIONS,
               fab_iterations=STANDARD_ITERATIONS,
               square_queries=SQUARE_QUERIES_PER_ITERATION * STANDARD_ITERATIONS, log=print,
               model_name='the model', norm='linf', version='standard', eot_samples=0):
    if not 1 <= batch_size <= MAX_EVAL_BATCH:  # a padded batch is up to 1/16 of it
      raise ChallengeError(f'the batch size must be between 1 and {MAX_EVAL_BATCH}, found '
                           f'{batch_size}')
    if version not in VERSIONS:
      raise ChallengeError(f'unknown version "{version}"; use one of: ' + ', '.join(VERSIONS))
    attacks = tuple(attacks) if attacks else VERSIONS[version]
    unknown = [a for a in attacks if a not in CHAIN]
    if unknown:
      raise ChallengeError(f'unknown attack(s) {", ".join(unknown)}; use: ' + ', '.join(CHAIN))
    self.version = version
    self.eot_samples = eot_samples or (RAND_EOT_SAMPLES if version == 'rand' else 1)
    self.model_fn, self.epsilon = model_fn, float(epsilon)
    self.threat = ThreatModel(norm, self.epsilon, clip_min, clip_max)
    self.clip_min, self.clip_max, self.image_shape = clip_min, clip_max, tuple(image_shape)
    self.runner = runner.Runner(strategy, batch_size)
    self.strategy, self.batch_size = self.runner.strategy, self.runner.batch_size
    self.attacks, self.seed = tuple(attacks), seed
    self.jit_compile, self.log, self.model_name = jit_compile, log, model_name
    self.apgd_iterations, self.fab_iterations = apgd_iterations, fab_iterations
    self.square_queries = square_queries
    budgets = {'apgd-ce': apgd_iterations, 'apgd-dlr': apgd_iterations,
               'apgd-t': apgd_iterations, 'fab-t': fab_iterations, 'square': square_queries}
    self._chain = [registry.make(
        name, self.threat, budgets[name], self.image_shape,
        eot_samples=self.eot_samples if registry.ATTACKS[name].averages_draws else 1)
                   for name in self.attacks]
    self._logits = tf.function(lambda x: tf.cast(self.model_fn(x), tf.float32))

  def padded_size(self, count: int) -> int:
    """The rows a batch of `count` examples is padded to (Runner.padded_size)."""
    return self.runner.padded_size(count)

  def _runs(self, attack):
    """The runs of an attack: one, or one per target (the 2nd ... 10th class), each with its
    seed (APGD-T's starts: folded with the target's rank)."""
    seed = tf.constant([self.seed, 0], tf.int64)
    if attack.targeted:
      return [(rank, tf.random.experimental.stateless_fold_in(seed, rank))
              for rank in range(2, NUM_TARGETS + 2)]
    return [(1, seed)]

  def run(self, images: np.ndarray, labels: np.ndarray) -> Report:
    """Every attack of the chain on the examples still robust; prints the robust accuracy
    after each, with its time."""
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    clean_logits = self._logits_in_batches(images)
    require_finite_logits(clean_logits, self.model_name, 'clean examples')
    robust = np.argmax(clean_logits, 1) == labels
    clean = float(robust.mean())
    adversarial = images.copy()
    broken_by = np.array([''] * n, dtype=object)
    self._check(images[:self.batch_size], labels[:self.batch_size])
    self.log(f'clean accuracy: {100 * clean:.2f}%')
    tolerance = self.threat.rounding_tolerance(int(np.prod(images.shape[1:])))
    outcomes = []
    for attack in self._chain:
      name = attack.name
      began = time.perf_counter()
      for rank, seed in self._runs(attack):
        # The targets from the clean logits (rank 1, the most likely class, for the
        # untargeted attacks, which ignore them).
        targets = apgd.ranked_targets(clean_logits, rank).numpy().astype(np.int64)
        todo = np.flatnonzero(robust)
        if not len(todo):
          continue
        # What counts is judged here again: misclassified by the model (its logits of the
        # padded batch, so that they are traced for its few shapes), inside the ball.
        x_adv, fooled, logits = self.runner.attack(
            attack, self.model_fn, images[todo], labels[todo], targets[todo], todo, seed,
            self.jit_compile, score_fn=self._logits)
        require_finite_logits(logits, self.model_name,
                              f'adversarial examples of {name.upper()}')
        wrong = np.argmax(logits, 1) != labels[todo]
        if self.version == 'rand':
          # The reference's rule: one more pass judges the returned point (the attack's
          # where it fooled the model, else the clean image).
          x_adv = np.where(fooled.reshape((-1,) + (1,) * (x_adv.ndim - 1)), x_adv,
                           images[todo])
          logits = self._logits_in_batches(x_adv)
          require_finite_logits(logits, self.model_name,
                                f'adversarial examples of {name.upper()}')
          fooled = np.argmax(logits, 1) != labels[todo]
          wrong = fooled
        inside = self.threat.contains(x_adv, images[todo], tolerance)
        broke = todo[fooled & wrong & inside]
        adversarial[broke] = x_adv[fooled & wrong & inside]
        broken_by[broke] = name
        robust[broke] = False
      seconds = time.perf_counter() - began
      outcomes.append(Outcome(name, float(robust.mean()), seconds))
      self.log(f'robust accuracy after {name.upper()}: {100 * robust.mean():.2f}% '
               f'({seconds:.1f} s)')
    warn_if_square_beats_gradients(self.attacks, broken_by)
    return Report(clean, outcomes, broken_by, adversarial, robust)

  def _logits_in_batches(self, x):
    return np.concatenate([self._logits(x[i:i + self.batch_size]).numpy()
                           for i in range(0, len(x), self.batch_size)])

  # --- checks, as the reference's --------------------------------------------------------

  def _check(self, x, y):
    logits = self._logits(x).numpy()
    if looks_like_probabilities(logits):
      warnings.warn(PROBABILITIES_WARNING, stacklevel=3)
    if self.version != 'rand' and not np.allclose(self._logits(x).numpy(), logits, atol=1e-5):
      warnings.warn('the model gives other logits for the same inputs: it is randomised; '
                    'the standard version assumes a deterministic model: run the rand '
                    'version (--version rand: APGD with EOT over 20 draws)', stacklevel=3)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
      tape.watch(xt)
      loss = tf.reduce_sum(losses.xent(y, self.model_fn(xt)))
    grad = tape.gradient(loss, xt)
    if grad is None or not np.any(grad.numpy()):
      warnings.warn('the input gradient is zero at the clean points: the gradient attacks '
                    'cannot move; the model may mask its gradients: ' + NEXT_STEP,
                    stacklevel=3)
    if logits.shape[-1] < 4 and any(a in self.attacks for a in ('apgd-t', 'fab-t')):
      warnings.warn(f'the model has {logits.shape[-1]} classes: targeted DLR needs at least '
                    '4', stacklevel=3)


def warn_if_square_beats_gradients(attacks, broken_by):
  """The reference's masking check: warns when Square, after gradient attacks, broke more
  than 0.2% of the examples. Counted in examples, so that exactly 0.2% (2 of 1,000) stays
  silent: a difference of two float accuracies rounds either way (0.903 - 0.901 > 0.002 in
  floats; the reference's `square < acc - 0.002` is silent there but warns in 5 of the 998
  cases of 2 in 1,000)."""
  attacks = list(attacks)
  if 'square' not in attacks or attacks.index('square') == 0:
    return
  broke = int(np.sum(np.asarray(broken_by) == 'square'))
  if 1000 * broke > 2 * len(broken_by):
    warnings.warn(f'Square, which uses no gradients, broke {100 * broke / len(broken_by):.2f}% '
                  'more of the examples after the gradient attacks: the model may mask its '
                  'gradients: ' + NEXT_STEP, stacklevel=3)


# --- one call ----------------------------------------------------------------------------

def image_shape_of(x: np.ndarray) -> tuple:
  """(H, W, C) of a batch of images: NHWC as it is, NHW with one channel, flat square
  images (N, H·H) as (H, H, 1) (MNIST's)."""
  if x.ndim == 4:
    return tuple(x.shape[1:])
  if x.ndim == 3:
    return tuple(x.shape[1:]) + (1,)
  side = int(round(np.sqrt(x.shape[1]))) if x.ndim == 2 else 0
  if x.ndim == 2 and side * side == x.shape[1]:
    return (side, side, 1)
  raise ChallengeError(f'cannot tell the image shape of inputs of shape {x.shape}; pass '
                       'image_shape=(height, width, channels)')


def evaluate(model, x, y, epsilon: float, clip=(0.0, 1.0), attacks: Sequence[str] = (),
             image_shape=None, batch_size: int = 500, seed: int = 0,
             iterations: int = STANDARD_ITERATIONS, jit_compile: bool = False,
             log=print, norm: str = 'linf', version: str = 'standard') -> Report:
  """AutoAttack on any Keras model or callable x -> logits (in inference mode), as the
  reference's `run_standard_evaluation`: x a batch of inputs as the model takes them, pixels
  in `clip`; y integer labels; `norm` 'linf' or 'l2' (ε its radius); `version` 'standard' or
  'rand' (randomised models: APGD-CE and APGD-DLR with EOT over 20 passes); `attacks` another
  chain. `image_shape` (H, W, C) for Square, if x is not NHWC, NHW or flat square images.
  Prints each attack's robust accuracy; returns the Report."""
  x = np.asarray(x, np.float32)
  attacker = AutoAttack(pgd.inference_fn(model), epsilon, clip[0], clip[1],
                        image_shape or image_shape_of(x), attacks, batch_size, seed,
                        jit_compile=jit_compile, **budget(iterations), log=log, norm=norm,
                        version=version)
  return attacker.run(x, np.asarray(y, np.int64))
