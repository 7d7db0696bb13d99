"""The originally released TF1 checkpoints: detected and loaded by every script, same logits
and same PGD as the original graphs, fine-tuning, conversion, clear errors."""
import os

import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge import model as cifar_model
from cifar10_challenge.challenge import CIFAR10
from common import checkpoints, commands, tf1_checkpoints, training
from common.attacks import pgd
from common.errors import ChallengeError
from conftest import NON_WIDE, quiet, tiny_cifar_config, tiny_config
from mnist_challenge.challenge import MNIST
from tf1_originals import Original, cifar_network, cifar_training_loss, mnist_network

v1 = tf.compat.v1


MNIST_STEP, CIFAR_STEP = 24900, 70000  # the saved checkpoints' steps (tests spell them out)
TRAINED_STEPS = 2  # TF1 training steps before saving, so that the slots hold values


def saved_original(tmp_path_factory, network, input_shape, pixel_max, make_optimizer, step):
  """An original network with random weights (and BN averages), trained from step
  `step - TRAINED_STEPS` (optimizer state as TF1 has it there: Adam's bias-correction
  powers agree with the step) to `step`, saved by TF1's Saver."""
  original = Original(network, input_shape, 0, make_optimizer)
  original.randomise(np.random.default_rng(0))
  original.start_at(step - TRAINED_STEPS)
  rng = np.random.default_rng(1)
  original.train_steps(rng.uniform(0, pixel_max, (4,) + input_shape), rng.integers(0, 10, 4),
                       TRAINED_STEPS)
  model_dir = str(tmp_path_factory.mktemp('tf1'))
  original.save(model_dir)
  return original, model_dir


def mnist_optimizer(global_step):
  """mnist_challenge/train.py's optimizer."""
  del global_step
  return v1.train.AdamOptimizer(1e-4)


def cifar_optimizer(global_step, schedule=((0, 0.1), (40000, 0.01), (60000, 0.001)),
                    momentum=0.9):
  """cifar10_challenge/train.py's optimizer, with its config's schedule by default."""
  rate = v1.train.piecewise_constant(tf.cast(global_step, tf.int32),
                                     [step for step, _ in schedule[1:]],
                                     [rate for _, rate in schedule])
  return v1.train.MomentumOptimizer(rate, momentum)


@pytest.fixture(scope='module')
def mnist_tf1(tmp_path_factory):
  return saved_original(tmp_path_factory, mnist_network, (784,), 1.0, mnist_optimizer,
                        MNIST_STEP)


@pytest.fixture(scope='module')
def cifar_tf1(tmp_path_factory):
  return saved_original(tmp_path_factory, cifar_network(NON_WIDE), (32, 32, 3), 255.0,
                        cifar_optimizer, CIFAR_STEP)


def copy_files(source, target):
  for name in os.listdir(source):
    if os.path.isfile(os.path.join(source, name)):
      tf.io.gfile.copy(os.path.join(source, name), os.path.join(target, name))


def loaded(challenge, config, model_dir):
  model = challenge.build_model(config)
  path = tf.train.latest_checkpoint(model_dir)
  assert tf1_checkpoints.is_tf1(path)
  step = checkpoints.restore_model(model, path, challenge.tf1_variables)
  return model, step


@pytest.mark.parametrize('which', ['mnist', 'cifar10'])
def test_loaded_model_gives_the_original_logits_and_pgd(which, mnist_tf1, cifar_tf1, tmp_path,
                                                         cifar_dir, mnist_dir):
  if which == 'mnist':
    (original, model_dir), challenge = mnist_tf1, MNIST
    config = tiny_config(tmp_path, mnist_dir, random_start=False, k=10, a=0.01)
    x = np.random.default_rng(5).uniform(0, 1, (16, 784)).astype(np.float32)
    expected_step = 24900
  else:
    (original, model_dir), challenge = cifar_tf1, CIFAR10
    config = tiny_cifar_config(tmp_path, cifar_dir, random_start=False, num_steps=5)
    x = np.random.default_rng(5).uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    expected_step = 70000
  model, step = loaded(challenge, config, model_dir)
  assert step == expected_step
  reference = original.logits(x)
  ours = model(x, training=False).numpy()
  np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())

  y = reference.argmax(1)
  params = challenge.attack_params(config)
  ours = pgd.make_pgd(lambda v: model(v, training=False), params)(x, y).numpy()
  theirs = original.pgd(x, y, params.epsilon, params.num_steps, params.step_size,
                        params.clip_max)
  assert np.abs(ours - x).max() > 0.99 * min(params.epsilon, params.num_steps * params.step_size)
  same = np.mean(ours == theirs)
  assert same > 0.999, f'only {same:.4%} of the pixels agree with the original PGD'


