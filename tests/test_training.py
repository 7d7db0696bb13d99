"""Training, resuming, distribution, evaluation and the attack pipeline on tiny data."""
import dataclasses
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from common import checkpoints, commands, distribute, training
from common.errors import ChallengeError
from common.evaluation import Evaluator
from conftest import TINY_TEST, quiet, tiny_config
from mnist_challenge.challenge import MNIST


def summary_tags(directory):
  tags = {}
  for path in glob.glob(os.path.join(directory, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags.setdefault(value.tag, set()).add(event.step)
  return tags


def weights(model):
  return [v.numpy() for v in model.trainable_variables]


def test_training_writes_checkpoints_config_and_summaries_then_resumes(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir)
  lines = []
  assert training.train(MNIST, config, log=lambda *a, **k: lines.append(a[0])) == 4
  model_dir = config.model_dir
  assert [os.path.basename(p) for p in
          tf.train.get_checkpoint_state(model_dir).all_model_checkpoint_paths] == [
              'checkpoint-0', 'checkpoint-2', 'checkpoint-4']
  with open(os.path.join(model_dir, 'config.json')) as f:
    assert json.load(f) == dict(config)
  tags = summary_tags(model_dir)
  for tag in ('accuracy adv train', 'accuracy adv', 'xent adv train', 'xent adv',
              'images adv train'):
    assert tags[tag] == {0, 2}, tag
  assert lines[0].startswith('Step 0:') and 'training nat accuracy' in lines[1]
  assert any('examples per second' in line for line in lines)

  # A second run on the same model_dir continues from step 4, optimizer state included.
  lines.clear()
  trainer = training.Trainer(MNIST, config.replace(max_num_training_steps=6),
                             log=lambda *a, **k: lines.append(a[0]))
  assert trainer.run() == 6
  assert lines[0] == f'Resuming from {os.path.join(model_dir, "checkpoint-4")} at step 4'
  assert int(trainer.optimizer.iterations.numpy()) == 6
  assert tf.train.latest_checkpoint(model_dir).endswith('checkpoint-6')
  # Already finished: nothing is done, nothing is overwritten.
  assert training.train(MNIST, config.replace(max_num_training_steps=6), log=lines.append) == 6
  assert 'already trained to step 6' in lines[-1]


def straight_and_resumed(config, tmp_path, stop_at=2):
  """Trainers of MNIST `config`: one run straight through (model_dir tmp_path/a), one
  stopped at `stop_at` and resumed by a new trainer (tmp_path/b)."""
  straight = training.Trainer(MNIST, config.replace(model_dir=str(tmp_path / 'a')), log=quiet)
  straight.run()
  split = config.replace(model_dir=str(tmp_path / 'b'))
  training.train(MNIST, split.replace(max_num_training_steps=stop_at), log=quiet)
  resumed = training.Trainer(MNIST, split, log=quiet)
  resumed.run()
  return straight, resumed


@pytest.mark.versions
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, mnist_dir):
  straight, resumed = straight_and_resumed(tiny_config(tmp_path, mnist_dir), tmp_path)
  for a, b in zip(weights(straight.model), weights(resumed.model)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def first_moments(trainer):
  """Adam's first-moment slots: after one step from zero, (1 - β1) times the gradient, so
  they show the gradient's scale (Adam's first steps themselves are ≈ lr · sign(g))."""
  return [m.numpy() for m in trainer.optimizer._momentums]  # pylint: disable=protected-access


def one_device_and_two_replicas(config, tmp_path):
  """Trainers of MNIST `config` run on one device (model_dir tmp_path/one) and under a
  MirroredStrategy over two logical CPUs (tmp_path/two)."""
  single = training.Trainer(MNIST, config.replace(model_dir=str(tmp_path / 'one')), log=quiet)
  single.run()
  mirrored = training.Trainer(MNIST, config.replace(model_dir=str(tmp_path / 'two')),
                              strategy=distribute.local_strategy(['/cpu:0', '/cpu:1']),
                              log=quiet)
  mirrored.run()
  return single, mirrored


def assert_same_gradient(expected, actual, rtol=1e-5):
  """Each slot equal to a small fraction of its largest entry: float summation order differs,
  a gradient off by the number of replicas (or a missing share) does not pass."""
  for a, b in zip(expected, actual):
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(b, a, rtol=0, atol=rtol * np.abs(a).max())


@pytest.mark.versions
def test_mirrored_strategy_gives_the_same_gradient_and_update_as_one_device(tmp_path, mnist_dir):
  # Same global batch of 8 split over 2 logical CPUs; the summed loss's gradients are summed
  # over replicas, and each example's random start is drawn as on one device, so the
  # gradient (Adam's first moment after one step) and the update must equal the
  # single-device ones.
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=1)
  single = training.Trainer(MNIST, config.replace(model_dir=str(tmp_path / 'one')), log=quiet)
  initial = weights(single.model)
  single.run()
  mirrored_strategy = distribute.local_strategy(['/cpu:0', '/cpu:1'])
  assert mirrored_strategy.num_replicas_in_sync == 2
  mirrored = training.Trainer(MNIST, config.replace(model_dir=str(tmp_path / 'two')),
                              strategy=mirrored_strategy, log=quiet)
  mirrored.run()
  assert_same_gradient(first_moments(single), first_moments(mirrored))
  changed = [np.abs(a - b).max() for a, b in zip(weights(single.model), initial)]
  assert min(changed) > 1e-5  # every variable was updated
  # Adam's first step is lr·g/(|g| + 1e-7): lr·sign(g) where |g| is large, but where |g| is
  # near 1e-7 the summation order's rounding of g moves it (1-2 of 3.2M weights off by 4-6e-6
  # on an AVX2-only CPU); a step of the wrong size or sign elsewhere does not pass.
  for a, b, m in zip(weights(single.model), weights(mirrored.model), first_moments(single)):
    off = np.abs(a - b) > 2e-6
    assert off.mean() < 1e-4 and np.all(np.abs(m[off]) < 1e-6), (off.sum(), m[off])
    assert np.abs(a - b).max() <= 2 * config.learning_rate


def test_a_global_batch_that_does_not_split_over_the_replicas_is_an_error(tmp_path, mnist_dir):
  strategy = distribute.local_strategy(['/cpu:0', '/cpu:1'])
  with pytest.raises(ChallengeError, match='training_batch_size 7 .* does not split evenly '
                                           'over 2 replicas; use a multiple of 2'):
    training.Trainer(MNIST, tiny_config(tmp_path, mnist_dir, training_batch_size=7),
                     strategy=strategy, log=quiet)


def test_unknown_loss_fails_before_training(tmp_path, mnist_dir):
  with pytest.raises(ChallengeError, match='unknown loss_func "hinge"'):
    training.train(MNIST, tiny_config(tmp_path, mnist_dir, loss_func='hinge'))
  assert not os.path.exists(tmp_path / 'model')


@pytest.fixture(scope='module')
def trained(tmp_path_factory, mnist_dir):
  tmp_path = tmp_path_factory.mktemp('trained')
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=30, num_checkpoint_steps=10,
                       training_batch_size=20, epsilon=0.0)
  training.train(MNIST, config, log=quiet)
  return config


