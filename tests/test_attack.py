"""ℓ∞ PGD: the three operations, the loop, the losses, and the original's attack object."""
import numpy as np
import pytest
import tensorflow as tf

from common import losses
from common.attacks import pgd
from common.attacks.pgd import PGDParams
from common.errors import ChallengeError
from mnist_challenge.model import build_model
from mnist_challenge.pgd_attack import LinfPGDAttack

RNG_SEED = 1  # conftest reseeds RNG with it before each test
RNG = np.random.default_rng(RNG_SEED)


@pytest.fixture(scope='module')
def mnist_model():
  tf.keras.utils.set_random_seed(3)
  return build_model()


def batch(n=16):
  x = RNG.uniform(0, 1, (n, 784)).astype(np.float32)
  x[:, :100] = 0.0  # pixels at the range's edges, where clipping matters
  x[:, 100:200] = 1.0
  return x, RNG.integers(0, 10, n).astype(np.int64)


def test_random_start_stays_in_ball_and_range():
  x, _ = batch()
  start = pgd.random_start(tf.constant(x), 0.3, 0.0, 1.0).numpy()
  assert np.abs(start - x).max() <= 0.3 + 1e-7
  assert start.min() >= 0.0 and start.max() <= 1.0
  assert np.abs(start - x).max() > 0.2  # it moved


def test_random_start_is_reproducible_with_a_stateless_seed():
  x = tf.constant(batch()[0])
  a = pgd.random_start(x, 0.3, 0.0, 1.0, seed=tf.constant([1, 2], tf.int64))
  b = pgd.random_start(x, 0.3, 0.0, 1.0, seed=tf.constant([1, 2], tf.int64))
  c = pgd.random_start(x, 0.3, 0.0, 1.0, seed=tf.constant([1, 3], tf.int64))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 0