def test_every_script_accepts_an_original_checkpoint_dir(mnist_tf1, tmp_path, mnist_dir):
  original, model_dir = mnist_tf1
  config = tiny_config(tmp_path, mnist_dir, model_dir=model_dir)
  test = MNIST.load_data(config).test
  expected_correct = int(np.sum(original.logits(test.images).argmax(1) == test.labels))
  results = commands.evaluate(MNIST, config, once=True, log=quiet)
  assert results.nat_correct == expected_correct
  attacked = commands.pgd_attack(MNIST, config, log=quiet)
  assert attacked.nat_correct == expected_correct
  assert commands.run_attack(MNIST, config, log=quiet) == attacked.adv_accuracy


def test_fine_tuning_restores_weights_step_and_optimizer_slots(cifar_tf1, tmp_path, cifar_dir):
  original, source_dir = cifar_tf1
  model_dir = str(tmp_path / 'tf1')
  os.makedirs(model_dir)
  copy_files(source_dir, model_dir)  # training writes into model_dir
  originals = sorted(os.listdir(model_dir))
  config = tiny_cifar_config(tmp_path, cifar_dir, model_dir=model_dir,
                             max_num_training_steps=70005, num_checkpoint_steps=1)
  lines = []
  trainer = training.Trainer(CIFAR10, config, log=lines.append)
  assert trainer.restore_tf1(tf.train.latest_checkpoint(model_dir)) == 70000
  assert 'optimizer slots 95 of 95' in lines[-1]  # every trainable variable's
  values = original.variables()
  names = CIFAR10.tf1_variables(trainer.model)
  for name, variable in names.items():
    np.testing.assert_array_equal(variable.numpy(), values[name], err_msg=name)
  for name, slot in CIFAR10.tf1_slots(trainer.optimizer, trainer.model).items():
    np.testing.assert_array_equal(slot.numpy(), values[name], err_msg=name)
  assert int(trainer.optimizer.iterations.numpy()) == 70000

  assert trainer.run() == 70005
  assert lines[1].startswith('Fine-tuning the original TF1 checkpoint')
  # Five new checkpoints and the original: rotation never deletes the original's files.
  assert set(originals) <= set(os.listdir(model_dir))
  assert tf.train.latest_checkpoint(model_dir).endswith('checkpoint-70005')


def test_mnist_adam_slots_and_step_map(mnist_tf1, tmp_path, mnist_dir):
  original, model_dir = mnist_tf1
  trainer = training.Trainer(MNIST, tiny_config(tmp_path, mnist_dir), log=quiet)
  assert trainer.restore_tf1(tf.train.latest_checkpoint(model_dir)) == 24900
  values = original.variables()
  for name, slot in MNIST.tf1_slots(trainer.optimizer, trainer.model).items():
    assert name.endswith(('/Adam', '/Adam_1'))
    np.testing.assert_array_equal(slot.numpy(), values[name], err_msg=name)
  # TF1 checkpoints Adam's bias-correction powers; Keras derives them from the restored
  # step (β^(iterations + 1) at the next update). The fixture's must agree with its step.
  next_update = int(trainer.optimizer.iterations.numpy()) + 1
  for name, beta in (('beta1_power', trainer.optimizer.beta_1),
                     ('beta2_power', trainer.optimizer.beta_2)):
    np.testing.assert_allclose(values[name], float(np.float32(beta)) ** next_update,
                               rtol=1e-5, atol=1e-30, err_msg=name)
  assert values['beta2_power'] > 1e-12  # β2's power is not negligible: the check can fail


def assert_same_step(ours, before, after, rtol=5e-5):
  """Each of `ours` {TF1 name: variable} holds the original's value `after` one step, to
  `rtol` of the largest change that step made to the variable, plus 2 ulp of the value. The
  change must dwarf that rounding, or a wrong step could pass for a right one.

  rtol: TF1's Adam kernel computes 1 - β2 in float32 (1 - float32(0.999) is 1.3e-5 below
  0.001), Keras in float64: the second moments' changes differ by that much."""
  for name, variable in ours.items():
    change = np.abs(after[name] - before[name]).max()
    rounding = 2 * np.spacing(np.abs(after[name]))
    assert change > 100 * rounding.max(), f'{name}: the step hardly changed it ({change:.3g})'
    error = np.abs(variable.numpy() - after[name])
    worst = np.unravel_index(np.argmax(error - rounding), error.shape)
    assert np.all(error <= rtol * change + rounding), (
        f'{name}: differs from the original by up to {error.max():.3g} ({error.max() / change:.3g} '
        f'of the step\'s largest change {change:.3g}); at {worst}: ours '
        f'{variable.numpy()[worst]!r}, the original\'s {after[name][worst]!r}')


