"""Optimizers with the update rules of the original TF1 code."""
import math

import keras
import tensorflow as tf

from common.errors import ChallengeError


class TF1Momentum(keras.optimizers.Optimizer):
  """tf.train.MomentumOptimizer: accum = momentum·accum + grad; var -= lr·accum.

  Keras' SGD(momentum) keeps lr·grad in its accumulator instead. The two agree while the
  learning rate is constant; when a piecewise schedule drops it, TF1 scales the whole
  accumulated velocity by the new rate at once, Keras lets the old one decay. The original
  challenge's schedule drops twice, so we keep TF1's rule.
  """

  def __init__(self, learning_rate, momentum, name='TF1Momentum', **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum = momentum

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    self.accumulators = [self.add_variable_from_reference(v, 'accumulator') for v in var_list]

  def update_step(self, gradient, variable, learning_rate):
    accumulator = self.accumulators[self._get_variable_index(variable)]
    learning_rate = tf.cast(learning_rate, variable.dtype)
    self.assign(accumulator, self.momentum * accumulator + tf.cast(gradient, variable.dtype))
    self.assign_sub(variable, learning_rate * accumulator)

  def get_config(self):
    return {**super().get_config(), 'momentum': self.momentum}


def piecewise_schedule(step_size_schedule, key='step_size_schedule'):
  """[[0, lr0], [b1, lr1], ...] -> the rate lr_i for steps in (b_i, b_{i+1}], as
  tf.train.piecewise_constant did; a malformed list is an error naming `key`."""
  def malformed(why):
    return ChallengeError(f'config key "{key}" {why}; expected [[0, rate], [step, rate], '
                          f'...] with increasing steps, e.g. [[0, 0.1], [40000, 0.01]]; '
                          f'found {step_size_schedule}')
  pairs = step_size_schedule
  if not pairs or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
    raise malformed('must be a non-empty list of [step, rate] pairs')
  steps, rates = [p[0] for p in pairs], [p[1] for p in pairs]
  if not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
    raise malformed('must have integer steps')
  if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < math.inf
             for r in rates):
    raise malformed('must have finite, non-negative rates')
  if steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:])):
    raise malformed('must start at step 0 and have increasing steps')
  rates = [float(r) for r in rates]
  if len(pairs) == 1:
    return rates[0]
  return keras.optimizers.schedules.PiecewiseConstantDecay(steps[1:], rates)


@keras.saving.register_keras_serializable('madry_tf2')
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
  """The one-cycle rate of fast adversarial training: linear from 0 at step 0 to `peak` at
  `warmup_fraction` of `total_steps`, then linear to 0 at the last step. A function of the
  optimizer's step alone, so a resumed run continues exactly."""

  def __init__(self, peak, total_steps, warmup_fraction):
    self.peak, self.total_steps, self.warmup_fraction = peak, total_steps, warmup_fraction

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warmup = max(self.warmup_fraction * self.total_steps, 1e-9)
    rest = max(self.total_steps - warmup, 1e-9)
    rate = tf.minimum(step / warmup, (self.total_steps - step) / rest)
    return self.peak * tf.clip_by_value(rate, 0.0, 1.0)

  def get_config(self):
    return {'peak': self.peak, 'total_steps': self.total_steps,
            'warmup_fraction': self.warmup_fraction}


LR_SCHEDULES = {
    'piecewise': 'the original: piecewise constant (MNIST: learning_rate throughout; CIFAR-10: '
                 'step_size_schedule)',
    'one_cycle': 'linear from 0 to learning_rate at warmup_fraction of the run, then linear to '
                 '0 at max_num_training_steps (fast training)',
}


def learning_rate(config, piecewise):
  """The rate the config's lr_schedule names; `piecewise`: the challenge's original one."""
  if config.lr_schedule not in LR_SCHEDULES:
    raise ChallengeError(f'unknown lr_schedule "{config.lr_schedule}"; use one of: '
                         + ', '.join(LR_SCHEDULES))
  if config.lr_schedule == 'one_cycle':
    if not 0 < config.warmup_fraction < 1:
      raise ChallengeError('config key "warmup_fraction" must lie between 0 and 1 (a fraction '
                           f'of the run), found {config.warmup_fraction}')
    return OneCycle(config.learning_rate, config.max_num_training_steps,
                    config.warmup_fraction)
  return piecewise
