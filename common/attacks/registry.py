"""Every attack by name, callable one way: the interface the one runner
(`common.attacks.runner`) takes, and through it attack.py, evaluate.py's named rows and
AutoAttack's chain.

An attack is made for a threat model and a budget (`make(name, threat, iterations, ...)`),
then, on a batch:

  attack.draw(x, seed, examples, batch)
      what is random, drawn outside XLA-compiled code: stateless draws from `seed` (an int64
      pair) and each example's index in the whole set (`examples`), or, for Square's
      squares, the batch's number (`batch`); () for deterministic attacks
  attack(model_fn, x, labels, targets, *drawn) -> (x_adv, success)
      plain TF code (the runner compiles it, by XLA where `attack.xla`); success per example
      as the attack judges it (callers judge again with the model and the threat model)

  name      norm          targets                      module (its docstring: the algorithm)
  pgd       the threat's  no                           pgd.py (the config's steps, loss,
                                                       step size and start)
  apgd-ce   the threat's  no                           apgd.py
  apgd-dlr  the threat's  no                           apgd.py, DLR (the rand version's)
  apgd-t    the threat's  always (the caller's)        apgd.py, targeted DLR
  fab-t     the threat's  always                       fab.py
  square    the threat's  no (uses no gradients)       square.py
  cw-l2     ℓ2 (minimum)  when asked (`to_targets`)     cw_l2.py
  cw-linf   ℓ∞ (minimum)  when asked                   cw_linf.py
  cw-l0     ℓ0 (minimum)  when asked                   cw_l0.py

`iterations` 0 is each attack's default: PGD the params' steps, APGD's and FAB's 100,
Square's 5,000 queries, the C&W attacks' (10,000 for ℓ2, 1,000 per constant for ℓ∞ and ℓ0).
The minimum-distance attacks take only the threat model's pixel range (their ε plays no
part); the others stay in its ε-ball. `eot_samples` > 1 (PGD and APGD only): each gradient the
mean over that many passes of a randomised model (common/attacks/eot.py).
"""
import dataclasses
from typing import Optional, Tuple

import tensorflow as tf

from common import losses
from common.attacks import apgd, cw_l0, cw_l2, cw_linf, fab, pgd, square
from common.attacks.threat import ThreatModel
from common.errors import ChallengeError


class Attack:
  name = ''
  norm: Optional[str] = None  # a minimum-distance attack's own norm; None: the threat's ball
  targeted = False  # always towards `targets` (apgd-t, fab-t)
  can_target = False  # towards `targets` when made with to_targets (the C&W attacks)
  uses_gradients = True
  xla = True  # may be XLA-compiled (Square's thousands of short loops: no)
  averages_draws = False  # takes eot_samples
  default_iterations = 0

  def __init__(self, threat: ThreatModel, iterations: int = 0,
               image_shape: Optional[Tuple[int, int, int]] = None, to_targets: bool = False,
               eot_samples: int = 1):
    if to_targets and not (self.targeted or self.can_target):
      raise ChallengeError(f'{self.name} has no targeted form; the targeted attacks: '
                           + ', '.join(n for n, a in ATTACKS.items()
                                       if a.targeted or a.can_target))
    if eot_samples > 1 and not self.averages_draws:
      raise ChallengeError(f'{self.name} takes one pass per gradient: eot_samples '
                           f'{eot_samples} applies to ' + ', '.join(
                               n for n, a in ATTACKS.items() if a.averages_draws)
                           + '; set eot_samples 1 for it')
    self.eot_samples = eot_samples
    self.threat, self.image_shape = threat, image_shape
    self.iterations = iterations or self.default_iterations
    self.to_targets = self.targeted or to_targets

  def draw(self, x, seed, examples, batch):
    del x, seed, examples, batch
    return ()

  def __call__(self, model_fn, x, labels, targets, *drawn):
    raise NotImplementedError


def _fooled(model_fn, x_adv, labels):
  return tf.not_equal(tf.argmax(model_fn(x_adv), axis=1), tf.cast(labels, tf.int64))


