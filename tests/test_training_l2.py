"""The training methods in ℓ2 (`norm: "l2"`): YOPO's inner steps, MMA's AN-PGD (advertorch's
L2PGDAttack, as the MMA authors' ℓ2 runs) and bilateral training's start, each against a
numpy transcription; and one training step of each, in the ℓ2 ball."""
import numpy as np
import pytest
import tensorflow as tf

from common import methods, training
from common.methods import bilateral, mma, yopo
from common.attacks import pgd
from conftest import quiet, tiny_config
from mnist_challenge.challenge import MNIST
from cifar10_challenge.challenge import CIFAR10

RNG = np.random.default_rng(5)


def l2_norms(t):
  return np.sqrt(np.sum(np.asarray(t, np.float64).reshape(len(t), -1) ** 2, axis=1))


def shrink(delta, radius):
  """Each row scaled down to ℓ2 norm `radius` ([n] or scalar) if it is longer."""
  norms = l2_norms(delta)[:, None]
  return delta * np.minimum(1.0, np.asarray(radius).reshape(-1, 1) / np.maximum(norms, 1e-10))


def test_yopo_inner_steps_in_l2_are_normalised_steps_shrunk_into_the_ball():
  # A tanh first layer f0(v) = tanh(v W): ∇_η Σ p · f0(clip(x + η)) = (p (1 - f0²)) Wᵀ where
  # nothing is clipped (x in [0.3, 0.7], ε 0.25: x + η stays inside [0, 1]).
  w = RNG.normal(0, 1, (12, 5)).astype(np.float32)
  x = RNG.uniform(0.3, 0.7, (6, 12)).astype(np.float32)
  costate = RNG.normal(0, 1, (6, 5)).astype(np.float32)
  eta = shrink(RNG.normal(0, 0.1, (6, 12)), 0.25).astype(np.float32)
  params = pgd.PGDParams(0.25, 0, 0.15, norm='l2')
  first_fn = lambda v: tf.tanh(tf.matmul(v, w))
  got = yopo.inner_updates(first_fn, tf.constant(x), tf.constant(eta), tf.constant(costate),
                           params, 4).numpy()
  expected = eta.astype(np.float64)
  for _ in range(4):
    f0 = np.tanh((x + expected) @ w)
    grad = (costate * (1 - f0 ** 2)) @ w.T
    expected = expected + 0.15 * grad / (l2_norms(grad)[:, None] + 1e-10)
    expected = shrink(expected, 0.25)
    expected = np.clip(x + expected, 0.0, 1.0) - x
  np.testing.assert_allclose(got, expected, atol=2e-5)
  assert np.all(l2_norms(got) <= 0.25 + 1e-5)
  assert np.allclose(l2_norms(got), 0.25, atol=1e-4)  # four steps of 0.15 reach the sphere


def soft_margin_gradient(x, w, b, labels):
  """∂/∂x of logsumexp_{k≠y} z_k - z_y for z = x W + b (numpy)."""
  z = x @ w + b
  others = np.where(np.eye(w.shape[1])[labels] > 0, -np.inf, z)
  weights = np.exp(others - others.max(1, keepdims=True))
  weights /= weights.sum(1, keepdims=True)
  dz = weights - np.eye(w.shape[1])[labels]
  return dz @ w.T


def test_mma_pgd_in_l2_is_advertorchs_l2_pgd_at_each_examples_epsilon():
  # advertorch's L2PGDAttack (the MMA authors' ℓ2 attack), by hand: the start a uniform image
  # minus x scaled into the ball; each step δ += a ∇/‖∇‖, x + δ to the pixel range, then δ
  # into the ball. Pixels near the box's edges and ε up to 1.5: both clips bind.
  w = RNG.normal(0, 1, (16, 3)).astype(np.float32)
  b = RNG.normal(0, 0.5, 3).astype(np.float32)
  x = RNG.uniform(0, 1, (8, 16)).astype(np.float32)
  x[:, :4] = 0.02
  labels = RNG.integers(0, 3, 8)
  epsilon = np.linspace(0.2, 1.5, 8).astype(np.float32)
  noise = RNG.uniform(-1, 1, x.shape).astype(np.float32)
  steps = 7
  got = mma.pgd_at(lambda v: tf.matmul(v, w) + b, tf.constant(x), labels,
                   tf.constant(epsilon), steps, tf.constant(noise), 0.0, 1.0,
                   norm='l2').numpy()
  x64 = x.astype(np.float64)
  x_adv = x64 + shrink((noise + 1.0) / 2.0 - x64, epsilon)
  step = mma.STEP_SCALE * epsilon[:, None] / steps
  for _ in range(steps):
    grad = soft_margin_gradient(x_adv, w, b, labels)
    x_adv = x_adv + step * grad / (l2_norms(grad)[:, None] + 1e-10)
    x_adv = x64 + shrink(np.clip(x_adv, 0.0, 1.0) - x64, epsilon)
  np.testing.assert_allclose(got, x_adv, atol=2e-5)
  assert np.all(l2_norms(got - x) <= epsilon + 1e-5) and got.min() >= 0 and got.max() <= 1


