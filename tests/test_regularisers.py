"""Jacobian and Cross-Lipschitz regularisation (common/methods/jacobian.py,
common/methods/cross_lipschitz.py): each regulariser against its formula from the full
Jacobian, its weight gradients (a second derivative) against the formula's, the random
projections, the adversarial mix, and both on the trainer (the shared parametrised tests in
test_training_methods run them across replicas, resuming, precisions, XLA, batch norm and
the recipes)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from common import losses, methods
from common.attacks import pgd
from common.errors import ChallengeError
from common.methods import cross_lipschitz, jacobian
from mnist_challenge.challenge import MNIST
from test_training_methods import make_step

RNG_SEED = 13  # conftest reseeds RNG with it before each test
RNG = np.random.default_rng(RNG_SEED)
CLASSES = 10


def conv_model():
  """A small ReLU CNN with max pooling, on 8x8x1 images (the MNIST network's operations)."""
  keras.utils.set_random_seed(5)
  return keras.Sequential([
      keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding='same', activation='relu'),
      keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
      keras.layers.Dense(16, activation='tanh'), keras.layers.Dense(CLASSES)])


def batch(n=6, pixel_max=1.0):
  x = RNG.uniform(0, pixel_max, (n, 8, 8, 1)).astype(np.float32)
  return tf.constant(x), tf.constant(RNG.integers(0, CLASSES, n))


