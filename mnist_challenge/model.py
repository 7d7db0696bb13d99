"""The MNIST challenge's network (the TF tutorial's CNN), as a Keras model returning logits.

Input (None, 784) floats in [0, 1]. Kernels truncated-normal(stddev 0.1), biases 0.1,
as the original; 3,274,634 parameters. Flatten in NHWC order equals the original's
reshape, so its fc1 kernel maps over unchanged. Max pooling is Keras' layer, computed by
`common.pooling` (same values and gradient) where XLA compiles it under op determinism.
`portable=True` builds the same network from Keras' own layers only (Keras' max pooling:
the same function), for a `.keras` file that loads where this project is not installed.
"""
import keras

from common import pooling
from common.errors import ChallengeError

INPUT_SHAPE = (784,)


def build_model(config=None, portable=False) -> keras.Model:
  """The network config.model names (default: the challenge's own); `portable`: from Keras'
  own layers only (for export), computing the same function."""
  name = getattr(config, 'model', 'madry') if config is not None else 'madry'
  try:
    build = ARCHITECTURES[name]
  except KeyError:
    raise ChallengeError(f'unknown model "{name}"; use one of: '
                         + ', '.join(ARCHITECTURES)) from None
  return build(portable=portable)


def build_madry(portable=False) -> keras.Model:
  """The challenge's network."""
  layers = keras.layers
  max_pooling = layers.MaxPooling2D if portable else pooling.MaxPooling2D

  def init():
    return dict(kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.1),
                bias_initializer=keras.initializers.Constant(0.1))

  return keras.Sequential([
      keras.Input(INPUT_SHAPE),
      layers.Reshape((28, 28, 1), name='x_image'),
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


def build_tramer_b(portable=False) -> keras.Model:
  """Architecture B of Tramèr et al. 2017, "Ensemble Adversarial Training", appendix B: a
  transfer-attack source of the paper's Table 1. Padding as their reference code
  (ftramer/ensemble-adv-training, mnist.py modelB): same, valid, valid; Keras' default
  initialisers there and here (Glorot uniform, zero biases). 28 -> 14 -> 5 -> 1 pixels.
  Keras' own layers only: portable as it is."""
  del portable
  layers = keras.layers
  return keras.Sequential([
      keras.Input(INPUT_SHAPE),
      layers.Reshape((28, 28, 1), name='x_image'),
      layers.Dropout(0.2, name='dropout_input'),
      layers.Conv2D(64, 8, strides=2, padding='same', activation='relu', name='conv1'),
      layers.Conv2D(128, 6, strides=2, padding='valid', activation='relu', name='conv2'),
      layers.Conv2D(128, 5, strides=1, padding='valid', activation='relu', name='conv3'),
      layers.Dropout(0.5, name='dropout'),
      layers.Flatten(name='flatten'),
      layers.Dense(10, name='logits', dtype='float32'),
  ], name='tramer_b_model')


# {config "model": builder}
ARCHITECTURES = {'madry': build_madry, 'tramer_b': build_tramer_b}


def tf1_variables(model) -> dict:
  """{name in the original's TF1 checkpoints: our variable}. The original created eight
  unnamed tf.Variables, so TF1 named them Variable, Variable_1, ... in creation order."""
  ours = [getattr(model.get_layer(layer), weight)
          for layer in ('conv1', 'conv2', 'fc1', 'logits') for weight in ('kernel', 'bias')]
  return {('Variable' if i == 0 else f'Variable_{i}'): v for i, v in enumerate(ours)}