def test_random_start_of_a_batch_split_over_replicas_equals_the_whole_batchs():
  # Each replica draws the whole global batch's noise and keeps its rows: every example
  # starts where it would on one device, however the batch is split.
  x = tf.constant(batch()[0][:6])
  seed = tf.constant([4, 9], tf.int64)
  whole = pgd.random_start(x, 0.3, 0.0, 1.0, seed=seed)
  for parts in (2, 3):
    rows = 6 // parts
    pieces = [pgd.random_start(x[i * rows:(i + 1) * rows], 0.3, 0.0, 1.0, seed=seed,
                                  rows=(i * rows, 6)) for i in range(parts)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_sign_step_and_project():
  x = tf.constant([[0.5, 0.5, 0.95, 0.02]])
  step = pgd.sign_step(x, tf.constant([[2.0, -0.1, 1.0, 0.0]]), 0.1).numpy()
  np.testing.assert_allclose(step, [[0.6, 0.4, 1.05, 0.02]], rtol=1e-6)
  x_nat = tf.constant([[0.45, 0.5, 0.9, 0.0]])
  projected = pgd.project(tf.constant([[0.6, 0.3, 1.05, -0.5]]), x_nat, 0.1, 0.0, 1.0)
  # ε-ball first ([0.35,0.55], [0.4,0.6], [0.8,1.0], [-0.1,0.1]), then the pixel range.
  np.testing.assert_allclose(projected.numpy(), [[0.55, 0.4, 1.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize('loss_func', ['xent', 'cw'])
def test_pgd_respects_epsilon_and_pixel_range(mnist_model, loss_func):
  x, y = batch()
  params = PGDParams(0.3, 10, 0.05, True, loss_func)
  x_adv = pgd.make_pgd(lambda v: mnist_model(v, training=False), params)(x, y).numpy()
  assert x_adv.dtype == np.float32
  assert np.abs(x_adv - x).max() <= 0.3 + 1e-6
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  loss = lambda v: losses.attack_loss(loss_func)(y, mnist_model(v)).numpy().sum()
  assert loss(x_adv) > loss(x)  # the attack ascends its loss


def test_pgd_with_zero_epsilon_returns_the_input(mnist_model):
  x, y = batch()
  x_adv = pgd.pgd(lambda v: mnist_model(v), tf.constant(x), y, PGDParams(0.0, 5, 0.01))
  np.testing.assert_array_equal(x_adv.numpy(), x)


def test_zero_steps_with_random_start_stays_in_ball(mnist_model):
  x, y = batch()
  x_adv = pgd.pgd(lambda v: mnist_model(v), tf.constant(x), y, PGDParams(0.3, 0, 0.01))
  assert 0 < np.abs(x_adv.numpy() - x).max() <= 0.3 + 1e-6
  assert x_adv.numpy().min() >= 0 and x_adv.numpy().max() <= 1


def numpy_pgd_linear(w, b, x_nat, y, eps, k, a, loss_func):
  """The original's numpy loop, with the analytic input gradient of a linear model."""
  x = x_nat.astype(np.float64).copy()
  onehot = np.eye(w.shape[1])[y]
  for _ in range(k):
    logits = x @ w + b
    if loss_func == 'xent':
      p = np.exp(logits - logits.max(1, keepdims=True))
      p /= p.sum(1, keepdims=True)
      grad = (p - onehot) @ w.T
    else:  # cw: -relu(correct - max_wrong + 50)
      wrong = np.argmax((1 - onehot) * logits - 1e4 * onehot, axis=1)
      active = (logits[np.arange(len(y)), y] - logits[np.arange(len(y)), wrong] + 50) > 0
      grad = -(w[:, y].T - w[:, wrong].T) * active[:, None]
    x = x + a * np.sign(grad)
    x = np.clip(np.clip(x, x_nat - eps, x_nat + eps), 0, 1)
  return x


@pytest.mark.parametrize('loss_func', ['xent', 'cw'])
def test_pgd_steps_equal_a_numpy_implementation(loss_func):
  w = RNG.normal(0, 1, (20, 5)).astype(np.float32)
  b = RNG.normal(0, 1, 5).astype(np.float32)
  x = RNG.uniform(0, 1, (32, 20)).astype(np.float32)
  y = RNG.integers(0, 5, 32)
  params = PGDParams(0.1, 7, 0.03, random_start=False, loss_func=loss_func)
  ours = pgd.make_pgd(lambda v: tf.matmul(v, w) + b, params)(x, y).numpy()
  reference = numpy_pgd_linear(w, b, x, y, 0.1, 7, 0.03, loss_func)
  np.testing.assert_allclose(ours, reference, atol=1e-5)
  assert np.abs(ours - x).max() > 0.05


def test_cw_loss_values():
  logits = np.array([[5.0, 1.0, 3.0], [0.0, 70.0, 2.0], [-1.0, -2.0, -3.0]], np.float32)
  labels = np.array([0, 2, 1])
  # correct - max wrong + 50: 5-3+50=52; 2-70+50=-18 -> 0; -2-(-1)+50=49.
  np.testing.assert_allclose(losses.cw(labels, logits).numpy(), [-52.0, 0.0, -49.0])
  np.testing.assert_allclose(losses.cw(labels, logits, confidence=0.0).numpy(),
                             [-2.0, 0.0, 0.0])


def test_cw_loss_masks_the_correct_class_even_with_negative_logits():
  # All logits negative: without the -1e4 mask the max over wrong classes would be 0
  # (the masked correct entry); with it, the true max wrong logit is used.
  logits = np.array([[-1.0, -5.0, -4.0]], np.float32)
  np.testing.assert_allclose(losses.cw(np.array([0]), logits).numpy(), [-(-1 + 4 + 50)])


def test_xent_is_the_per_example_cross_entropy():
  logits = RNG.normal(0, 3, (6, 10)).astype(np.float32)
  labels = RNG.integers(0, 10, 6)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(losses.xent(labels, logits).numpy(),
                             -log_p[np.arange(6), labels], rtol=1e-5)


def test_unknown_loss_name_is_an_error():
  with pytest.raises(ChallengeError, match='unknown loss_func "hinge"'):
    losses.attack_loss('hinge')
  with pytest.raises(ChallengeError, match='hinge'):
    pgd.make_pgd(lambda v: v, PGDParams(0.3, 1, 0.1, loss_func='hinge'))


def test_gradient_is_taken_only_with_respect_to_the_input(mnist_model):
  x, y = batch(4)
  with tf.GradientTape(persistent=True) as tape:
    x_adv = pgd.pgd(lambda v: mnist_model(v), tf.constant(x), y, PGDParams(0.3, 2, 0.1))
    out = tf.reduce_sum(mnist_model(x_adv))
  # The attack is a constant for the weights' gradient (no path through its steps) ...
  assert tape.gradient(x_adv, mnist_model.trainable_variables[0]) is None
  assert tape.gradient(out, mnist_model.trainable_variables[0]) is not None


def test_original_attack_object(mnist_model):
  x, y = batch(10)
  attack_object = LinfPGDAttack(mnist_model, 0.3, 5, 0.05, True, 'xent')
  x_adv = attack_object.perturb(x.astype(np.float64), y, None)  # `sess` ignored
  assert isinstance(x_adv, np.ndarray) and x_adv.dtype == np.float32 and x_adv.shape == x.shape
  assert np.abs(x_adv - x).max() <= 0.3 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1


def test_restarts_keep_the_first_fooling_or_else_the_highest_loss_example(mnist_model):
  model_fn = lambda v: mnist_model(v, training=False)
  # Its own data (not the module's shared generator): the outcome must not depend on
  # which tests ran before.
  x = tf.constant(np.random.default_rng(21).uniform(0, 1, (64, 784)).astype(np.float32))
  y = tf.argmax(model_fn(x), axis=1)  # all correct at first
  params = PGDParams(0.02, 2, 0.0025)  # weak: each restart fools a few, not the same
  seed = tf.constant([7, 8], tf.int64)
  restarts = 6
  combined = tf.function(lambda: pgd.pgd_restarts(model_fn, x, y, params, restarts,
                                                     seed))().numpy()
  # The same restarts one by one: the first draws from seed, restart r from fold_in(seed, r).
  singles, wrong, loss = [], [], []
  for r in range(restarts):
    x_r = pgd.pgd(model_fn, x, y, params, seed=(
        tf.random.experimental.stateless_fold_in(seed, r) if r else seed)).numpy()
    logits = model_fn(x_r)
    singles.append(x_r)
    wrong.append((np.argmax(logits, 1) != y.numpy()))
    loss.append(losses.xent(y, logits).numpy())
  wrong, loss = np.array(wrong), np.array(loss)
  assert wrong.any(axis=0).sum() > wrong[0].sum() > 0  # later restarts fool more examples
  for i in range(len(y)):
    expected = (np.argmax(wrong[:, i]) if wrong[:, i].any() else np.argmax(loss[:, i]))
    np.testing.assert_allclose(combined[i], singles[expected][i], rtol=0, atol=1e-6)
  # So accuracy under restarts is that of "survives every restart", never higher than any
  # single restart's.
  robust = np.argmax(model_fn(combined), 1) == y.numpy()
  np.testing.assert_array_equal(robust, ~wrong.any(axis=0))
