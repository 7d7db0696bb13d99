"""The MNIST challenge's network (the TF tutorial's CNN), as a Keras model returning logits.

Input (None, 784) floats in [0, 1]. Kernels truncated-normal(stddev 0.1), biases 0.1,
as the original; 3,274,634 parameters. Flatten in NHWC order equals the original's
reshape, so its fc1 kernel maps over unchanged. Max pooling is Keras' layer, computed by
`common.pooling` (same values and gradient) where XLA compiles it under op determinism.
`portable=True` builds the same network from Keras' own layers only (Keras' max pooling:
the same function), for a `.keras` file that loads where this project is not installed.
"""
import keras

from common import defences, ode, pooling
from common.errors import ChallengeError

INPUT_SHAPE = (784,)


def build_model(config=None, portable=False) -> keras.Model:
  """The network config.model names (default: the challenge's own); `portable`: from Keras'
  own layers only (for export), computing the same function. Behind a thermometer defence
  (config.defence) it takes the codes: 784·levels values per image, levels channels."""
  name = getattr(config, 'model', 'madry') if config is not None else 'madry'
  try:
    build = ARCHITECTURES[name]
  except KeyError:
    raise ChallengeError(f'unknown model "{name}"; use one of: '
                         + ', '.join(ARCHITECTURES)) from None
  channels = defences.input_channels(config, 1) if config is not None else 1
  return build(portable=portable, channels=channels)


def _image_input(channels):
  """The input (flat rows of 784·channels values) and its reshape to 28 x 28 x channels."""
  return (keras.Input((INPUT_SHAPE[0] * channels,)),
          keras.layers.Reshape((28, 28, channels), name='x_image'))


def build_madry(portable=False, channels=1) -> keras.Model:
  """The challenge's network."""
  layers = keras.layers
  max_pooling = layers.MaxPooling2D if portable else pooling.MaxPooling2D

  def init():
    return dict(kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.1),
                bias_initializer=keras.initializers.Constant(0.1))

  return keras.Sequential([
      *_image_input(channels),
      layers.Conv2D(32, 5, padding='same', activation='relu', name='conv1', **init()),
      max_pooling(2, 2, padding='same', name='pool1'),
      layers.Conv2D(64, 5, padding='same', activation='relu', name='conv2', **init()),
      max_pooling(2, 2, padding='same', name='pool2'),
      layers.Flatten(name='flatten'),
      layers.Dense(1024, activation='relu', name='fc1', **init()),
      # float32 under a mixed-precision policy too: logits feed the losses and the
      # attack's margin (common.precision).
      layers.Dense(10, name='logits', dtype='float32', **init()),
  ], name='mnist_challenge_model')


def build_tramer_b(portable=False, channels=1) -> keras.Model:
  """Architecture B of Tramèr et al. 2017, "Ensemble Adversarial Training", appendix B: a
  transfer-attack source of the paper's Table 1. Padding as their reference code
  (ftramer/ensemble-adv-training, mnist.py modelB): same, valid, valid; Keras' default
  initialisers there and here (Glorot uniform, zero biases). 28 -> 14 -> 5 -> 1 pixels.
  Keras' own layers only: portable as it is."""
  del portable
  layers = keras.layers
  return keras.Sequential([
      *_image_input(channels),
      layers.Dropout(0.2, name='dropout_input'),
      layers.Conv2D(64, 8, strides=2, padding='same', activation='relu', name='conv1'),
      layers.Conv2D(128, 6, strides=2, padding='valid', activation='relu', name='conv2'),
      layers.Conv2D(128, 5, strides=1, padding='valid', activation='relu', name='conv3'),
      layers.Dropout(0.5, name='dropout'),
      layers.Flatten(name='flatten'),
      layers.Dense(10, name='logits', dtype='float32'),
  ], name='tramer_b_model')