class PGD(Attack):
  """The config's PGD (`params`: steps, step size, loss, start; ε and norm from it)."""
  name = 'pgd'
  averages_draws = True

  def __init__(self, threat, iterations=0, image_shape=None, to_targets=False, eot_samples=1,
               params: Optional[pgd.PGDParams] = None):
    if params is None:
      raise ChallengeError('pgd needs its PGDParams (the config\'s steps and step size)')
    super().__init__(threat, iterations, image_shape, to_targets, eot_samples)
    self.params = dataclasses.replace(
        params, num_steps=self.iterations or params.num_steps,
        eot_samples=eot_samples if eot_samples > 1 else params.eot_samples)

  def draw(self, x, seed, examples, batch):
    return (pgd.starting_points(x, self.params, seed, examples=examples)[0],)

  def __call__(self, model_fn, x, labels, targets, start):
    x_adv = pgd.pgd(model_fn, x, labels, self.params, start=start)
    return x_adv, _fooled(model_fn, x_adv, labels)


class APGD(Attack):
  """APGD on the cross-entropy (apgd-ce)."""
  name = 'apgd-ce'
  averages_draws = True
  default_iterations = 100

  def draw(self, x, seed, examples, batch):
    return (apgd.boundary_start(x, self.threat, seed, examples),)

  def loss(self, targets):
    del targets
    return losses.xent

  def __call__(self, model_fn, x, labels, targets, start):
    return apgd.apgd(model_fn, x, labels, self.threat, self.iterations, self.loss(targets),
                     start, eot_samples=self.eot_samples)


class APGDDLR(APGD):
  """APGD on the (untargeted) DLR loss (apgd-dlr: the reference's rand and plus versions)."""
  name = 'apgd-dlr'

  def loss(self, targets):
    del targets
    return apgd.dlr


class APGDTargeted(APGD):
  """APGD on the targeted DLR loss towards `targets` (apgd-t)."""
  name = 'apgd-t'
  targeted = True

  def loss(self, targets):
    return apgd.targeted_dlr(targets)


class FABTargeted(Attack):
  name = 'fab-t'
  targeted = True
  default_iterations = 100

  def __call__(self, model_fn, x, labels, targets):
    return fab.fab_targeted(model_fn, x, labels, targets, self.threat, self.iterations)


class Square(Attack):
  name = 'square'
  uses_gradients = False
  xla = False
  default_iterations = 5000  # queries

  def draw(self, x, seed, examples, batch):
    return (tf.stack([seed[0], tf.cast(batch, tf.int64)]),)  # its squares: per batch

  def __call__(self, model_fn, x, labels, targets, seed):
    return square.square(model_fn, x, labels, self.threat, self.image_shape, self.iterations,
                         seed)


class CarliniWagner(Attack):
  can_target = True

  def __call__(self, model_fn, x, labels, targets):
    budget = {'max_iterations': self.iterations} if self.iterations else {}
    return self.solve(model_fn, x, labels, targets if self.to_targets else None, budget)


class CWL2(CarliniWagner):
  name, norm = 'cw-l2', 'l2'

  def solve(self, model_fn, x, labels, targets, budget):
    return cw_l2.cw_l2(model_fn, x, labels, self.threat, targets, **budget)


class CWLinf(CarliniWagner):
  name, norm = 'cw-linf', 'linf'

  def solve(self, model_fn, x, labels, targets, budget):
    return cw_linf.cw_linf(model_fn, x, labels, self.threat, targets, **budget)


class CWL0(CarliniWagner):
  name, norm = 'cw-l0', 'l0'

  def solve(self, model_fn, x, labels, targets, budget):
    return cw_l0.cw_l0(model_fn, x, labels, self.threat, self.image_shape, targets, **budget)


ATTACKS = {a.name: a for a in (PGD, APGD, APGDDLR, APGDTargeted, FABTargeted, Square, CWL2, CWLinf,
                               CWL0)}
MINIMUM_DISTANCE = tuple(n for n, a in ATTACKS.items() if a.norm is not None)


def make(name: str, threat: ThreatModel, iterations: int = 0, image_shape=None,
         to_targets: bool = False, eot_samples: int = 1, **options) -> Attack:
  """The attack `name` for `threat` and `iterations` (0: its default), each gradient averaged
  over `eot_samples` passes (PGD and APGD); `options`: pgd's params."""
  if name not in ATTACKS:
    raise ChallengeError(f'unknown attack "{name}"; use one of: ' + ', '.join(ATTACKS))
  return ATTACKS[name](threat, iterations, image_shape, to_targets, eot_samples, **options)
