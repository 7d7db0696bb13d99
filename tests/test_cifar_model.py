"""The CIFAR-10 network: architecture, initialisers, standardisation, weight decay."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge import model as cifar_model
from cifar10_challenge.challenge import make_training_loss
from common import losses
from common.errors import ChallengeError
from conftest import NON_WIDE


@pytest.fixture(scope='module')
def wide():
  keras.utils.set_random_seed(0)
  return cifar_model.build_model()


@pytest.fixture(scope='module')
def non_wide():
  keras.utils.set_random_seed(1)
  return cifar_model.build_model(filters=NON_WIDE)


def expected_parameters(filters):
  """(trainable, non-trainable) counted from the original's description."""
  convs = 3 * 3 * 3 * filters[0]
  bn_channels = 0
  for stage in range(3):
    for unit in range(5):
      in_filters = filters[stage] if unit == 0 else filters[stage + 1]
      out_filters = filters[stage + 1]
      convs += 9 * in_filters * out_filters + 9 * out_filters * out_filters
      bn_channels += in_filters + out_filters  # init_bn, bn2
  bn_channels += filters[3]  # final_bn
  dense = filters[3] * 10 + 10
  return convs + 2 * bn_channels + dense, 2 * bn_channels


@pytest.mark.parametrize('fixture, filters', [('wide', cifar_model.WIDE_FILTERS),
                                              ('non_wide', NON_WIDE)])
def test_parameter_counts_and_output_shape(fixture, filters, request):
  model = request.getfixturevalue(fixture)
  count = lambda variables: sum(int(np.prod(v.shape)) for v in variables)
  assert (count(model.trainable_variables), count(model.non_trainable_variables)) == (
      expected_parameters(filters))
  assert model(np.zeros((2, 32, 32, 3), np.float32), training=False).shape == (2, 10)
  # 31 conv kernels and the dense kernel are the original's "DW" variables.
  assert len(cifar_model.decay_kernels(model)) == 32


def test_shortcut_pools_then_zero_pads_channels_on_both_sides(non_wide):
  # unit_2_0: 16 -> 32 channels, stride 2, activate_before_residual False: the shortcut
  # is the unit's raw input, average-pooled 2x2 (VALID), padded with 8 zero channels each side.
  unit_input = non_wide.get_layer('unit_2_0_init_bn').input
  shortcut = keras.Model(non_wide.input, [unit_input,
                                           non_wide.get_layer('unit_2_0_shortcut_pad').output])
  x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  before, after = (t.numpy() for t in shortcut(x, training=False))
  assert before.shape == (2, 32, 32, 16) and after.shape == (2, 16, 16, 32)
  pooled = before.reshape(2, 16, 2, 16, 2, 16).mean(axis=(2, 4))
  np.testing.assert_allclose(after[..., 8:24], pooled, rtol=1e-5, atol=1e-5)
  assert not after[..., :8].any() and not after[..., 24:].any()


def test_shortcut_is_shared_with_the_activation_only_where_the_original_shares_it(wide):
  def source(name):
    return wide.get_layer(name).input
  # unit_1_0 (activate_before_residual True): the shortcut starts after BN + leaky ReLU.
  assert source('unit_1_0_shortcut_pool') is wide.get_layer('unit_1_0_init_relu').output
  # unit_2_0 and unit_3_0: before them, from the previous unit's sum.
  assert source('unit_2_0_shortcut_pool') is wide.get_layer('unit_1_4_add').output
  assert source('unit_3_0_shortcut_pool') is wide.get_layer('unit_2_4_add').output
  # Units that keep the width add their raw input.
  assert wide.get_layer('unit_3_2_add').input[1] is wide.get_layer('unit_3_1_add').output


def test_per_image_standardization_inside_the_model(non_wide):
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
  x[2] = 7.0  # a constant image: stddev floor 1/sqrt(3072), as TF's op
  standardized = keras.Model(non_wide.input, non_wide.get_layer('standardize').output)
  flat = x.reshape(3, -1).astype(np.float64)
  expected = (flat - flat.mean(1, keepdims=True)) / np.maximum(
      flat.std(1, keepdims=True), 1 / math.sqrt(3072))
  np.testing.assert_allclose(standardized(x).numpy().reshape(3, -1), expected, atol=1e-4)
  # So the network ignores each image's brightness and contrast.
  np.testing.assert_allclose(non_wide(0.5 * x[:2] + 40.0, training=False),
                             non_wide(x[:2], training=False), rtol=1e-4, atol=1e-4)


