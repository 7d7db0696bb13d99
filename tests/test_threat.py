"""The threat model (common/attacks/threat.py): each operation of ℓ∞ and ℓ2 against an
independent numpy transcription, ℓ2 PGD against numpy's steps on a linear model, and the
`norm` key through the commands that take it (and a one-line error where a command cannot
honour it)."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from common import commands, guard, methods, submission, training
from common.attacks import autoattack, pgd
from common.attacks.threat import NORMS, ThreatModel, check_norm
from common.errors import ChallengeError, SubmissionPerturbationError
from conftest import TINY_TEST, quiet, tiny_config
from cifar10_challenge.challenge import CIFAR10
from mnist_challenge.challenge import MNIST

RNG_SEED = 31
RNG = np.random.default_rng(RNG_SEED)


def numpy_project(norm, x, x_nat, epsilon, low, high):
  x, x_nat = np.float64(x), np.float64(x_nat)
  if norm == 'linf':
    x = np.clip(x, x_nat - epsilon, x_nat + epsilon)
  else:
    delta = (x - x_nat).reshape(len(x), -1)
    length = np.sqrt((delta ** 2).sum(1, keepdims=True))
    delta = delta * np.minimum(1.0, epsilon / np.maximum(length, 1e-10))
    x = x_nat + delta.reshape(x.shape)
  return np.clip(x, low, high)


def numpy_step(norm, x, grad, size):
  x, grad = np.float64(x), np.float64(grad)
  if norm == 'linf':
    return x + size * np.sign(grad)
  length = np.sqrt((grad.reshape(len(grad), -1) ** 2).sum(1)).reshape((-1,) + (1,) * (
      grad.ndim - 1))
  return x + size * grad / (length + 1e-10)


def numpy_distance(norm, delta):
  flat = np.float64(delta).reshape(len(delta), -1)
  return np.abs(flat).max(1) if norm == 'linf' else np.sqrt((flat ** 2).sum(1))


@pytest.mark.parametrize('norm', sorted(NORMS))
@pytest.mark.parametrize('shape', [(6, 784), (6, 8, 8, 3)], ids=['flat', 'images'])
def test_project_step_and_distance_are_their_numpy_transcriptions(norm, shape):
  epsilon = 0.3 if norm == 'linf' else 1.5
  x_nat = RNG.uniform(0, 1, shape).astype(np.float32)
  x = (x_nat + RNG.normal(0, 0.4, shape)).astype(np.float32)
  x[0] = x_nat[0] + 0.01 * np.sign(RNG.normal(size=shape[1:]))  # inside every ball
  threat = ThreatModel(norm, epsilon, 0.0, 1.0)
  projected = threat.project(tf.constant(x), tf.constant(x_nat)).numpy()
  np.testing.assert_allclose(projected, numpy_project(norm, x, x_nat, epsilon, 0, 1),
                             rtol=1e-6, atol=1e-6)
  assert (numpy_distance(norm, projected - x_nat) <= epsilon * (1 + 1e-6)).all()
  # Inside the ball: unchanged (ℓ2 up to the rounding of x_nat + (x - x_nat)).
  np.testing.assert_allclose(projected[0], np.clip(x[0], 0, 1), rtol=0, atol=1e-7)
  grad = RNG.normal(size=shape).astype(np.float32)
  grad[1] = 0.0  # no gradient: no step
  stepped = threat.ascent_step(tf.constant(x), tf.constant(grad), 0.05).numpy()
  np.testing.assert_allclose(stepped, numpy_step(norm, x, grad, 0.05), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(stepped[1], x[1])
  np.testing.assert_allclose(numpy_distance(norm, stepped - x)[2:], 0.05, rtol=1e-5)
  np.testing.assert_allclose(threat.distance(x - x_nat), numpy_distance(norm, x - x_nat),
                             rtol=1e-6)
  inside = threat.contains(projected, x_nat, 1e-6)
  assert inside.all() and not threat.contains(x, x_nat)[1:].all()
  # shrink: the projection of a perturbation around 0, without the pixel range.
  delta = x - x_nat
  shrunk = threat.shrink(tf.constant(delta)).numpy()
  np.testing.assert_allclose(shrunk, numpy_project(norm, delta, 0 * delta, epsilon, -np.inf,
                                                   np.inf), rtol=1e-6, atol=1e-6)
  assert np.any(x_nat + shrunk > 1) or np.any(x_nat + shrunk < 0)  # no pixel range


@pytest.mark.parametrize('norm', sorted(NORMS))
def test_the_random_start_lies_on_the_norms_ball_and_repeats(norm):
  threat = ThreatModel(norm, 2.0)
  seed = tf.constant([4, 2], tf.int64)
  noise = threat.noise([5, 28, 28, 1], seed, 2.0).numpy()
  again = threat.noise([5, 28, 28, 1], seed, 2.0).numpy()
  np.testing.assert_array_equal(noise, again)
  lengths = numpy_distance(norm, noise)
  if norm == 'linf':
    assert (np.abs(noise) <= 2.0).all() and (lengths > 1.9).all()
    np.testing.assert_array_equal(noise, tf.random.stateless_uniform(
        [5, 28, 28, 1], seed, -2.0, 2.0).numpy())  # the original's draw, op for op
  else:
    np.testing.assert_allclose(lengths, 2.0, rtol=1e-5)  # on the sphere
    one = threat.noise([28, 28, 1], seed, 2.0, batched=False).numpy()
    np.testing.assert_allclose(np.sqrt((one ** 2).sum()), 2.0, rtol=1e-5)
  assert len({noise[i].tobytes() for i in range(5)}) == 5
  # Through pgd.random_start, per example: each example's start from (seed, its index).
  x = tf.constant(RNG.uniform(0.3, 0.7, (4, 784)).astype(np.float32))
  starts = pgd.random_start(x, 0.2, 0.0, 1.0, seed, examples=tf.constant([7, 8, 9, 10],
                                                                          tf.int64), norm=norm)
  shifted = pgd.random_start(x[1:], 0.2, 0.0, 1.0, seed, examples=tf.constant(
      [8, 9, 10], tf.int64), norm=norm)
  np.testing.assert_array_equal(starts.numpy()[1:], shifted.numpy())
  distances = numpy_distance(norm, starts.numpy() - x.numpy())
  if norm == 'linf':  # in the box, and reaching near its faces
    assert (distances <= 0.2 + 1e-7).all() and (distances > 0.19).all()
  else:  # on the sphere
    np.testing.assert_allclose(distances, 0.2, rtol=1e-5)


def test_an_unknown_norm_is_refused():
  with pytest.raises(ChallengeError, match='unknown norm "l3"; use one of: l2, linf|linf, l2'):
    check_norm('l3')
  with pytest.raises(ChallengeError, match='config key "norm" must be one of linf, l2, found '
                                           '"l3"'):
    MNIST.load_config(overrides={'norm': 'l3'})


def test_each_challenge_has_its_documented_l2_radius_and_step():
  mnist = MNIST.attack_params(MNIST.load_config(overrides={'norm': 'l2'}))
  assert (mnist.norm, mnist.epsilon, mnist.step_size) == ('l2', 2.0, 2.5 * 2.0 / 40)
  cifar = CIFAR10.attack_params(CIFAR10.load_config(overrides={'norm': 'l2',
                                                               'l2_step_size': 10.0}))
  assert (cifar.norm, cifar.epsilon, cifar.step_size) == ('l2', 127.5, 10.0)
  linf = MNIST.attack_params(MNIST.load_config())
  assert (linf.norm, linf.epsilon, linf.step_size) == ('linf', 0.3, 0.01)  # the original's


def numpy_l2_pgd(weights, bias, x_nat, labels, start, epsilon, step, steps):
  """ℓ2 PGD on logits = x·W + b, maximising the summed cross-entropy, in numpy (float64)."""
  x = np.float64(start)
  for _ in range(steps):
    logits = x @ weights + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(weights.shape[1])[labels]) @ weights.T
    x = numpy_project('l2', numpy_step('l2', x, grad, step), x_nat, epsilon, 0.0, 1.0)
  return x


def test_l2_pgd_takes_numpys_steps_on_a_linear_model():
  weights = RNG.normal(0, 0.5, (20, 10)).astype(np.float32)
  bias = RNG.normal(0, 0.1, 10).astype(np.float32)
  x_nat = RNG.uniform(0, 1, (8, 20)).astype(np.float32)
  labels = RNG.integers(0, 10, 8)
  params = pgd.PGDParams(1.0, 12, 0.2, True, 'xent', norm='l2')
  start = pgd.starting_points(tf.constant(x_nat), params, tf.constant([1, 2], tf.int64))[0]
  x_adv = pgd.pgd(lambda x: x @ weights + bias, tf.constant(x_nat), tf.constant(labels),
                  params, start=start).numpy()
  expected = numpy_l2_pgd(np.float64(weights), np.float64(bias), x_nat, labels,
                          start.numpy(), 1.0, 0.2, 12)
  np.testing.assert_allclose(x_adv, expected, atol=2e-5)  # per example, float32 rounding
  assert (numpy_distance('l2', x_adv - x_nat) <= 1.0 + 1e-5).all()
  assert numpy_distance('linf', x_adv - x_nat).max() > 0.3  # not an ℓ∞ ball in disguise


# --- the norm through the commands -------------------------------------------------------

@pytest.fixture(scope='module')
def l2_model(tmp_path_factory, mnist_dir):
  """A tiny MNIST model trained two steps with ℓ2 PGD, and its config (norm l2)."""
  config = tiny_config(tmp_path_factory.mktemp('l2'), mnist_dir, norm='l2',
                       max_num_training_steps=2, num_checkpoint_steps=2, k=3,
                       num_eval_examples=TINY_TEST)
  trainer = training.Trainer(MNIST, config, log=quiet)
  assert trainer.attack_params.norm == 'l2' and trainer.attack_params.epsilon == 2.0
  trainer.run()
  return config


def test_pgd_attack_and_run_attack_honour_l2(l2_model):
  config = l2_model
  commands.pgd_attack(MNIST, config, log=quiet)
  test = MNIST.load_data(config).test
  x_adv = np.load(config.store_adv_path)
  distances = numpy_distance('l2', x_adv - test.images)
  assert (distances <= 2.0 + 1e-4).all() and distances.min() > 1.0
  assert numpy_distance('linf', x_adv - test.images).max() > 0.3 + 1e-4
  assert commands.run_attack(MNIST, config, log=quiet) is not None  # valid as ℓ2
  with pytest.raises(SubmissionPerturbationError, match='maximum perturbation allowed: 0.3'):
    commands.run_attack(MNIST, config.replace(norm='linf'), log=quiet)
  beyond = test.images + 1.01 * (x_adv - test.images) * (2.0 / distances.max())
  np.save(config.store_adv_path, np.clip(beyond, 0, 1).astype(np.float32))
  with pytest.raises(SubmissionPerturbationError, match=r'allowed: 2.0 \(ℓ2 distance\)'):
    submission.load(config.store_adv_path, test.images, 2.0, 1.0, 'l2')


def test_eval_evaluate_autoattack_and_the_guard_attack_in_l2(l2_model, monkeypatch):
  config = l2_model
  results = commands.evaluate(MNIST, config.replace(num_eval_examples=20), once=True,
                              log=quiet)
  assert results.adv_accuracy <= results.nat_accuracy
  logged = []
  table = commands.evaluate_table(MNIST, config, method=('FGSM', 'AutoAttack'),
                                  num_examples=10, log=logged.append)
  assert any('ε 2 (ℓ2)' in line for line in logged)
  by_method = {result.row.method: result for result in reversed(table)}  # the white-box rows
  assert by_method['FGSM'].accuracy is not None
  assert by_method['AutoAttack'].accuracy <= by_method['FGSM'].accuracy
  logged, threats = [], []

  class Recording(autoattack.AutoAttack):  # the chain's own ℓ2: tests/test_autoattack_l2.py

    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      threats.append(self.threat)
  monkeypatch.setattr(autoattack, 'AutoAttack', Recording)
  commands.run_autoattack(MNIST, config, num_examples=TINY_TEST, iterations=2,
                          log=logged.append)
  assert threats == [ThreatModel('l2', 2.0, 0.0, 1.0)]
  assert any('ℓ2 ε 2,' in line for line in logged)
  with open(os.path.join(config.model_dir, 'autoattack', 'autoattack.json')) as f:
    saved = json.load(f)
  assert (saved['norm'], saved['epsilon']) == ('l2', 2.0)
  test = MNIST.load_data(config).test
  assert np.all(numpy_distance('l2', np.load(config.store_adv_path) - test.images) <= 2.0)
  held_out = guard.check_params(MNIST.attack_params(config), 10)  # the guard's PGD-10
  assert (held_out.norm, held_out.epsilon, held_out.step_size) == ('l2', 2.0, 0.5)


def test_training_methods_take_the_norm(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, norm='l2')
  for changes in ({}, {'training_method': 'trades'}, {'training_attack': 'fgsm_rs'},
                  {'training_method': 'yopo'}, {'training_method': 'mma'},
                  {'training_method': 'bilateral'}, {'training_method': 'natural'},
                  {'training_method': 'jacobian', 'jacobian_adversarial_fraction': 0.5},
                  {'training_method': 'cross_lipschitz',
                   'cross_lipschitz_adversarial_fraction': 0.5}):
    # (their ℓ2 steps: test_training_l2.py; the regularisers' share: PGD's ℓ2 steps)
    method = methods.build(MNIST, config.replace(**changes),
                                    MNIST.attack_params(config))
    assert method.params.norm == 'l2' and method.params.epsilon == 2.0
  # One training step's examples lie in the ℓ2 ball and outside the ℓ∞ one.
  trainer = training.Trainer(MNIST, config, log=quiet)
  data = MNIST.load_data(config).train.head(8)
  batch = (tf.constant(data.images), tf.constant(data.labels))
  _, _, x_adv = trainer.train_step(batch)
  x_adv = trainer.strategy.experimental_local_results(x_adv)[0].numpy()
  assert (numpy_distance('l2', x_adv - data.images) <= 2.0 + 1e-4).all()
  assert numpy_distance('linf', x_adv - data.images).max() > 0.3 + 1e-4
