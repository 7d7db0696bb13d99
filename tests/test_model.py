"""The MNIST networks: architecture, parameter count, initialisers; the Small CNN of TRADES
and YOPO (config model small_cnn) trained and attacked."""
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from common import checkpoints, commands, training
from common.config import Config
from common.errors import ChallengeError
from conftest import quiet, tiny_config
from mnist_challenge.challenge import MNIST
from mnist_challenge.model import build_model
from tf1_originals import Original, mnist_network


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


def small_cnn():
  return build_model(Config({'model': 'small_cnn'}))


def test_the_small_cnn_is_the_trades_and_yopo_network():
  model = small_cnn()
  assert model.count_params() == 312202
  assert [tuple(v.shape) for v in model.trainable_variables] == [
      (3, 3, 1, 32), (32,), (3, 3, 32, 32), (32,), (3, 3, 32, 64), (64,), (3, 3, 64, 64), (64,),
      (1024, 200), (200,), (200, 200), (200,), (200, 10), (10,)]
  # valid convolutions and 2x2 pools: 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4
  assert model.get_layer('maxpool1').output.shape[1:] == (12, 12, 32)
  assert model.get_layer('maxpool2').output.shape[1:] == (4, 4, 64)
  x = np.random.default_rng(0).uniform(0, 1, (16, 784)).astype(np.float32)
  out = model(x, training=False)
  assert out.shape == (16, 10) and out.dtype == tf.float32


def test_the_small_cnns_initialisers_are_the_authors():
  tf.keras.utils.set_random_seed(0)
  model = small_cnn()
  for name, fan_in in (('conv2', 3 * 3 * 32), ('conv4', 3 * 3 * 64)):
    kernel = model.get_layer(name).kernel.numpy()  # kaiming_normal_: not truncated
    assert abs(kernel.std() / np.sqrt(2 / fan_in) - 1) < 0.03
    assert np.abs(kernel).max() > 2.5 * np.sqrt(2 / fan_in)
    assert not np.any(model.get_layer(name).bias.numpy())
  for name, fan_in in (('fc1', 1024), ('fc2', 200)):  # PyTorch's Linear: U(±1/sqrt(fan_in))
    for weights in (model.get_layer(name).kernel.numpy(), model.get_layer(name).bias.numpy()):
      bound = 1 / np.sqrt(fan_in)
      assert np.abs(weights).max() <= bound and np.abs(weights).max() > 0.9 * bound
    assert abs(model.get_layer(name).kernel.numpy().std() / (bound / np.sqrt(3)) - 1) < 0.03
  logits = model.get_layer('logits')
  assert not np.any(logits.kernel.numpy()) and not np.any(logits.bias.numpy())


def test_the_small_cnn_drops_out_in_training_mode_only():
  model = small_cnn()
  model.get_layer('logits').kernel.assign(np.ones((200, 10), np.float32))  # not all zero
  x = np.random.default_rng(1).uniform(0, 1, (8, 784)).astype(np.float32)
  np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
  assert not np.array_equal(model(x, training=True), model(x, training=False))


def test_the_small_cnn_trains_is_attacked_and_refuses_a_tf1_checkpoint(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, model='small_cnn')
  training.train(MNIST, config, log=quiet)
  model = build_model(config)
  step = checkpoints.restore_model(model, checkpoints.latest(config.model_dir))
  assert step == config.max_num_training_steps
  assert np.any(model.get_layer('logits').kernel.numpy())  # trained away from zero
  results = commands.pgd_attack(MNIST, config, log=quiet)
  assert results.num_examples == config.num_eval_examples
  adversarial = np.load(config.store_adv_path)
  test = MNIST.load_data(config).test.head(config.num_eval_examples)
  assert np.abs(adversarial - test.images).max() <= config.epsilon + 1e-6
  # Given the default config's network (--model_dir alone), every evaluation command reads
  # the network model_dir's config.json names, and finds what the right config found.
  as_default = config.replace(model='madry', store_adv_path=str(tmp_path / 'again.npy'))
  again = commands.pgd_attack(MNIST, as_default, log=quiet)
  np.testing.assert_array_equal(np.load(as_default.store_adv_path), adversarial)
  assert commands.evaluate(MNIST, as_default, once=True, log=quiet).adv_accuracy == (
      again.adv_accuracy)
  assert commands.run_attack(MNIST, as_default.replace(pred_path=str(tmp_path / 'pred.npy')),
                             log=quiet) == pytest.approx(again.adv_accuracy)
  report = commands.run_autoattack(MNIST, as_default, attacks='apgd-ce', iterations=2,
                                   log=quiet)
  assert report.clean_accuracy == again.nat_accuracy
  # Training on with another network stops before it writes, naming the fix.
  saved = os.path.join(config.model_dir, 'config.json')
  with pytest.raises(ChallengeError, match=re.escape(
      f'{saved} says it was trained with "model": "small_cnn", not "madry": '
      f'pass --config {saved}')):
    training.train(MNIST, config.replace(model='madry', max_num_training_steps=6), log=quiet)
  assert MNIST.load_config(saved).model == 'small_cnn'
  original = Original(mnist_network, (784,), 0)
  original.save(str(tmp_path / 'tf1'))
  with pytest.raises(ChallengeError, match='a TF1 checkpoint holds the challenge\'s own '
                                           'network, not small_cnn_model: use config model'):
    commands.pgd_attack(MNIST, config.replace(model_dir=str(tmp_path / 'tf1')), log=quiet)
