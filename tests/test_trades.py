"""TRADES (`training_method: "trades"`): the loss against its formula, the inner search (in
inference mode), the authors' three training-mode passes (batch norm's averages, the
stateless shortcut), β = 0 against natural training, two replicas against one device,
resuming, precision, the guard and the recipes."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge import model as cifar_model
from cifar10_challenge.challenge import CIFAR10
from common import losses, training
from common.methods import trades
from common.attacks import pgd
from common.errors import ChallengeError
from conftest import quiet, tiny_cifar_config, tiny_config
from mnist_challenge.challenge import MNIST
from test_training import (assert_same_gradient, first_moments, one_device_and_two_replicas,
                           straight_and_resumed, weights)
from test_training_methods import make_step

RNG_SEED = 5  # conftest reseeds RNG with it before each test
RNG = np.random.default_rng(RNG_SEED)


def softmax(z):
  z = z - z.max(1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def test_the_loss_is_cross_entropy_plus_beta_times_the_kl_on_fixed_logits():
  natural = RNG.normal(0, 2, (6, 10)).astype(np.float32)
  adversarial = natural + RNG.normal(0, 1, (6, 10)).astype(np.float32)
  labels = RNG.integers(0, 10, 6)
  p, q = softmax(natural.astype(np.float64)), softmax(adversarial.astype(np.float64))
  xent = -np.log(p[np.arange(6), labels])
  kl = np.sum(p * (np.log(p) - np.log(q)), 1)
  np.testing.assert_allclose(trades.kl(natural, adversarial), kl, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(trades.per_example_loss(labels, natural, adversarial, 6.0),
                             xent + 6.0 * kl, rtol=1e-4)
  assert trades.per_example_loss(labels, tf.constant(natural, tf.bfloat16),
                                 adversarial, 1.0).dtype == tf.float32
  np.testing.assert_allclose(trades.kl(natural, natural), 0.0, atol=1e-6)


def test_the_gradient_flows_through_both_logits_of_the_kl():
  # d/dz [CE + β KL(p ‖ q)] with p = softmax(z), q = softmax(z'): for z, (p - onehot(y)) +
  # β p (log p - log q - KL); for z', β (q - p) (the authors' gradient: f(x) not detached).
  natural = tf.constant(RNG.normal(0, 2, (5, 10)).astype(np.float32))
  adversarial = tf.constant(RNG.normal(0, 2, (5, 10)).astype(np.float32))
  labels = RNG.integers(0, 10, 5)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([natural, adversarial])
    total = tf.reduce_sum(trades.per_example_loss(labels, natural, adversarial, 3.0))
  p = softmax(natural.numpy().astype(np.float64))
  q = softmax(adversarial.numpy().astype(np.float64))
  kl = np.sum(p * (np.log(p) - np.log(q)), 1, keepdims=True)
  onehot = np.eye(10)[labels]
  np.testing.assert_allclose(tape.gradient(total, natural),
                             p - onehot + 3.0 * p * (np.log(p) - np.log(q) - kl), atol=1e-5)
  np.testing.assert_allclose(tape.gradient(total, adversarial), 3.0 * (q - p), atol=1e-5)


def test_the_objective_is_reduced_as_each_challenge_reduces_its_loss(tmp_path):
  # MNIST sums over the batch (as the original sums its cross-entropy); CIFAR-10 takes the
  # mean over the global batch and adds the weight decay.
  per_example = tf.constant([0.5, 1.0, 2.0, 4.0])
  labels, logits = tf.zeros(4, tf.int64), tf.zeros([4, 10])
  mnist_loss = MNIST.make_training_loss(MNIST.load_config())
  assert float(mnist_loss(labels, logits, None, 8, per_example)) == pytest.approx(7.5)
  config = tiny_cifar_config(tmp_path, str(tmp_path))
  model = CIFAR10.build_model(config)
  decay = config.weight_decay * float(cifar_model.weight_decay_loss(model))
  cifar_loss = CIFAR10.make_training_loss(config)
  assert float(cifar_loss(labels, logits, model, 8, per_example)) == pytest.approx(
      7.5 / 8 + decay, rel=1e-5)


def test_the_search_raises_the_kl_and_stays_in_the_ball_and_the_pixel_range():
  w = tf.constant(RNG.normal(0, 1, (20, 5)).astype(np.float32))
  model_fn = lambda v: tf.matmul(tf.tanh(v * 3.0), w)
  x = RNG.uniform(0, 1, (32, 20)).astype(np.float32)
  x[:, :4] = 0.0
  params = pgd.PGDParams(0.1, 10, 0.02)
  start = trades.start(tf.constant(x), 1.0, tf.constant([1, 2], tf.int64), (0, 32))
  noise = start.numpy() - x
  assert 0.0005 < noise.std() < 0.002 and np.abs(noise).max() < 0.01  # 0.001·N(0, 1)
  x_adv = trades.search(model_fn, tf.constant(x), params, start).numpy()
  assert np.all(np.abs(x_adv - x) <= 0.1 + 1e-6) and x_adv.min() >= 0 and x_adv.max() <= 1
  natural = model_fn(x)
  before = trades.kl(natural, model_fn(start)).numpy()
  after = trades.kl(natural, model_fn(x_adv)).numpy()
  assert np.all(after > before) and after.mean() > 100 * before.mean()
  # No step: the start, clipped to the pixel range.
  zero = trades.search(model_fn, tf.constant(x), pgd.PGDParams(0.1, 0, 0.02), start).numpy()
  np.testing.assert_array_equal(zero, np.clip(start.numpy(), 0, 1))


def batch_norm_model(dropout=0.0):
  """Dense, batch norm (momentum 0.5: each pass moves the averages visibly), dropout, dense."""
  keras.utils.set_random_seed(4)
  layers = [keras.Input((6,)), keras.layers.Dense(8, name='hidden'),
            keras.layers.BatchNormalization(momentum=0.5, name='norm'),
            keras.layers.Activation('tanh')]
  if dropout:
    layers.append(keras.layers.Dropout(dropout, seed=1))
  return keras.Sequential(layers + [keras.layers.Dense(5, name='logits')])


def trades_batch(n=16):
  x = RNG.uniform(0, 1, (n, 6)).astype(np.float32)
  return tf.constant(x), tf.constant(RNG.integers(0, 5, n)), tf.constant(x + 0.001)


def test_the_search_runs_in_inference_mode():
  # Batch norm in training mode (batch statistics) would give another f(x) and another x'.
  model = batch_norm_model()
  model(tf.constant(RNG.normal(3, 2, (64, 6)).astype(np.float32)), training=True)  # averages
  x, y, start = trades_batch()
  params = pgd.PGDParams(0.1, 3, 0.03)
  method = trades.Trades(params, 1.0, 1.0)
  got = method.gradients(make_step(model), x, y, (start,)).x_adv
  want = trades.search(lambda v: model(v, training=False), x, params, start)
  np.testing.assert_array_equal(got, want)
  in_training = trades.search(lambda v: model(v, training=True), x, params, start)
  assert np.abs(in_training.numpy() - want.numpy()).max() > 1e-3


@pytest.mark.parametrize('passes', ['three', 'one'])
def test_batch_norm_sees_the_authors_passes(passes):
  # The authors: model(x) for the cross-entropy, then model(x'), model(x) for the KL, all in
  # training mode: the averages move three times. "one": once, over x.
  model = batch_norm_model()
  x, y, start = trades_batch()
  method = trades.Trades(pgd.PGDParams(0.1, 2, 0.03), 1.0, 1.0, passes)
  step = make_step(model)
  x_adv = method.gradients(step, x, y, (start,)).x_adv
  reference = batch_norm_model()
  for inputs in ((x, x_adv, x) if passes == 'three' else (x,)):
    reference(inputs, training=True)
  norm = reference.get_layer('norm')
  expected = [norm.moving_mean.numpy(), norm.moving_variance.numpy()]
  for got, want in zip(step.forward.state, expected):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_three_passes_are_the_authors_objective_and_one_pass_where_the_network_has_no_state():
  # With batch norm: CE(f1(x)) + β KL(f3(x) || f2(x')), every pass in training mode, the
  # averages carried from one pass to the next. Without state the shortcut (one pass over x
  # for both terms) is the same function.
  x, y, start = trades_batch()
  params = pgd.PGDParams(0.1, 2, 0.03)
  for model in (batch_norm_model(), keras.Sequential(
      [keras.Input((6,)), keras.layers.Dense(8, activation='tanh'), keras.layers.Dense(5)])):
    result = trades.Trades(params, 2.0, 1.0).gradients(make_step(model), x, y, (start,))
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    with tf.GradientTape() as tape:
      natural = reference(x, training=True)
      adversarial = reference(result.x_adv, training=True)
      target = reference(x, training=True)
      loss = tf.reduce_sum(losses.xent(y, natural) + 2.0 * trades.kl(target, adversarial))
    expected = tape.gradient(loss, reference.trainable_variables)
    for got, want in zip(result.gradients, expected):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_each_pass_draws_its_own_dropout_mask():
  # The authors' three passes each draw a mask: the KL's target is not the cross-entropy's
  # logits (one pass would give KL(f(x) || f(x)) = 0 at x' = x).
  model = batch_norm_model(dropout=0.5)
  x, y, _ = trades_batch()
  step = make_step(model)
  three = trades.Trades(pgd.PGDParams(0.0, 0, 0.03), 1.0, 1.0).gradients(step, x, y, (x,))
  one = trades.Trades(pgd.PGDParams(0.0, 0, 0.03), 1.0, 1.0, 'one').gradients(
      make_step(model), x, y, (x,))
  assert max(np.abs(a - b).max() for a, b in zip(three.gradients, one.gradients)) > 1e-4


def trades_config(tmp_path, mnist_dir, **changes):
  settings = dict(training_method='trades', max_num_training_steps=1)
  settings.update(changes)
  return tiny_config(tmp_path, mnist_dir, **settings)


def test_beta_zero_takes_natural_trainings_step(tmp_path, mnist_dir):
  natural = training.Trainer(MNIST, tiny_config(tmp_path / 'a', mnist_dir, epsilon=0.0,
                                                max_num_training_steps=1), log=quiet)
  natural.run()
  zero = training.Trainer(MNIST, trades_config(tmp_path / 'b', mnist_dir, trades_beta=0.0),
                          log=quiet)
  zero.run()
  assert_same_gradient(first_moments(natural), first_moments(zero))
  with_kl = training.Trainer(MNIST, trades_config(tmp_path / 'c', mnist_dir), log=quiet)
  with_kl.run()
  differences = [np.abs(a - b).max() / np.abs(a).max()
                 for a, b in zip(first_moments(natural), first_moments(with_kl))]
  assert max(differences) > 1e-3  # the KL term changes the gradient


@pytest.mark.versions
def test_two_replicas_compute_one_devices_gradient(tmp_path, mnist_dir):
  # The objective and its reduction over two replicas against one device, from the same
  # start (k = 0: x' is the start itself). The search's first sign steps follow a KL gradient
  # of the start's 0.001 noise, so tiny that a batch of 4 and one of 8 round it to other
  # signs: its per-example steps are tested above, not across batch shapes.
  single, mirrored = one_device_and_two_replicas(trades_config(tmp_path, mnist_dir, k=0),
                                                 tmp_path)
  assert_same_gradient(first_moments(single), first_moments(mirrored))


def test_a_resumed_trades_run_equals_an_uninterrupted_one(tmp_path, mnist_dir):
  straight, resumed = straight_and_resumed(
      trades_config(tmp_path, mnist_dir, max_num_training_steps=4), tmp_path)
  for a, b in zip(weights(straight.model), weights(resumed.model)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.versions
@pytest.mark.parametrize('precision', ['mixed_bfloat16', 'mixed_float16'])
def test_trades_trains_in_every_precision_with_float32_losses(tmp_path, mnist_dir, precision):
  lines = []
  config = trades_config(tmp_path, mnist_dir, precision=precision, max_num_training_steps=2)
  trainer = training.Trainer(MNIST, config, log=lines.append)
  assert trainer.run() == 2
  assert all(np.all(np.isfinite(w)) for w in weights(trainer.model))


def test_the_guard_watches_a_trades_run(tmp_path, mnist_dir):
  lines = []
  config = trades_config(tmp_path, mnist_dir, max_num_training_steps=4,
                         robustness_check_steps=2, robustness_check_examples=20)
  training.train(MNIST, config, log=lines.append)
  assert sum('held-out' in line for line in lines) >= 2, lines


def test_trades_runs_on_cifar10_with_batch_norm(tmp_path, cifar_dir):
  config = tiny_cifar_config(tmp_path, cifar_dir, training_method='trades',
                             max_num_training_steps=2)
  assert config.trades_beta == 6.0  # the authors' CIFAR-10 β
  trainer = training.Trainer(CIFAR10, config, log=quiet)
  before = [v.numpy().copy() for v in trainer.model.non_trainable_variables]
  assert trainer.run() == 2
  after = [v.numpy() for v in trainer.model.non_trainable_variables]
  assert any(np.abs(a - b).max() > 0 for a, b in zip(before, after))  # averages updated


def test_trades_settings_and_their_errors():
  assert MNIST.load_config().training_method == 'madry'
  assert MNIST.load_config().trades_beta == 1.0
  assert MNIST.load_config().trades_passes == 'three'
  with pytest.raises(ChallengeError, match='training_method'):
    MNIST.load_config(overrides={'training_method': 'mart'})
  with pytest.raises(ChallengeError, match='trades_passes'):
    MNIST.load_config(overrides={'trades_passes': 'two'})
  with pytest.raises(ChallengeError, match='trades.*its own search'):
    training.check_training_method(MNIST.load_config(
        overrides={'training_loss': 'trades', 'training_attack': 'fgsm_rs'}))


@pytest.mark.parametrize('challenge', [MNIST, CIFAR10], ids=['mnist', 'cifar10'])
def test_the_trades_recipes_load(challenge):
  path = os.path.join(challenge.package_dir, 'configs', 'trades.json')
  config = challenge.load_config(path)
  assert config.training_method == 'trades' and config.training_attack == 'pgd'
  with open(path) as f:
    named = {name for name in json.load(f) if not name.startswith('_')}
  assert named <= {key.name for key in challenge.config_keys}
  training.check_training_method(config)