def full_jacobian(model, x, pixel_max=1.0):
  """[batch, classes, pixels]: ∂f/∂u per example, u = x / pixel_max."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    logits = model(x)
  return tf.reshape(tape.batch_jacobian(logits, x), [x.shape[0], CLASSES, -1]) * pixel_max


def unit_rows(v):
  return v / tf.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize('count', [1, 3, 0], ids=['one', 'three', 'exact'])
def test_the_jacobian_regulariser_is_the_authors_estimate(count):
  model = conv_model()
  x, y = batch()
  directions = (jacobian.projections(x, CLASSES, count, tf.constant([1, 2], tf.int64),
                                     (0, 6)))
  lam = 0.3
  method = jacobian.Jacobian(pgd.PGDParams(0.1, 1, 0.1), lam, count, 0.0, 1.0)
  result = method.gradients(make_step(model), x, y, (directions,))
  with tf.GradientTape() as tape:
    full = full_jacobian(model, x)
    projected = tf.einsum('kbc,bcd->kbd', directions, full)
    scale = CLASSES / count if count else 1.0
    regulariser = 0.5 * scale * tf.reduce_sum(tf.square(projected), axis=[0, 2])
    loss = tf.reduce_sum(losses.xent(y, model(x)) + lam * regulariser)
  expected = tape.gradient(loss, model.trainable_variables)
  for got, want in zip(result.gradients, expected):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
  if count == 0:  # the exact mode: ½ ||J||²_F
    np.testing.assert_allclose(regulariser, 0.5 * tf.reduce_sum(tf.square(full), [1, 2]),
                               rtol=1e-5)
  # The regulariser's share of the gradient is not negligible (else the test proves nothing).
  with tf.GradientTape() as tape:
    plain = tf.reduce_sum(losses.xent(y, model(x)))
  plain_gradients = tape.gradient(plain, model.trainable_variables)
  assert max(np.abs(a - b).max() for a, b in zip(expected, plain_gradients)) > 1e-3


def test_the_projections_are_unit_rows_drawn_for_the_whole_global_batch():
  x = tf.zeros([8, 4])
  seed = tf.constant([3, 9], tf.int64)
  whole = jacobian.projections(x, CLASSES, 2, seed, (0, 8))
  assert whole.shape == (2, 8, CLASSES)
  np.testing.assert_allclose(tf.norm(whole, axis=-1), 1.0, rtol=1e-6)
  half = jacobian.projections(x[:4], CLASSES, 2, seed, (4, 8))
  np.testing.assert_array_equal(half, whole[:, 4:])
  other_step = jacobian.projections(x, CLASSES, 2, tf.constant([3, 10], tf.int64), (0, 8))
  assert np.abs(other_step.numpy() - whole.numpy()).max() > 0.1
  np.testing.assert_array_equal(jacobian.projections(x, CLASSES, 0, seed, (0, 8))[:, 0],
                                np.eye(CLASSES))


def test_the_jacobian_estimate_is_unbiased():
  # The mean over many projections of ½ C ||vᵀJ||² (v a random unit row) is ½ ||J||²_F.
  model = conv_model()
  x, _ = batch(2)
  full = full_jacobian(model, x)
  draws = unit_rows(tf.constant(RNG.normal(size=(4000, 2, CLASSES)).astype(np.float32)))
  estimate = jacobian.regulariser(
      [tf.einsum('bc,bcd->bd', draws[k], full) for k in range(4000)], CLASSES, 4000)
  np.testing.assert_allclose(estimate, 0.5 * tf.reduce_sum(tf.square(full), [1, 2]),
                             rtol=0.05)


@pytest.mark.parametrize('pixel_max', [1.0, 255.0], ids=['mnist', 'cifar10'])
def test_the_cross_lipschitz_regulariser_is_the_mean_over_class_pairs(pixel_max):
  model = conv_model()
  x, y = batch(pixel_max=pixel_max)
  # The network reads x / pixel_max; the method differentiates with respect to it.
  scaled = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / pixel_max),
                             model])
  lam = 0.05
  method = cross_lipschitz.CrossLipschitz(pgd.PGDParams(0.1, 1, 0.1), lam, 0.0, pixel_max)
  result = method.gradients(make_step(scaled), x, y, ())
  with tf.GradientTape() as tape:
    full = full_jacobian(scaled, x, pixel_max)
    differences = full[:, :, None, :] - full[:, None, :, :]
    regulariser = tf.reduce_sum(tf.square(differences), axis=[1, 2, 3]) / CLASSES ** 2
    loss = tf.reduce_sum(losses.xent(y, scaled(x)) + lam * regulariser)
  expected = tape.gradient(loss, scaled.trainable_variables)
  for got, want in zip(result.gradients, expected):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
  # The regulariser moves the gradient (λ 0.05 on this network): not the cross-entropy's.
  with tf.GradientTape() as tape:
    plain = tf.reduce_sum(losses.xent(y, scaled(x)))
  plain_gradients = tape.gradient(plain, scaled.trainable_variables)
  assert max(np.abs(a - b).max() for a, b in zip(expected, plain_gradients)) > 1e-3


def test_the_cross_lipschitz_form_over_the_mean_equals_the_pairs_sum():
  g = [tf.constant(RNG.normal(size=(3, 5)).astype(np.float32)) for _ in range(4)]
  pairs = sum(tf.reduce_sum(tf.square(a - b), axis=1) for a in g for b in g) / 16
  np.testing.assert_allclose(cross_lipschitz.regulariser(g), pairs, rtol=1e-5)


@pytest.mark.parametrize('name', ['jacobian', 'cross_lipschitz'])
def test_the_adversarial_fraction_replaces_the_first_rows_of_the_global_batch(name):
  model = conv_model()
  x, y = batch(8)
  config = MNIST.load_config(overrides={'training_method': name,
                                        f'{name}_adversarial_fraction': 0.5,
                                        'training_num_steps': 2, 'training_step_size': 0.1})
  method = methods.build(MNIST, config, MNIST.attack_params(config))
  seed = tf.constant([1, 1], tf.int64)
  inputs = method.prepare(x, seed, (0, 8), None)
  trained = method.gradients(make_step(model), x, y, inputs).x_adv.numpy()
  moved = np.abs(trained - x.numpy()).reshape(8, -1).max(axis=1)
  assert np.all(moved[:4] > 0.05) and np.all(moved[4:] == 0)
  assert np.all(moved[:4] <= 0.3 + 1e-6)
  # The second replica of two holds rows 4-7: none of them adversarial.
  second = method.prepare(x[:4], seed, (4, 8), None)
  assert not np.any(second[-1].numpy())
  assert np.all(method.prepare(x[:4], seed, (0, 8), None)[-1].numpy())


@pytest.mark.parametrize('name', ['jacobian', 'cross_lipschitz'])
@pytest.mark.parametrize('changes, message', [
    (dict(defence='bit_depth', bpda='on'), 'input defence "bit_depth"'),
    (dict(defence='thermometer', bpda='approximation'), 'input defence "thermometer"'),
    (dict(precision='mixed_float16'), 'float16'),
])
def test_what_blocks_the_input_gradients_is_refused(name, changes, message):
  config = MNIST.load_config(overrides=dict(training_method=name, **changes))
  with pytest.raises(ChallengeError, match=message):
    methods.build(MNIST, config, MNIST.attack_params(config))


def test_the_regularisers_keys_reach_them_with_the_authors_defaults():
  config = MNIST.load_config()
  assert config.jacobian_lambda == pytest.approx(0.1 * 0.3081 ** 2)
  assert config.jacobian_projections == 1 and config.cross_lipschitz_lambda == 1e-4
  assert config.jacobian_adversarial_fraction == config.cross_lipschitz_adversarial_fraction == 0
  built = methods.build(MNIST, config.replace(training_method='jacobian', jacobian_lambda=0.5,
                                              jacobian_projections=3),
                        MNIST.attack_params(config))
  assert (built.lam, built.count, built.fraction) == (0.5, 3, 0.0)
  built = methods.build(MNIST, config.replace(training_method='cross_lipschitz',
                                              cross_lipschitz_lambda=0.2,
                                              cross_lipschitz_adversarial_fraction=0.25),
                        MNIST.attack_params(config))
  assert (built.lam, built.fraction) == (0.2, 0.25)
  with pytest.raises(ChallengeError, match='jacobian_adversarial_fraction'):
    MNIST.load_config(overrides={'jacobian_adversarial_fraction': 1.5})