def test_eval_once_reports_and_writes_the_original_summaries(trained):
  lines = []
  results = commands.evaluate(MNIST, trained, once=True, poll_seconds=0,
                              log=lambda *a, **k: lines.append(a[0]))
  model = MNIST.build_model(trained)
  assert checkpoints.restore_model(model, tf.train.latest_checkpoint(trained.model_dir)) == 30
  test = MNIST.load_data(trained).test
  predictions = np.argmax(model(test.images), axis=1)
  assert results.nat_correct == int(np.sum(predictions == test.labels))
  assert results.adv_accuracy <= results.nat_accuracy
  # What runs where (the trained config's eval_on_cpu: the CPU), then the original's lines.
  assert lines[0] == ('strategy: one device, 1 worker, 1 replica, CPU; precision float32, '
                      'XLA off, deterministic off')
  assert lines[2:] == ['natural: {:.2f}%'.format(100 * results.nat_accuracy),
                       'adversarial: {:.2f}%'.format(100 * results.adv_accuracy),
                       'avg nat loss: {:.4f}'.format(results.avg_nat_xent),
                       'avg adv loss: {:.4f}'.format(results.avg_adv_xent)]
  tags = summary_tags(os.path.join(trained.model_dir, 'eval'))
  assert set(tags) == {'xent adv eval', 'xent adv', 'xent nat', 'accuracy adv eval',
                       'accuracy adv', 'accuracy nat'}
  assert tags['accuracy nat'] == {30}


