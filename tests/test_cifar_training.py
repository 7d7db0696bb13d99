"""CIFAR-10 training: the loop on the non-wide model (one device and two), batch norm in the
training-time attack, the TF1 momentum optimizer, and the attack pipeline on tiny data."""
import dataclasses
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge.challenge import CIFAR10
from common import commands, data, distribute, optimizers, training
from common.attacks import pgd
from common.data import Datasets, Split
from common.errors import ChallengeError, InvalidSubmission
from conftest import CIFAR_TEST, make_cifar_arrays, quiet, tiny_cifar_config


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, cifar_dir):
  # Weights, BN averages, momentum accumulators, the schedule's step, data order,
  # augmentation and random starts must all continue where they stopped.
  schedule = [[0, 0.1], [2, 0.02]]  # the rate drops at the resumption point
  straight = training.Trainer(
      CIFAR10, tiny_cifar_config(tmp_path / 'a', cifar_dir, max_num_training_steps=4,
                                 step_size_schedule=schedule), log=quiet)
  initial = [v.numpy() for v in straight.model.weights]
  assert straight.run() == 4
  split = tiny_cifar_config(tmp_path / 'b', cifar_dir, max_num_training_steps=4,
                            step_size_schedule=schedule)
  training.train(CIFAR10, split.replace(max_num_training_steps=2), log=quiet)
  resumed = training.Trainer(CIFAR10, split, log=quiet)
  assert resumed.run() == 4
  assert int(resumed.optimizer.iterations.numpy()) == 4
  assert os.path.basename(tf.train.latest_checkpoint(split.model_dir)) == 'checkpoint-4'
  for a, b, start in zip(straight.model.weights, resumed.model.weights, initial):
    assert not np.array_equal(a.numpy(), start), a.path  # BN averages included
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5, err_msg=a.path)
  for a, b in zip(straight.optimizer.accumulators, resumed.optimizer.accumulators):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5)


def test_training_on_with_other_filters_stops_naming_the_key(tmp_path, cifar_dir):
  config = tiny_cifar_config(tmp_path, cifar_dir, max_num_training_steps=2)
  training.train(CIFAR10, config, log=quiet)
  saved = os.path.join(config.model_dir, 'config.json')
  with pytest.raises(ChallengeError, match=re.escape(
      f'{saved} says it was trained with "filters": [16, 16, 32, 64], not [16, 32, 64, 128]: '
      f'pass --config {saved}')):
    training.train(CIFAR10, config.replace(filters=[16, 32, 64, 128], max_num_training_steps=3),
                   log=quiet)
  assert CIFAR10.load_config(saved).filters == [16, 16, 32, 64]
  assert os.path.basename(tf.train.latest_checkpoint(config.model_dir)) == 'checkpoint-2'


@pytest.mark.versions
def test_mirrored_training_keeps_every_replica_identical(tmp_path, cifar_dir):
  # Keras 3 makes BN moving averages with aggregation NONE; assigned in place under a
  # MirroredStrategy, replica copies would drift apart. The trainer averages them.
  strategy = distribute.local_strategy(['/cpu:0', '/cpu:1'])
  config = tiny_cifar_config(tmp_path, cifar_dir, max_num_training_steps=2,
                             training_attack_batch_norm='batch_update')
  trainer = training.Trainer(CIFAR10, config, strategy=strategy, log=quiet)
  initial = [v.numpy() for v in trainer.model.non_trainable_variables]
  trainer.run()
  for variable in trainer.model.weights:
    copies = [t.numpy() for t in strategy.experimental_local_results(variable.value)]
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1], err_msg=variable.path)
  assert not np.array_equal(initial[0], trainer.model.non_trainable_variables[0].numpy())
  assert all(np.isfinite(v.numpy()).all() for v in trainer.model.weights)


def with_first_batch(config, images, labels):
  """CIFAR10 without augmentation, whose training set makes global batch 0 exactly
  (images, labels), in that order."""
  size = len(labels)
  # Which training images global batch 0 takes, in order: labels that are the indices.
  index_split = Split(np.zeros((size, 1), np.float32), np.arange(size))
  order = next(iter(data.training_batches(index_split, size,
                                          CIFAR10.data_seed(config))))[1].numpy()
  train = Split(np.zeros((size, 32, 32, 3), np.float32), np.zeros(size, np.int64))
  train.images[order], train.labels[order] = images, labels
  return dataclasses.replace(CIFAR10, augment=None,
                             load_data=lambda _: Datasets(train=train, test=train))


