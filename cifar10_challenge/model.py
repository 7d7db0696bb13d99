"""The CIFAR-10 challenge's network: the original's ResNet (from the TF models repo), Keras.

Input (None, 32, 32, 3) float pixels in [0, 255], standardised per image inside the model.
Init conv 3x3x16; three stages of 5 pre-activation residual units (first-unit strides 1, 2,
2); BN, leaky ReLU(0.1), global average pool, dense 10. With `filters` [16, 160, 320, 640]
(the default) this is the original's "w28-10"-style wide network (45,901,914 trainable
parameters); [16, 16, 32, 64] is its non-wide variant (464,154).

Initialisers as the original: conv kernels N(0, sqrt(2 / (k·k·out_filters))), no conv
biases; dense kernel uniform unit scaling (= VarianceScaling(1, fan_in, uniform)), bias 0.
BN momentum 0.9 (the original's decay), epsilon 0.001, centre and scale.

Layer names follow the original's variable scopes with "/" as "_" (e.g. unit_2_0_conv1 is
unit_2_0/sub1/conv1), so that their weights can be mapped one to one. The kernels named
`kernel` are the original's "DW" variables, the ones weight decay applies to.

`portable=True` builds the same network from Keras' own layers and keras.ops only (the
standardisation and the channel padding as ops, Keras' batch norm), for a `.keras` file
that loads where this project is not installed; in inference mode it computes the same
logits bit for bit (tests/test_model_files.py).
"""
import math

import keras
import tensorflow as tf

from common import defences
from common.errors import ChallengeError

INPUT_SHAPE = (32, 32, 3)
WIDE_FILTERS = (16, 160, 320, 640)
STRIDES = (1, 2, 2)
ACTIVATE_BEFORE_RESIDUAL = (True, False, False)
UNITS_PER_STAGE = 5
LEAKINESS = 0.1
NUM_CLASSES = 10


# tf.image.per_image_standardization's floor on the deviation, 1/sqrt(32·32·3), as the
# float32 TensorFlow computes it.
MIN_STDDEV = float(tf.math.rsqrt(float(math.prod(INPUT_SHAPE))))


class PerImageStandardization(keras.layers.Layer):
  """tf.image.per_image_standardization of each image (the op reduces per image)."""

  def call(self, images):
    return tf.image.per_image_standardization(images)


class PadChannels(keras.layers.Layer):
  """Zero-pads the channel axis by `padding` on each side (the shortcut of a unit that
  widens the network)."""

  def __init__(self, padding, **kwargs):
    super().__init__(**kwargs)
    self.padding = padding

  def call(self, x):
    return tf.pad(x, [[0, 0], [0, 0], [0, 0], [self.padding, self.padding]])

  def get_config(self):
    return {**super().get_config(), 'padding': self.padding}


def check_filters(filters):
  """Raises unless `filters` is four positive integers whose widenings are even, widening
  at every strided stage: as the original, a unit pools its shortcut only when it widens."""
  ok = (isinstance(filters, (list, tuple)) and len(filters) == 4
        and all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters))
  if ok:
    ok = all((b - a) % 2 == 0 and (b > a or (b == a and stride == 1))
             for a, b, stride in zip(filters, filters[1:], STRIDES))
  if not ok:
    raise ChallengeError(
        f'config key "filters" must be four positive integers, each step even (the shortcut '
        f'pads channels equally on both sides), the second equal to the first or larger, the '
        f'third and fourth each larger than the one before (the stages that halve the image '
        f'pool the shortcut only when they widen), e.g. {list(WIDE_FILTERS)} (wide) or '
        f'[16, 16, 32, 64]; found {filters}')
  return tuple(filters)


def _conv(filters, stride, name):
  n = 3 * 3 * filters
  return keras.layers.Conv2D(
      filters, 3, strides=stride, padding='same', use_bias=False, name=name,
      kernel_initializer=keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / n)))


class FusedBatchNorm(keras.layers.BatchNormalization):
  """Keras' BatchNormalization (same variables, so checkpoints and the TF1 name map are
  unchanged) computed with TF's fused kernel, as the original's tf.contrib batch_norm.

  Keras 3 computes batch statistics with separate moments and normalisation ops, in
  float32 even under a bfloat16 policy; in train mode (every step of the training-time
  attack) that made a non-wide training step 1.4x slower than the same network in raw TF
  ops (benchmarks/speed.py). The fused kernel takes bfloat16/float16 inputs directly, with
  float32 statistics. Like TF1's fused batch norm it feeds the moving variance the
  unbiased batch variance (x n/(n-1)), i.e. the original's moving averages exactly.

  Inference mode (the evaluation attacks differentiate through it) is Keras' own arithmetic
  (an affine map per channel): the fused kernel rounds the last bit differently, which would
  keep an exported model (Keras' batch norm) from giving these logits bit for bit;
  TensorFlow has no deterministic GPU kernel for the fused op's gradient when training is
  off; and on this project's CPU it was not slower (one probe, run beside another process:
  8.4 s against 9.8 s for ten PGD gradients of the non-wide network at batch 128, medians
  of 8 interleaved).
  """

  def call(self, inputs, training=None, mask=None):
    if (not (training and self.trainable) or mask is not None or len(inputs.shape) != 4
        or self.axis not in (-1, 3)):
      return super().call(inputs, training=training, mask=mask)
    gamma, beta = self.gamma.value, self.beta.value  # float32 under every policy
    outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
        x=inputs, scale=gamma, offset=beta, mean=tf.constant([], tf.float32),
        variance=tf.constant([], tf.float32), epsilon=self.epsilon, is_training=True)
    # Outside the gradient: the averages are state, not part of the loss.
    mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
    self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
    self.moving_variance.assign(
        self.moving_variance * self.momentum + variance * (1 - self.momentum))
    return tf.cast(outputs, self.compute_dtype)


