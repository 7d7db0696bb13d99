"""The neural ODE networks (common/ode.py; MNIST `model: "odenet"`, `"tisode"`): the Euler
solution against its steps by hand, the time-dependent and time-invariant fields, TisODE's
steady-state term against its formula and in the trainer's gradient, the authors'
parameter counts, and the combinations refused."""
import os

import numpy as np
import pytest
import tensorflow as tf

from common import losses, ode, precision, training
from common.errors import ChallengeError
from conftest import REPO, quiet, run_script, tiny_config
from mnist_challenge import model as mnist_model
from mnist_challenge.challenge import MNIST

RNG_SEED = 17  # conftest reseeds RNG with it before each test
RNG = np.random.default_rng(RNG_SEED)


def block(time_dependent, step_size=0.1, weight=0.0):
  layer = ode.ODEBlock(32, time_dependent, step_size, steady_state_weight=weight)
  layer.build((None, 5, 5, 32))
  for variable in layer.trainable_variables:  # away from the initial GN scale 1, shift 0
    variable.assign(variable + RNG.normal(0, 0.1, variable.shape).astype(np.float32))
  return layer


def state(n=3):
  return tf.constant(RNG.normal(0, 1, (n, 5, 5, 32)).astype(np.float32))


@pytest.mark.parametrize('time_dependent, step_size', [(True, 0.1), (False, 0.05)],
                         ids=['odenet', 'tisode'])
def test_the_solution_is_eulers_steps_over_zero_to_one(time_dependent, step_size):
  layer = block(time_dependent, step_size)
  z0 = state()
  z = z0
  for k in range(round(1 / step_size)):
    z = z + step_size * layer.field(k * step_size, z)
  np.testing.assert_allclose(layer(z0), z, rtol=1e-5, atol=1e-6)
  assert np.abs(z.numpy() - z0.numpy()).max() > 0.1  # the field moved the state
  assert np.all(layer.field(0.3, z0).numpy() >= 0)  # ends in a ReLU, as the authors'


def test_the_odenet_field_reads_the_time_and_the_tisode_field_does_not():
  z = state()
  dependent, invariant = block(True), block(False)
  assert np.abs(dependent.field(0.0, z).numpy() - dependent.field(0.7, z).numpy()).max() > 1e-3
  np.testing.assert_array_equal(invariant.field(0.0, z), invariant.field(0.7, z))
  assert len(dependent.trainable_variables) == 8 and len(invariant.trainable_variables) == 6
  assert dependent.convolutions[0].kernel.shape == (3, 3, 33, 32)  # the t channel in front


def test_the_steady_state_term_is_the_integral_of_the_fields_size_from_0_9_to_1_5():
  layer = block(False, 0.05, weight=0.01)
  z0 = state(4)
  logits, _, added = layer.stateless_call(
      [v.value for v in layer.trainable_variables], [], z0, training=True, return_losses=True)
  z, integral = z0, 0.0
  for k in range(30):  # to t = 1.5
    change = layer.field(k * 0.05, z)
    if k >= 18:  # from t = 0.9
      integral = integral + 0.05 * tf.abs(change)
    z = z + 0.05 * change
  expected = 0.01 * tf.reduce_sum(tf.reduce_mean(tf.abs(integral), axis=[1, 2, 3]))
  assert len(added) == 1
  np.testing.assert_allclose(added[0], expected, rtol=1e-5)
  # The prediction is z(1) in both modes; inference adds nothing.
  np.testing.assert_allclose(logits, layer(z0), rtol=1e-6, atol=1e-6)
  _, _, none = layer.stateless_call([v.value for v in layer.trainable_variables], [], z0,
                                    training=False, return_losses=True)
  assert not none


def test_the_networks_are_the_authors_sizes_and_refuse_export():
  assert mnist_model.build_odenet().count_params() == 142_410
  assert mnist_model.build_tisode().count_params() == 141_130
  with pytest.raises(ChallengeError, match='no form in Keras'):
    mnist_model.build_tisode(portable=True)


def test_the_trainer_differentiates_tisodes_steady_state_term(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, model='tisode', training_method='natural')
  trainer = training.Trainer(MNIST, config, log=quiet)
  model = trainer.model
  x = tf.constant(RNG.uniform(0, 1, (4, 784)).astype(np.float32))
  y = tf.constant(RNG.integers(0, 10, 4))
  gradients = trainer._gradients(x, y, ())[0]  # pylint: disable=protected-access
  with tf.GradientTape() as tape:
    logits, _, added = model.stateless_call(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables], x, training=True, return_losses=True)
    loss = tf.reduce_sum(losses.xent(y, logits)) + tf.add_n(added)
  expected = tape.gradient(loss, model.trainable_variables)
  for got, want in zip(gradients, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  with tf.GradientTape() as tape:
    cross_entropy = tf.reduce_sum(losses.xent(y, model(x, training=True)))
  without = tape.gradient(cross_entropy, model.trainable_variables)
  field = [i for i, v in enumerate(model.trainable_variables) if 'ode' in v.path]
  assert max(np.abs(gradients[i].numpy() - without[i].numpy()).max() for i in field) > 1e-6


def test_yopo_refuses_a_network_with_its_own_loss(tmp_path, mnist_dir):
  with pytest.raises(ChallengeError, match='steady-state.*another training_method'):
    training.Trainer(MNIST, tiny_config(tmp_path, mnist_dir, model='tisode',
                                        training_method='yopo'), log=quiet)


@pytest.mark.parametrize('recipe', ['ode', 'tisode'])
def test_train_py_runs_the_ode_recipes(tmp_path, mnist_dir, recipe):
  path = os.path.join('mnist_challenge', 'configs', f'{recipe}.json')
  config = MNIST.load_config(os.path.join(REPO, path))
  assert config.training_method == 'natural'
  assert config.model == {'ode': 'odenet', 'tisode': 'tisode'}[recipe]
  result = run_script(['mnist_challenge/train.py', '--config', path, '--data_dir', mnist_dir,
                       '--model_dir', str(tmp_path / 'model'), '--max_num_training_steps', '2',
                       '--training_batch_size', '8', '--num_output_steps', '1'])
  assert result.returncode == 0, result.stderr
  assert 'training nat accuracy' in result.stdout


def test_a_steps_model_losses_are_its_first_training_passes_whatever_the_method():
  # TRADES takes three passes, MMA two, an attack in batch-update mode more: the steady-state
  # term is counted once, from the first pass that is not the attack's.
  model = mnist_model.build_tisode()
  forward = training._StatefulForward(precision.Twin(model, None, 'float32'))  # pylint: disable=protected-access
  images = [tf.constant(RNG.uniform(0, 1, (2, 784)).astype(np.float32)) for _ in range(3)]
  forward(images[0], update_state=True, attack=True)
  forward(images[1], update_state=False)
  forward(images[1], update_state=True)
  forward(images[2], update_state=True)
  _, _, expected = model.stateless_call([v.value for v in model.trainable_variables], [],
                                        images[1], training=True, return_losses=True)
  assert len(forward.model_losses) == 1
  np.testing.assert_allclose(forward.with_model_losses(1.0), 1.0 + expected[0], rtol=1e-6)