@pytest.mark.versions
def test_two_replicas_on_identical_halves_compute_one_devices_gradient(tmp_path, cifar_dir):
  # The path train.py takes (input pipeline, attack with batch statistics, the loss each
  # replica minimises, the summed update) on a global batch of two identical halves [A; A]:
  # each replica sees A, so its batch statistics are those of the whole batch, and the
  # step must be one device's step on A (the same examples, the same mean loss). TF1
  # momentum's accumulator after one step is the gradient itself: equal accumulators mean
  # the replicas' losses add up to the original's mean xent + weight decay, not to a
  # multiple or a fraction of it. (One device on [A; A] is the same step mathematically,
  # but after the attack its batch statistics over 8 copies round differently, enough to
  # move some gradients of this fresh network by ~1%.)
  images, labels = make_cifar_arrays(4, seed=7)
  images = images.astype(np.float32)
  config = tiny_cifar_config(tmp_path, cifar_dir, max_num_training_steps=1, weight_decay=0.01,
                             random_start=False)  # random starts would differ between halves
  one = training.Trainer(with_first_batch(config, images, labels),
                         config.replace(model_dir=str(tmp_path / 'one'), training_batch_size=4),
                         log=quiet)
  one.run()
  two = training.Trainer(
      with_first_batch(config, np.concatenate([images, images]), np.concatenate([labels] * 2)),
      config.replace(model_dir=str(tmp_path / 'two'), training_batch_size=8),
      strategy=distribute.local_strategy(['/cpu:0', '/cpu:1']), log=quiet)
  two.run()
  for a, b in zip(one.optimizer.accumulators, two.optimizer.accumulators):
    a, b = a.numpy(), b.numpy()
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
  for a, b in zip(one.model.weights, two.model.weights):  # BN averages included
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


def _trainer_after_one_step(tmp_path, cifar_dir, mode, **changes):
  config = tiny_cifar_config(tmp_path / mode, cifar_dir, training_attack_batch_norm=mode,
                             random_start=False, **changes)
  trainer = training.Trainer(CIFAR10, config, log=quiet)
  batch = next(iter(tf.data.Dataset.from_tensor_slices(
      (np.random.default_rng(3).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32),
       np.arange(8) % 10)).batch(8)))
  copy = keras.models.clone_model(trainer.model)
  copy.set_weights(trainer.model.get_weights())
  return trainer, copy, batch


@pytest.mark.parametrize('mode, attack_calls', [('batch', 1), ('batch_update', 4),
                                                ('inference', 1)])
def test_attack_batch_norm_modes_update_the_moving_averages_as_documented(
    tmp_path, cifar_dir, mode, attack_calls):
  # step_size 0 keeps every attack iterate at x: the averages after one step are those of
  # `attack_calls` train-mode passes over x (3 attack steps + the update's forward pass,
  # or the forward pass alone).
  trainer, copy, (x, y) = _trainer_after_one_step(tmp_path, cifar_dir, mode, num_steps=3,
                                                  step_size=0.0)
  trainer.train_step((x, y))
  for _ in range(attack_calls):
    copy(x, training=True)
  for ours, expected in zip(trainer.model.non_trainable_variables, copy.non_trainable_variables):
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6,
                               err_msg=ours.path)


@pytest.mark.parametrize('mode, training_mode', [('batch', True), ('batch_update', True),
                                                 ('inference', False)])
def test_the_training_attack_uses_batch_statistics_or_the_averages(
    tmp_path, cifar_dir, mode, training_mode):
  trainer, copy, (x, y) = _trainer_after_one_step(tmp_path, cifar_dir, mode)
  # Make the moving averages differ from batch statistics, so the two modes disagree.
  for variable in copy.non_trainable_variables + trainer.model.non_trainable_variables:
    variable.assign(variable * 3.0 + 1.0)
  expected = pgd.pgd(lambda inputs: copy(inputs, training=training_mode), x, y,
                        trainer.attack_params)
  _, _, x_adv = trainer.train_step((x, y))
  np.testing.assert_allclose(x_adv, expected, atol=1e-3)
  other = pgd.pgd(lambda inputs: copy(inputs, training=not training_mode), x, y,
                     trainer.attack_params)
  assert np.abs(x_adv.numpy() - other.numpy()).max() > 1.0


def test_unknown_attack_batch_norm_mode_is_an_error(tmp_path, cifar_dir):
  config = tiny_cifar_config(tmp_path, cifar_dir, training_attack_batch_norm='train')
  with pytest.raises(ChallengeError, match='"train".*batch, batch_update, inference'):
    training.Trainer(CIFAR10, config, log=quiet)