def _batch_norm(name, portable):
  kind = keras.layers.BatchNormalization if portable else FusedBatchNorm
  return kind(momentum=0.9, epsilon=0.001, name=name)


def _standardize(images, portable):
  """Each image to zero mean and unit deviation (the deviation at least MIN_STDDEV)."""
  if not portable:
    # Under a mixed-precision policy the standardisation (a mean and deviation over 3,072
    # pixels) stays float32 (common.precision).
    return PerImageStandardization(name='standardize', dtype='float32')(images)
  ops = keras.ops  # the same reductions and arithmetic as tf.image.per_image_standardization
  mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
  deviation = ops.maximum(ops.std(images, axis=(1, 2, 3), keepdims=True), MIN_STDDEV)
  return ops.divide(ops.subtract(images, mean), deviation)


def _pad_channels(x, padding, name, portable):
  if portable:
    return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [padding, padding]])
  return PadChannels(padding, name=name)(x)


def _activation(x, name):
  return keras.layers.LeakyReLU(negative_slope=LEAKINESS, name=name)(x)


def _residual_unit(x, in_filters, out_filters, stride, activate_before_residual, name,
                   portable):
  """The original's `_residual`: pre-activation unit with 2 convolutions."""
  activated = _activation(_batch_norm(f'{name}_init_bn', portable)(x), f'{name}_init_relu')
  # Shared activation: the shortcut starts after BN + ReLU; otherwise before them.
  shortcut = activated if activate_before_residual else x
  y = _conv(out_filters, stride, f'{name}_conv1')(activated)
  y = _activation(_batch_norm(f'{name}_bn2', portable)(y), f'{name}_relu2')
  y = _conv(out_filters, 1, f'{name}_conv2')(y)
  if in_filters != out_filters:
    shortcut = keras.layers.AveragePooling2D(stride, stride, padding='valid',
                                             name=f'{name}_shortcut_pool')(shortcut)
    shortcut = _pad_channels(shortcut, (out_filters - in_filters) // 2,
                             f'{name}_shortcut_pad', portable)
  return keras.layers.Add(name=f'{name}_add')([y, shortcut])


def build_model(config=None, filters=None, portable=False) -> keras.Model:
  """The network with config.filters (or `filters`; default: the wide one); `portable`:
  from Keras' own layers and ops only (for export), computing the same function."""
  filters = check_filters(filters or (config.filters if config is not None else WIDE_FILTERS))
  # Behind a thermometer defence (config.defence) the network takes the codes: 3·levels
  # channels.
  channels = defences.input_channels(config, INPUT_SHAPE[-1]) if config is not None else 3
  inputs = keras.Input(INPUT_SHAPE[:2] + (channels,), name='x_input')
  x = _standardize(inputs, portable)
  x = _conv(filters[0], 1, 'init_conv')(x)
  for stage in range(3):
    for unit in range(UNITS_PER_STAGE):
      first = unit == 0
      x = _residual_unit(
          x, filters[stage] if first else filters[stage + 1], filters[stage + 1],
          STRIDES[stage] if first else 1, first and ACTIVATE_BEFORE_RESIDUAL[stage],
          name=f'unit_{stage + 1}_{unit}', portable=portable)
  x = _activation(_batch_norm('final_bn', portable)(x), 'final_relu')
  x = keras.layers.GlobalAveragePooling2D(name='global_avg_pool')(x)
  logits = keras.layers.Dense(
      NUM_CLASSES, name='logit', dtype='float32',
      kernel_initializer=keras.initializers.VarianceScaling(1.0, 'fan_in', 'uniform'),
      bias_initializer='zeros')(x)
  return keras.Model(inputs, logits, name='cifar10_challenge_model')


def decay_kernels(model):
  """The original's "DW" variables: every conv kernel and the dense kernel."""
  return [v for v in model.trainable_variables if v.name == 'kernel']


def weight_decay_loss(model):
  """Σ l2_loss(w) = Σ Σ w² / 2 over decay_kernels, as the original's `_decay`."""
  return tf.add_n([tf.nn.l2_loss(v) for v in decay_kernels(model)])


def tf1_variables(model) -> dict:
  """{name in the original's TF1 checkpoints: our variable}. The original's batch norm
  (tf.contrib.layers.batch_norm) keeps its variables in a `BatchNorm` scope."""
  names = {'input/init_conv/DW': model.get_layer('init_conv').kernel}

  def batch_norm(layer, scope):
    layer = model.get_layer(layer)
    for name in ('beta', 'gamma', 'moving_mean', 'moving_variance'):
      names[f'{scope}/BatchNorm/{name}'] = getattr(layer, name)

  for stage in range(3):
    for unit in range(UNITS_PER_STAGE):
      scope = f'unit_{stage + 1}_{unit}'
      shared = unit == 0 and ACTIVATE_BEFORE_RESIDUAL[stage]
      batch_norm(f'{scope}_init_bn',
                 f'{scope}/{"shared_activation" if shared else "residual_only_activation"}')
      names[f'{scope}/sub1/conv1/DW'] = model.get_layer(f'{scope}_conv1').kernel
      batch_norm(f'{scope}_bn2', f'{scope}/sub2')
      names[f'{scope}/sub2/conv2/DW'] = model.get_layer(f'{scope}_conv2').kernel
  batch_norm('final_bn', 'unit_last')
  names['logit/DW'] = model.get_layer('logit').kernel
  names['logit/biases'] = model.get_layer('logit').bias
  return names