def test_eval_once_on_an_empty_model_dir_fails(tmp_path, mnist_dir):
  with pytest.raises(ChallengeError, match='nothing to evaluate'):
    commands.evaluate(MNIST, tiny_config(tmp_path, mnist_dir), once=True, poll_seconds=0)


def test_eval_loop_skips_a_checkpoint_that_vanished(trained, monkeypatch):
  real = tf.train.latest_checkpoint(trained.model_dir)
  answers = iter([real.replace('checkpoint-30', 'checkpoint-9999'), real])
  monkeypatch.setattr(checkpoints, 'latest', lambda model_dir: next(answers, real))
  lines = []
  commands.evaluate(MNIST, trained, once=False, poll_seconds=0, max_polls=2,
                    log=lambda *a, **k: lines.append(a[0]))
  assert any('checkpoint-9999 could not be read' in line for line in lines)
  assert sum(line.startswith('natural: ') for line in lines) == 1  # evaluated once
  assert any(line.startswith('Waiting for the next checkpoint') for line in lines)


def test_pgd_attack_then_run_attack_scores_the_stored_examples(trained):
  config = trained.replace(epsilon=0.3, k=5, a=0.05)
  results = commands.pgd_attack(MNIST, config, log=quiet)
  x_adv = np.load(config.store_adv_path)
  test = MNIST.load_data(config).test
  assert x_adv.dtype == np.float32 and x_adv.shape == (TINY_TEST, 784)
  assert np.abs(x_adv - test.images).max() <= 0.3 + 1e-6
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  lines = []
  accuracy = commands.run_attack(MNIST, config, log=lines.append)
  assert accuracy == pytest.approx(results.adv_accuracy)
  assert lines == ['Accuracy: {:.2f}%'.format(100 * accuracy),
                   f'Output saved at {config.pred_path}']
  predictions = np.load(config.pred_path)
  assert predictions.dtype == np.int64 and predictions.shape == (TINY_TEST,)
  assert np.mean(predictions == test.labels) == accuracy


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
  import keras
  for name, layers in (('missing', [keras.layers.Dense(10)]),
                       ('shape', [keras.layers.Reshape((28, 28, 1)), keras.layers.Conv2D(16, 5)])):
    other = keras.Sequential([keras.Input((784,))] + layers)
    model_dir = str(tmp_path / name)
    path = checkpoints.manager(
        tf.train.Checkpoint(model=other, step=tf.Variable(3, dtype=tf.int64)), model_dir).save()
    with pytest.raises(ChallengeError, match='does not hold a mnist_challenge_model: '):
      checkpoints.restore_model(MNIST.build_model(None), path)
    # train.py resuming on such a model_dir says the same, not TF's assertion.
    trainer = training.Trainer(MNIST, MNIST.load_config(overrides={'model_dir': model_dir}),
                               log=quiet)
    with pytest.raises(ChallengeError,
                       match='does not hold a mnist_challenge_model training state'):
      trainer.restore_latest()


def test_a_seeded_evaluation_repeats_exactly_and_restarts_only_lower_accuracy(trained):
  model = MNIST.build_model(trained)
  checkpoints.restore_model(model, tf.train.latest_checkpoint(trained.model_dir))
  test = MNIST.load_data(trained).test
  params = dataclasses.replace(MNIST.attack_params(trained), epsilon=0.1, num_steps=3,
                               step_size=0.03)
  evaluator = Evaluator(model, params, seed=5)
  first = evaluator.attack(test, 25, keep_adversarial=True)  # 3 batches, the last of 10
  again = Evaluator(model, params, seed=5).attack(test, 25, keep_adversarial=True)
  np.testing.assert_array_equal(first.adversarial, again.adversarial)
  other = Evaluator(model, params, seed=6).attack(test, 25, keep_adversarial=True)
  assert not np.array_equal(first.adversarial, other.adversarial)
  assert evaluator._attack_rows.experimental_get_tracing_count() <= 2  # no retracing
  for restarts in (2, 4):
    worst = Evaluator(model, params, restarts=restarts, seed=5).attack(test, 25)
    assert worst.nat_correct == first.nat_correct
    assert worst.adv_correct <= first.adv_correct


@pytest.mark.versions
def test_the_training_step_is_compiled_once(tmp_path, mnist_dir):
  trainer = training.Trainer(MNIST, tiny_config(tmp_path, mnist_dir, max_num_training_steps=6),
                             log=quiet)
  trainer.run()
  assert trainer.train_step.experimental_get_tracing_count() == 1