def build_small_cnn(portable=False, channels=1) -> keras.Model:
  """The "Small CNN" of TRADES (Zhang et al. 2019; yaodongyu/TRADES, models/small_cnn.py),
  which YOPO's MNIST experiments train too: conv 32 3x3, conv 32 3x3, max pool 2, conv 64
  3x3, conv 64 3x3, max pool 2 (valid padding: 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4), dense
  200, dropout 0.5, dense 200, dense 10, ReLUs; 312,202 parameters. Initialisers as the
  authors' PyTorch code: conv kernels He normal, not truncated (kaiming_normal_: std
  sqrt(2 / fan_in)), conv biases 0; fc1 and fc2 PyTorch's Linear default (kernel and bias
  uniform in ±1/sqrt(fan_in)); fc3 kernel and bias 0. Flatten in NHWC order (theirs: NCHW,
  the same network up to a fixed permutation of fc1's rows). Dropout is on in training mode
  only, so the attacks (inference mode) see the network TRADES's model.eval() gives."""
  layers = keras.layers
  max_pooling = layers.MaxPooling2D if portable else pooling.MaxPooling2D

  def conv(filters, name):
    return layers.Conv2D(
        filters, 3, padding='valid', activation='relu', name=name,
        kernel_initializer=keras.initializers.VarianceScaling(2.0, 'fan_in',
                                                              'untruncated_normal'),
        bias_initializer='zeros')

  def linear(units, fan_in, name):
    bound = 1.0 / fan_in ** 0.5
    return layers.Dense(
        units, activation='relu', name=name,
        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, 'fan_in', 'uniform'),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound))

  return keras.Sequential([
      *_image_input(channels),
      conv(32, 'conv1'), conv(32, 'conv2'), max_pooling(2, 2, name='maxpool1'),
      conv(64, 'conv3'), conv(64, 'conv4'), max_pooling(2, 2, name='maxpool2'),
      layers.Flatten(name='flatten'),
      linear(200, 64 * 4 * 4, 'fc1'),
      layers.Dropout(0.5, name='drop'),
      linear(200, 200, 'fc2'),
      layers.Dense(10, name='logits', dtype='float32', kernel_initializer='zeros',
                   bias_initializer='zeros'),
  ], name='small_cnn_model')


def _ode_network(name, time_dependent, step_size, steady_state_weight, portable, channels):
  """The MNIST networks of Yan et al.'s TisODE code (mnist/networks.py): downsampling (conv
  64 3x3 valid, group norm 32, ReLU; conv 64 4x4 stride 2 padding 1, group norm, ReLU: 28 ->
  26 -> 13), the ODE block (common.ode), global average pooling, dense 10; PyTorch's default
  initialisers, as theirs; group norm's ε 1e-5 (PyTorch's; Keras' is 1e-3)."""
  if portable:
    raise ChallengeError(f'the {name} network solves an ODE in a layer of this project '
                         '(common/ode.py); it has no form in Keras\' own layers to export: '
                         'use the checkpoint with this project\'s commands')
  layers = keras.layers

  def conv(filters, size, fan_in, layer_name, **kwargs):
    kernel, bias = ode.torch_default(fan_in)
    return layers.Conv2D(filters, size, name=layer_name, kernel_initializer=kernel,
                         bias_initializer=bias, **kwargs)

  dense_kernel, dense_bias = ode.torch_default(64)
  return keras.Sequential([
      *_image_input(channels),
      conv(64, 3, 9 * channels, 'down_conv1'),
      layers.GroupNormalization(32, epsilon=1e-5, name='down_norm1'), layers.ReLU(),
      layers.ZeroPadding2D(1), conv(64, 4, 16 * 64, 'down_conv2', strides=2),
      layers.GroupNormalization(32, epsilon=1e-5, name='down_norm2'), layers.ReLU(),
      ode.ODEBlock(64, time_dependent, step_size, steady_state_weight=steady_state_weight,
                   name='ode'),
      layers.GlobalAveragePooling2D(name='pool'),
      layers.Dense(10, name='logits', dtype='float32', kernel_initializer=dense_kernel,
                   bias_initializer=dense_bias),
  ], name=f'{name}_model')


def build_odenet(portable=False, channels=1) -> keras.Model:
  """The ODENet of Yan et al. (Chen et al.'s time-dependent field): Euler steps of 0.1 over
  [0, 1]; 142,410 parameters (the authors' count)."""
  return _ode_network('odenet', True, 0.1, 0.0, portable, channels)


TISODE_STEADY_STATE_WEIGHT = 0.01  # the authors' main_tisode_gaus.py


def build_tisode(portable=False, channels=1) -> keras.Model:
  """TisODE: the time-invariant field, Euler steps of 0.05 over [0, 1], and in training the
  steady-state term (0.01 · the mean of ∫_0.9^1.5 |f| dt); 141,130 parameters."""
  return _ode_network('tisode', False, 0.05, TISODE_STEADY_STATE_WEIGHT, portable, channels)


# {config "model": builder}
ARCHITECTURES = {'madry': build_madry, 'tramer_b': build_tramer_b, 'small_cnn': build_small_cnn,
                 'odenet': build_odenet, 'tisode': build_tisode}


def tf1_variables(model) -> dict:
  """{name in the original's TF1 checkpoints: our variable}. The original created eight
  unnamed tf.Variables, so TF1 named them Variable, Variable_1, ... in creation order."""
  if model.name != 'mnist_challenge_model':
    raise ChallengeError(f'a TF1 checkpoint holds the challenge\'s own network, not '
                         f'{model.name}: use config model "madry"')
  ours = [getattr(model.get_layer(layer), weight)
          for layer in ('conv1', 'conv2', 'fc1', 'logits') for weight in ('kernel', 'bias')]
  return {('Variable' if i == 0 else f'Variable_{i}'): v for i, v in enumerate(ours)}
