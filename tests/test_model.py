"""The MNIST network: architecture, parameter count, initialisers."""
import numpy as np
import tensorflow as tf

from mnist_challenge.model import build_model


def test_parameter_count_and_output_shape():
  model = build_model()
  assert model.count_params() == 3274634
  out = model(np.zeros((7, 784), np.float32))
  assert out.shape == (7, 10) and out.dtype == tf.float32


def test_layer_shapes_match_the_original_variables():
  shapes = [tuple(v.shape) for v in build_model().trainable_variables]
  assert shapes == [(5, 5, 1, 32), (32,), (5, 5, 32, 64), (64,), (3136, 1024), (1024,),
                    (1024, 10), (10,)]


def test_initialisers():
  tf.keras.utils.set_random_seed(0)
  kernel = build_model().get_layer('fc1').kernel.numpy()
  # truncated_normal(stddev=0.1): cut at 2 stddev, so |w| <= 0.2 and std = 0.1 * 0.8796.
  assert np.abs(kernel).max() <= 0.2
  assert abs(kernel.std() - 0.08796) < 0.001 and abs(kernel.mean()) < 0.001
  for variable in build_model().trainable_variables[1::2]:
    np.testing.assert_array_equal(variable.numpy(), np.float32(0.1))


def test_flatten_order_is_the_originals_reshape():
  # The original reshaped the NHWC pool output [-1, 7, 7, 64] to [-1, 3136]; Flatten must
  # agree or original fc1 weights would be scrambled.
  model = build_model()
  pooled = tf.keras.Model(model.inputs[0], model.get_layer('pool2').output)
  flat = tf.keras.Model(model.inputs[0], model.get_layer('flatten').output)
  x = np.random.default_rng(0).uniform(0, 1, (2, 784)).astype(np.float32)
  np.testing.assert_array_equal(flat(x), tf.reshape(pooled(x), [-1, 7 * 7 * 64]))