def test_initialisers_match_the_original(wide):
  kernel = wide.get_layer('unit_3_1_conv1').kernel.numpy()  # 3x3x640x640
  std = math.sqrt(2.0 / (3 * 3 * 640))
  assert abs(kernel.mean()) < 0.01 * std
  assert kernel.std() == pytest.approx(std, rel=0.01)
  assert np.abs(kernel).max() > 4.5 * std  # a normal, not truncated at 2σ
  assert wide.get_layer('init_conv').kernel.numpy().std() == pytest.approx(
      math.sqrt(2.0 / (9 * 16)), rel=0.15)
  dense = wide.get_layer('logit')
  limit = math.sqrt(3.0 / 640)  # uniform unit scaling, factor 1
  kernel = dense.kernel.numpy()
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
  assert kernel.std() == pytest.approx(limit / math.sqrt(3), rel=0.05)
  assert not dense.bias.numpy().any()
  for layer in wide.layers:
    if isinstance(layer, keras.layers.Conv2D):
      assert not layer.use_bias
    if isinstance(layer, keras.layers.BatchNormalization):
      assert (layer.momentum, layer.epsilon, layer.center, layer.scale) == (0.9, 0.001, True, True)
      assert (layer.gamma.numpy() == 1).all() and not layer.beta.numpy().any()


def test_leaky_relu_slope(non_wide):
  assert {layer.negative_slope for layer in non_wide.layers
          if isinstance(layer, keras.layers.LeakyReLU)} == {0.1}


def test_weight_decay_is_half_the_squared_norm_of_conv_and_dense_kernels():
  keras.utils.set_random_seed(1)
  non_wide = cifar_model.build_model(filters=NON_WIDE)  # its own: the test changes weights
  expected = sum(0.5 * np.sum(layer.kernel.numpy().astype(np.float64) ** 2)
                 for layer in non_wide.layers
                 if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)))
  assert float(cifar_model.weight_decay_loss(non_wide)) == pytest.approx(expected, rel=1e-5)
  # Batch norm scales and the dense bias are not decayed.
  gamma = non_wide.get_layer('final_bn').gamma
  gamma.assign(gamma * 100)
  bias = non_wide.get_layer('logit').bias
  bias.assign(bias + 3)
  assert float(cifar_model.weight_decay_loss(non_wide)) == pytest.approx(expected, rel=1e-5)


def test_training_loss_is_mean_xent_plus_weight_decay(non_wide, tmp_path, cifar_dir):
  from conftest import tiny_cifar_config
  config = tiny_cifar_config(tmp_path, cifar_dir, weight_decay=0.01)
  x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
  y = np.array([0, 3, 5, 9])
  logits = non_wide(x, training=False)
  loss = make_training_loss(config)(y, logits, non_wide, 4)
  expected = (np.mean(losses.xent(y, logits).numpy())
              + 0.01 * float(cifar_model.weight_decay_loss(non_wide)))
  assert float(loss) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize('filters', [[16, 160, 320], [16, 17, 32, 64], [16, 160, 320, 0],
                                     [16, 8, 32, 64], 'wide', [16, 32, 32, 64],
                                     [16, 16, 32, 32]])
def test_impossible_filters_are_an_error_naming_the_key(filters):
  with pytest.raises(ChallengeError, match='"filters"'):
    cifar_model.build_model(filters=filters)


@pytest.mark.parametrize('filters', [[16, 18, 20, 22], [4, 4, 6, 8], [16, 160, 320, 640]])
def test_every_accepted_filters_build_a_network(filters):
  # The strided stages pool their shortcut only when they widen: equal widths there would
  # add tensors of two sizes, so check_filters refuses them (above) and accepts these.
  logits = cifar_model.build_model(filters=filters)(np.zeros((1, 32, 32, 3), np.float32))
  assert logits.shape == (1, 10)


def test_the_standardization_layer_matches_the_originals_map_fn():
  x = tf.random.stateless_uniform((4, 32, 32, 3), (1, 2), 0, 255)
  np.testing.assert_allclose(
      cifar_model.PerImageStandardization()(x),
      tf.map_fn(tf.image.per_image_standardization, x), rtol=1e-5, atol=1e-5)


def test_fused_batch_norm_is_keras_batch_norm_with_the_originals_moving_variance():
  rng = np.random.default_rng(4)
  x = tf.constant(rng.normal(1.0, 2.0, (8, 6, 6, 4)).astype(np.float32))
  fused = cifar_model.FusedBatchNorm(momentum=0.9, epsilon=0.001)
  keras_bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=0.001)
  for layer in (fused, keras_bn):
    layer.build(x.shape)
  fused.gamma.assign(rng.normal(1.0, 0.1, 4).astype(np.float32))
  keras_bn.gamma.assign(fused.gamma)
  # Train mode: the same outputs (batch statistics) ...
  np.testing.assert_allclose(fused(x, training=True), keras_bn(x, training=True), atol=1e-5)
  # ... and TF1's fused update of the averages: the unbiased batch variance.
  batch = x.numpy().reshape(-1, 4)
  np.testing.assert_allclose(fused.moving_mean.numpy(), 0.1 * batch.mean(0), rtol=1e-5)
  np.testing.assert_allclose(fused.moving_variance.numpy(), 0.9 + 0.1 * batch.var(0, ddof=1),
                             rtol=1e-5)
  # Inference mode normalises with the averages.
  expected = ((x.numpy() - fused.moving_mean.numpy())
              / np.sqrt(fused.moving_variance.numpy() + 0.001) * fused.gamma.numpy())
  np.testing.assert_allclose(fused(x, training=False), expected, atol=1e-5)
