"""The threat model: which inputs an attacker may submit for a natural input x. It is the
ε-ball around x in a norm, intersected with the pixel range [clip_min, clip_max]; every
attack and every check takes its operations from here, so that no other module writes a
projection or a distance:

  project(x, x_nat)            the nearest point of the ball (for ℓ∞ coordinate-wise, for
                               ℓ2 δ scaled down to norm ε), then clipped to the pixel range,
                               in that order (the original's order for ℓ∞)
  shrink(delta)                the same for a perturbation, without the pixel range (the
                               training methods that keep δ, as their authors, do)
  ascent_step(x, grad, size)   the steepest-ascent step of that size in the norm: ℓ∞
                               x + size·sign(grad); ℓ2 x + size·grad/‖grad‖₂
  noise(shape, seed, radius)   a random start's perturbation: ℓ∞ uniform in the box
                               [-radius, radius]; ℓ2 uniform on the sphere of that radius (a
                               normalised Gaussian, as MadryLab's robustness library starts)
  norms(t), normalize(t)       each example's norm (TensorFlow), and t / (‖t‖ + 1e-12), as
                               fra31/auto-attack's attacks normalise steps and starts
  distance(delta)              the norm of each example's perturbation (numpy)
  contains(x, x_nat, tol)      whether each example lies in the ball (distance ≤ ε + tol)
  rounding_tolerance(size)     how far float32 rounding of the pixel range may carry a point
                               of the ball outside it, for examples of `size` pixels

Norms: 'linf' (the original challenges') and 'l2'. The ℓ∞ operations are the ones the
project always computed, op for op, so ℓ∞ results are unchanged bit for bit.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from common.errors import ChallengeError

NORMS = {'linf': 'ℓ∞ (the original challenges\')', 'l2': 'ℓ2'}
# The ℓ2 steps divide by the norm of the gradient (or of the noise) plus this, as MadryLab's
# robustness library does, so that a zero gradient takes no step instead of a NaN one.
_TINY = 1e-10


def check_norm(norm: str) -> str:
  if norm not in NORMS:
    raise ChallengeError(f'unknown norm "{norm}"; use one of: ' + ', '.join(NORMS))
  return norm


def _per_example_norm(t, batched=True):
  """‖t‖₂ of each example (batched: over all but the first axis), shaped to broadcast."""
  axes = list(range(1, len(t.shape))) if batched else list(range(len(t.shape)))
  norm = tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes, keepdims=True))
  return norm


@dataclasses.dataclass(frozen=True)
class ThreatModel:
  norm: str
  epsilon: float
  clip_min: float = 0.0
  clip_max: float = 1.0

  def __post_init__(self):
    check_norm(self.norm)

  # --- in TensorFlow (inside attacks) --------------------------------------------------

  def project(self, x, x_nat, epsilon=None):
    """The ball's nearest point to x (radius `epsilon`, default the model's), then the
    pixel range."""
    epsilon = self.epsilon if epsilon is None else epsilon
    if self.norm == 'linf':
      x = tf.clip_by_value(x, x_nat - epsilon, x_nat + epsilon)
    else:
      delta = x - x_nat
      norm = _per_example_norm(delta)
      scale = tf.minimum(tf.ones_like(norm), epsilon / tf.maximum(norm, _TINY))
      x = x_nat + delta * scale
    return tf.clip_by_value(x, self.clip_min, self.clip_max)

  def shrink(self, delta, epsilon=None):
    """The ball's nearest point to a perturbation δ (radius `epsilon`, default the model's;
    no pixel range): ℓ∞ δ clipped to [-ε, ε], ℓ2 δ scaled down to norm ε if it is longer."""
    epsilon = self.epsilon if epsilon is None else epsilon
    if self.norm == 'linf':
      return tf.clip_by_value(delta, -epsilon, epsilon)
    norm = _per_example_norm(delta)
    return delta * tf.minimum(tf.ones_like(norm), epsilon / tf.maximum(norm, _TINY))

  def ascent_step(self, x, grad, step_size):
    """x moved by `step_size` in the norm's steepest-ascent direction of `grad`."""
    if self.norm == 'linf':
      return x + step_size * tf.sign(grad)
    return x + step_size * grad / (_per_example_norm(grad) + _TINY)

  def noise(self, shape, seed, radius, dtype=tf.float32, batched=True):
    """A random start's perturbation of `shape` (batched: examples along the first axis,
    else one example), stateless from `seed` (None: TF's global generator)."""
    if self.norm == 'linf':
      if seed is None:
        return tf.random.uniform(shape, -radius, radius, dtype=dtype)
      return tf.random.stateless_uniform(shape, seed, -radius, radius, dtype=dtype)
    if seed is None:
      gaussian = tf.random.normal(shape, dtype=dtype)
    else:
      gaussian = tf.random.stateless_normal(shape, seed, dtype=dtype)
    return radius * gaussian / (_per_example_norm(gaussian, batched) + _TINY)

  def norms(self, t, batched=True):
    """‖t‖ of each example (batched: over all but the first axis), shaped to broadcast."""
    if self.norm == 'l2':
      return _per_example_norm(t, batched)
    axes = list(range(1, len(t.shape))) if batched else list(range(len(t.shape)))
    return tf.reduce_max(tf.abs(t), axis=axes, keepdims=True)

  def normalize(self, t):
    """t / (‖t‖ + 1e-12) per example (the reference's `normalize`)."""
    return t / (self.norms(t) + 1e-12)

  # --- in numpy (checks of finished examples) ------------------------------------------

  def distance(self, delta) -> np.ndarray:
    """The norm of each example's perturbation delta = x - x_nat (numpy): ℓ∞ in delta's own
    dtype (a maximum is exact), ℓ2 summed in float64; no copy of delta is made where its
    layout allows (the submission check runs it on chunks of a large file)."""
    flat = np.asarray(delta).reshape(len(delta), -1)
    if not flat.shape[1]:
      return np.zeros(len(flat))
    if self.norm == 'linf':
      return np.maximum(flat.max(axis=1), -flat.min(axis=1))  # max |δ|, without a copy
    flat = flat if flat.dtype == np.float64 else flat.astype(np.float64)
    return np.sqrt(np.einsum('ij,ij->i', flat, flat))

  def contains(self, x, x_nat, tolerance=0.0) -> np.ndarray:
    """Whether each example of x lies within ε (+ tolerance) of x_nat (numpy; the difference
    taken in the arrays' own dtypes)."""
    return self.distance(np.asarray(x) - x_nat) <= self.epsilon + tolerance

  def rounding_tolerance(self, size: int) -> float:
    """The slack a membership check allows a point of the ball computed in float32 on
    examples of `size` pixels: ℓ∞ 1e-6 of the pixel scale (the rounding of x ± ε); ℓ2 that
    per pixel, summed in quadrature at worst (√size times)."""
    per_pixel = 1e-6 * max(1.0, abs(self.clip_max))
    return per_pixel if self.norm == 'linf' else per_pixel * float(np.sqrt(max(size, 1)))

  def describe(self) -> str:
    return f'{"ℓ∞" if self.norm == "linf" else "ℓ2"} ε {self.epsilon:g}'