def test_mma_in_l2_finds_the_l2_margin_of_a_linear_model():
  # Two classes, z = x W + b, label 0: the ℓ2 distance to z_0 = z_1 is
  # (z_0 - z_1) / ‖w_0 - w_1‖₂, along -(w_0 - w_1); AN-PGD's bisection finds it.
  w = RNG.normal(0, 1, (20, 2)).astype(np.float32)
  difference = w[:, 0] - w[:, 1]
  unit = difference / np.linalg.norm(difference)
  x = (0.5 + np.linspace(-0.1, 0.1, 5)[:, None] * unit).astype(np.float32)
  bias = np.array([0.6 * np.linalg.norm(difference) - 0.5 * difference.sum(), 0.0], np.float32)
  margin = ((x @ w + bias) @ np.array([1.0, -1.0])) / np.linalg.norm(difference)
  assert np.all((margin > 0.4) & (margin < 0.8))
  found, x_margin = mma.an_pgd(lambda v: tf.matmul(v, w) + bias, tf.constant(x),
                               np.zeros(5, np.int64), tf.fill([5], 1.0), 20,
                               tf.constant(RNG.uniform(-1, 1, x.shape).astype(np.float32)),
                               2.0, 10, 0.0, 1.0, norm='l2')
  # No point closer than the margin is misclassified; what is left of the random start in
  # the direction (the steps move 2.5 ε in all) costs a few percent.
  resolution = mma.SEARCH_CEILING * 2.0 / 2 ** 10
  assert np.all(found >= margin - resolution) and np.all(found <= 1.15 * margin)
  np.testing.assert_allclose(l2_norms(x_margin.numpy() - x), found, rtol=1e-4)
  # The bisection stops at the boundary: the margin there within its resolution.
  at_boundary = ((x_margin.numpy() @ w + bias) @ np.array([1.0, -1.0]))
  assert np.all(np.abs(at_boundary) <= resolution * np.linalg.norm(difference) * 1.01)


def test_the_bilateral_start_in_l2_lies_on_the_sphere_unclipped():
  x = np.full((4, 30), 0.98, np.float32)
  start = bilateral.start(tf.constant(x), 0.5, tf.constant([1, 2], tf.int64), (0, 4),
                          'l2').numpy()
  np.testing.assert_allclose(l2_norms(start - x), 0.5, rtol=1e-5)
  assert start.max() > 1.0  # not clipped before the first gradient, as the authors'
  # The method draws it so under norm l2 (ε 2.0).
  config = MNIST.load_config(overrides={'norm': 'l2', 'training_loss': 'bilateral'})
  method = methods.build(MNIST, config, MNIST.attack_params(config))
  images = tf.fill([4, 784], 0.5)
  drawn, = method.prepare(images, tf.constant([1, 2], tf.int64), (0, 4), None)
  np.testing.assert_allclose(l2_norms(drawn - images), 2.0, rtol=1e-5)


def test_the_methods_take_their_l2_radii_and_mmas_own_l2_keys():
  for challenge, d_max, smallest in ((MNIST, 2.0, 0.5), (CIFAR10, 255.0, 127.5)):
    config = challenge.load_config(overrides={'norm': 'l2', 'training_loss': 'mma'})
    method = methods.build(challenge, config, challenge.attack_params(config))
    assert (method.max_epsilon, method.min_epsilon) == (d_max, smallest)
    assert method.params.norm == 'l2'
    linf = challenge.load_config(overrides={'training_loss': 'mma'})
    method = methods.build(challenge, linf, challenge.attack_params(linf))
    assert (method.max_epsilon, method.min_epsilon) == (linf.mma_max_epsilon,
                                                        linf.mma_min_epsilon)


@pytest.mark.parametrize('changes, radius, moved', [
    ({'training_attack': 'yopo'}, 2.0, 1.0),
    ({'training_loss': 'bilateral'}, 2.0, 1.0),
    # MMA: up to 1.05 d_max; the correct examples at their margin, the others not moved.
    ({'training_loss': 'mma'}, mma.SEARCH_CEILING * 2.0, 0.0),
], ids=['yopo', 'bilateral', 'mma'])
def test_each_method_trains_in_the_l2_ball(tmp_path, mnist_dir, changes, radius, moved):
  config = tiny_config(tmp_path, mnist_dir, norm='l2', **changes)
  trainer = training.Trainer(MNIST, config, log=quiet)
  assert trainer.method.params.norm == 'l2'
  data = MNIST.load_data(config).train.head(8)
  batch = (tf.constant(data.images), tf.constant(data.labels))
  if trainer.method.needs_examples:  # MMA: each example's remembered ε
    trainer.method.state(len(MNIST.load_data(config).train), trainer.strategy)
    batch += (tf.range(8, dtype=tf.int64),)
  _, _, x_adv = trainer.train_step(batch)
  x_adv = trainer.strategy.experimental_local_results(x_adv)[0].numpy()
  delta = x_adv - data.images
  assert np.all(l2_norms(delta) <= radius + 1e-4)  # ℓ∞ ε 0.3 steps would reach ‖δ‖₂ ≈ 8
  assert l2_norms(delta).max() > moved
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
