"""Mixed precision: running a float32 model's weights in bfloat16 or float16.

A model is always built, trained, checkpointed and scored in float32 (its variables are
float32 under every Keras policy anyway). Computing in another precision goes through a
*twin*: the same architecture built under that Keras dtype policy, called with
`stateless_call` on the float32 model's current values, which each layer casts to its
compute dtype. So one set of weights serves a bfloat16 attack and a float32 evaluation
in the same compiled step, a checkpoint does not depend on the precision that wrote it,
and a run may resume in another precision.

What stays float32 whatever the policy: the inputs an attack perturbs (the twin casts its
input on entry, the input gradient comes back as float32), hence the random start, the
sign step and both clips; the logits (each model's output layer is float32); the losses
(`common.losses` casts logits to float32); the weights and the optimizer's arithmetic.
"""
import contextlib
from typing import Callable

import keras
import tensorflow as tf

from common.config import Key
from common.errors import ChallengeError

# {name: what it does}; the names are Keras dtype policies.
PRECISIONS = {
    'float32': 'float32 throughout, as the original (IEEE float32: TF32 off on every device)',
    'tf32': 'float32 weights and arithmetic, but matrix multiplications and convolutions in '
            'TF32 (10-bit mantissa) on NVIDIA Ampere and newer GPUs; the same as float32 '
            'elsewhere',
    'mixed_bfloat16': 'bfloat16 compute, float32 weights, inputs, logits and losses '
                      '(CPUs with AVX-512 BF16 or AMX, TPUs, recent GPUs)',
    'mixed_float16': 'float16 compute with loss scaling, float32 weights, inputs, logits '
                     'and losses (GPUs without bfloat16)',
}

# float16 gradients of a small loss underflow to 0, and sign(0) is no step: the attack
# differentiates its loss times this constant (the sign does not change), and treats a
# gradient that overflows as 0 on that pixel (no step there) rather than a NaN input.
ATTACK_LOSS_SCALE_FLOAT16 = 2.0 ** 10


def _help(role):
  return (f'{role}: ' + '; '.join(f'"{name}": {what}' for name, what in PRECISIONS.items())
          + '; new')


PRECISION_KEYS = (
    Key('precision', str, 'float32',
        help=_help('precision of training (the update and its attack)')),
    Key('eval_precision', str, 'float32',
        help=_help('precision of the attack in eval.py and pgd_attack.py (opt-in; the '
                   'adversarial examples are always scored in float32, and run_attack.py '
                   'always scores in float32)')),
)


def check(precision: str, key: str = 'precision') -> str:
  if precision not in PRECISIONS:
    raise ChallengeError(f'unknown {key} "{precision}"; use one of: ' + ', '.join(PRECISIONS))
  return precision


def computes_in_float32(precision: str) -> bool:
  """float32 and tf32 compute with float32 tensors (tf32 only rounds inside matmuls and
  convolutions, a process-wide switch): their twin is the model itself."""
  return check(precision) in ('float32', 'tf32')


def use_tf32(enabled: bool) -> None:
  """TensorFlow's TF32 switch, process-wide: its matmuls and convolutions on Ampere and newer
  GPUs round their inputs to a 10-bit mantissa when on (TensorFlow's default!). Off, float32
  is IEEE float32 everywhere."""
  tf.config.experimental.enable_tensor_float_32_execution(enabled)


def use(precision: str) -> str:
  """Sets the process for computing in `precision` (TF32 on only for 'tf32')."""
  use_tf32(check(precision) == 'tf32')
  return precision


@contextlib.contextmanager
def policy(precision: str):
  """Layers built inside use `precision` as their dtype policy (Keras' is global)."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy('float32' if computes_in_float32(precision) else
                                check(precision))
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


class Twin:
  """`model` (float32) computed in `precision`; `build()` must build the same architecture.

  In float32 the twin is the model itself. Use inside a `tf.function`: the model's
  variables are read at each call, so reloaded weights are seen.
  """

  def __init__(self, model: keras.Model, build: Callable[[], keras.Model], precision: str):
    self.model, self.precision = model, check(precision)
    if computes_in_float32(precision):
      self._runner = model
    else:
      with policy(precision):
        self._runner = build()
      if len(self._runner.variables) != len(model.variables):
        raise ValueError('the twin must have the architecture of the model')

  @property
  def runner(self) -> keras.Model:
    """The model that computes (in float32: the model itself), for calls on given values."""
    return self._runner

  @property
  def loss_scale(self):
    """The attack's loss scale (None: no scaling)."""
    return ATTACK_LOSS_SCALE_FLOAT16 if self.precision == 'mixed_float16' else None

  def stateless_call(self, trainable_values, non_trainable_values, x, training,
                     return_losses=False):
    """(logits, new non-trainable values[, the model's own losses (Keras add_loss)]) of the
    model with these values, in precision."""
    return self._runner.stateless_call(trainable_values, non_trainable_values, x,
                                       training=training, return_losses=return_losses)

  def __call__(self, x, training=False):
    """Logits of the model's current weights; in training mode its batch norm state is
    not updated (use `stateless_call` to carry it)."""
    if self._runner is self.model:
      return self.model(x, training=training)
    return self.stateless_call([v.value for v in self.model.trainable_variables],
                               [v.value for v in self.model.non_trainable_variables], x,
                               training)[0]


def training_optimizer(optimizer, precision: str):
  """The optimizer that applies the update: float16 needs dynamic loss scaling (Keras'
  LossScaleOptimizer), the others use `optimizer` itself."""
  if check(precision) == 'mixed_float16':
    return keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def announce_attack_precision(attack_precision: str, log) -> None:
  """Says so when an evaluation's attack is not float32 (it is opt-in)."""
  if attack_precision == 'tf32':
    log('attack precision: tf32 (eval_precision; opt-in, the reference evaluation is '
        'float32); TF32 is a process-wide switch, so the scoring runs in TF32 too')
  elif attack_precision != 'float32':
    log(f'attack precision: {attack_precision} (eval_precision; opt-in, the reference '
        'evaluation is float32); accuracies are scored in float32')