def test_tf1_momentum_scales_the_whole_velocity_when_the_rate_drops():
  schedule = optimizers.piecewise_schedule([[0, 0.1], [2, 0.01]])
  variable = keras.Variable(np.zeros(1, np.float32))
  optimizer = optimizers.TF1Momentum(schedule, 0.9)
  gradients = [1.0, 2.0, -1.0, 0.5, 3.0]
  expected, accumulator = 0.0, 0.0
  for step, gradient in enumerate(gradients):
    rate = 0.1 if step <= 2 else 0.01  # piecewise_constant: rate 0 up to and at boundary
    accumulator = 0.9 * accumulator + gradient
    expected -= rate * accumulator
    optimizer.apply_gradients([(tf.constant([gradient]), variable)])
    assert float(variable.numpy()[0]) == pytest.approx(expected, rel=1e-6)
  # Keras' SGD keeps lr·grad in its velocity: after the drop it moves differently.
  sgd_variable = keras.Variable(np.zeros(1, np.float32))
  sgd = keras.optimizers.SGD(optimizers.piecewise_schedule([[0, 0.1], [2, 0.01]]), 0.9)
  for gradient in gradients:
    sgd.apply_gradients([(tf.constant([gradient]), sgd_variable)])
  assert abs(float(sgd_variable.numpy()[0]) - expected) > 1e-3


@pytest.mark.parametrize('schedule, message', [
    ([], 'non-empty list'), ([[0, 0.1], [0, 0.01]], 'increasing'),
    ([[100, 0.1]], 'start at step 0'), ([[0, -1.0]], 'non-negative'),
    ([[0, 0.1, 5]], 'pairs'), ([[0.5, 0.1]], 'integer steps')])
def test_a_malformed_schedule_is_an_error_naming_the_key(tmp_path, cifar_dir, schedule, message):
  config = tiny_cifar_config(tmp_path, cifar_dir, step_size_schedule=schedule)
  with pytest.raises(ChallengeError, match=f'"step_size_schedule".*{message}'):
    training.Trainer(CIFAR10, config, log=quiet)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, cifar_dir):
  tmp_path = tmp_path_factory.mktemp('cifar_trained')
  config = tiny_cifar_config(tmp_path, cifar_dir, max_num_training_steps=2)
  training.train(CIFAR10, config, log=quiet)
  return config


def test_eval_pgd_attack_and_run_attack_agree(trained):
  results = commands.evaluate(CIFAR10, trained, once=True, log=quiet)
  attacked = commands.pgd_attack(CIFAR10, trained, log=quiet)
  assert attacked.nat_correct == results.nat_correct
  assert attacked.adv_correct <= attacked.nat_correct
  x_adv = np.load(trained.store_adv_path)
  x_nat = CIFAR10.load_data(trained).test.images
  assert x_adv.dtype == np.float32 and x_adv.shape == (CIFAR_TEST, 32, 32, 3)
  assert np.abs(x_adv - x_nat).max() <= 8.0 + 1e-4
  assert x_adv.min() >= 0 and x_adv.max() <= 255
  assert np.abs(x_adv - x_nat).max() > 7.0  # the attack used its budget
  accuracy = commands.run_attack(CIFAR10, trained, log=quiet)
  predictions = np.load(trained.pred_path)
  labels = CIFAR10.load_data(trained).test.labels
  assert predictions.shape == (CIFAR_TEST,) and accuracy == np.mean(predictions == labels)
  assert accuracy == attacked.adv_accuracy


@pytest.mark.parametrize('change, message', [
    (lambda x: np.clip(x + 8.5, 0, 255), 'maximum perturbation found'),
    (lambda x: np.where(x > 240, 256.0, x), 'Invalid pixel range'),
    (lambda x: x[:-1], r'Invalid shape: expected \(50,32,32,3\)'),
    (lambda x: x / 255.0, 'maximum perturbation found'),  # scaled to [0, 1] by mistake
    (lambda x: np.where(x > 240, np.nan, x), 'NaN')])
def test_run_attack_rejects_invalid_submissions(trained, tmp_path, change, message):
  x_nat = CIFAR10.load_data(trained).test.images
  path = str(tmp_path / 'submission.npy')
  np.save(path, change(x_nat))
  config = trained.replace(store_adv_path=path, pred_path=str(tmp_path / 'pred.npy'))
  with pytest.raises(InvalidSubmission, match=message):
    commands.run_attack(CIFAR10, config, log=quiet)
  assert not os.path.exists(tmp_path / 'pred.npy')