@pytest.mark.parametrize('which', ['mnist', 'cifar10'])
def test_a_fine_tuning_step_equals_one_more_step_of_the_original(which, mnist_tf1, cifar_tf1,
                                                                 tmp_path, mnist_dir, cifar_dir):
  # ε 0: the training-time attack returns the batch itself, so both take their step on the
  # same batch. The original's step runs in a fresh graph restored from the checkpoint: the
  # fixture's own must keep the saved values for the other tests.
  rng = np.random.default_rng(7)
  if which == 'mnist':
    (_, model_dir), challenge, step = mnist_tf1, MNIST, MNIST_STEP
    config = tiny_config(tmp_path, mnist_dir, epsilon=0.0, random_start=False,
                         training_batch_size=8)
    x = rng.uniform(0, 1, (8, 784))
    original = Original(mnist_network, (784,), 0, mnist_optimizer)
  else:
    (_, model_dir), challenge, step = cifar_tf1, CIFAR10, CIFAR_STEP
    # A rate that rises at step 60000: updates far above float32 rounding, and a rate that
    # a trainer not resumed at the checkpoint's step would not use.
    config = tiny_cifar_config(tmp_path, cifar_dir, epsilon=0.0, random_start=False,
                               training_batch_size=8, step_size_schedule=[[0, 0.001],
                                                                          [60000, 0.1]])
    x = rng.uniform(0, 255, (8, 32, 32, 3))
    # The train-mode graph (batch statistics; the step updates the moving averages) and
    # train.py's total loss (mean xent + weight decay).
    original = Original(
        cifar_network(NON_WIDE, training=True), (32, 32, 3), 0,
        lambda global_step: cifar_optimizer(global_step, config.step_size_schedule,
                                            config.momentum),
        cifar_training_loss(config.weight_decay))
  x, y = x.astype(np.float32), rng.integers(0, 10, 8)
  path = checkpoints.latest(model_dir)
  original.restore(path)
  before = original.variables()
  original.train_steps(x, y, 1)
  after = original.variables()

  trainer = training.Trainer(challenge, config, log=quiet)
  assert trainer.restore_tf1(path) == step
  _, _, x_adv = trainer.train_step((tf.constant(x), tf.constant(y)))
  np.testing.assert_array_equal(x_adv, x)
  # The weights (CIFAR-10's BN moving averages included), then the optimizer slots.
  assert_same_step(challenge.tf1_variables(trainer.model), before, after)
  assert_same_step(challenge.tf1_slots(trainer.optimizer, trainer.model), before, after)
  assert after['global_step'] == step + 1
  assert int(trainer.step.numpy()) == int(trainer.optimizer.iterations.numpy()) == step + 1


def test_converter_writes_a_checkpoint_of_this_project(cifar_tf1, tmp_path, cifar_dir):
  original, model_dir = cifar_tf1
  config = tiny_cifar_config(tmp_path, cifar_dir, model_dir=model_dir)
  output_dir = str(tmp_path / 'converted')
  saved = commands.convert_checkpoint(CIFAR10, config, output_dir, log=quiet)
  assert not tf1_checkpoints.is_tf1(saved) and saved.endswith('checkpoint-70000')
  model = CIFAR10.build_model(config)
  assert checkpoints.restore_model(model, saved) == 70000
  x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(model(x, training=False), original.logits(x), rtol=1e-5,
                             atol=1e-4)
  with pytest.raises(ChallengeError, match='already holds a checkpoint'):
    commands.convert_checkpoint(CIFAR10, config, output_dir, log=quiet)
  with pytest.raises(ChallengeError, match='already a checkpoint of this project'):
    commands.convert_checkpoint(CIFAR10, config.replace(model_dir=output_dir), log=quiet)
  # An output_dir of the wrong kind: refused before the work.
  fifo = str(tmp_path / 'fifo')
  os.mkfifo(fifo)
  with pytest.raises(ChallengeError, match=f'--output_dir {fifo} is a FIFO'):
    commands.convert_checkpoint(CIFAR10, config, fifo, log=quiet)


def _restore(filters_or_mnist, model_dir):
  if filters_or_mnist == 'mnist':
    model, challenge = MNIST.build_model(None), MNIST
  else:
    model, challenge = cifar_model.build_model(filters=filters_or_mnist), CIFAR10
  return checkpoints.restore_model(model, checkpoints.latest(model_dir),
                                   challenge.tf1_variables)


def test_a_checkpoint_of_another_model_names_the_first_mismatch(mnist_tf1, cifar_tf1):
  with pytest.raises(ChallengeError, match='no variable "Variable" '):
    _restore('mnist', cifar_tf1[1])
  with pytest.raises(ChallengeError, match='no variable "input/init_conv/DW"'):
    _restore(NON_WIDE, mnist_tf1[1])
  # The non-wide original given to the wide network.
  with pytest.raises(ChallengeError, match=r'"unit_1_0/sub1/conv1/DW" has shape '
                                           r'\[3, 3, 16, 16\], the model expects \[3, 3, 16, 160\]'):
    _restore([16, 160, 320, 640], cifar_tf1[1])


def test_a_truncated_checkpoint_is_a_clear_error(mnist_tf1, tmp_path):
  _, source_dir = mnist_tf1
  copy_files(source_dir, str(tmp_path))
  # TF1's index names the files by absolute path: the copy must read its own.
  assert checkpoints.latest(str(tmp_path)) == str(tmp_path / 'checkpoint-24900')
  data = [n for n in os.listdir(tmp_path) if '.data-' in n][0]
  with open(tmp_path / data, 'r+b') as f:
    f.truncate(1000)
  with pytest.raises(ChallengeError, match='truncated or corrupt'):
    _restore('mnist', str(tmp_path))
