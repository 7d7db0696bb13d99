"""The training methods beside PGD and TRADES (common/methods: yopo, bilateral, mma; jacobian
and cross_lipschitz against their formulas in test_regularisers): each against its formula
on fixed inputs, then on the shared trainer: two replicas against one device, resuming,
precisions, XLA, batch norm, the guard, the recipes and the errors."""
import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge.challenge import CIFAR10
from common import checkpoints, losses, methods, precision, training
from common.methods import bilateral, cross_lipschitz, jacobian, madry, mma, yopo
from common.attacks import pgd
from common.errors import ChallengeError
from conftest import (NON_WIDE, REPO, as_flags, quiet, run_script, tiny_cifar_config,
                      tiny_config)
from mnist_challenge.challenge import MNIST
from test_training import (assert_same_gradient, first_moments, one_device_and_two_replicas,
                           straight_and_resumed, weights)

RNG_SEED = 11  # conftest reseeds RNG with it before each test
RNG = np.random.default_rng(RNG_SEED)

METHODS = {'bilateral': dict(training_method='bilateral'), 'mma': dict(training_method='mma'),
           'yopo': dict(training_method='yopo', yopo_outer_steps=2, yopo_inner_steps=2),
           # Half of each batch the training attack's: the mixed batch across replicas.
           'jacobian': dict(training_method='jacobian', jacobian_adversarial_fraction=0.5),
           'cross_lipschitz': dict(training_method='cross_lipschitz')}
# The methods with a recipe file per challenge.
RECIPES = [(challenge, method) for challenge in (MNIST, CIFAR10) for method in sorted(METHODS)
           if os.path.exists(os.path.join(challenge.package_dir, 'configs', f'{method}.json'))]
EXPECTED = {'bilateral': bilateral.Bilateral, 'mma': mma.MMA, 'yopo': yopo.YOPO,
            'jacobian': jacobian.Jacobian, 'cross_lipschitz': cross_lipschitz.CrossLipschitz}


def softmax(z):
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def small_model(inputs=12, hidden=16, classes=10):
  """A two-layer network: `first` (the layer YOPO splits after) and `logits`."""
  keras.utils.set_random_seed(3)
  return keras.Sequential([keras.Input((inputs,)),
                           keras.layers.Dense(hidden, activation='tanh', name='first'),
                           keras.layers.Dense(classes, name='logits')])


def make_step(model):
  """A methods.Step over `model` in float32, the loss summed (MNIST's reduction), `stateful`
  as the trainer sets it."""
  forward = training._StatefulForward(precision.Twin(model, None, 'float32'))  # pylint: disable=protected-access
  return methods.Step(
      forward=forward, inference=lambda v: model(v, training=False),
      attack_model=lambda v: model(v, training=False),
      loss=lambda labels, logits, per_example=None: tf.reduce_sum(
          losses.xent(labels, logits) if per_example is None else per_example),
      scale_loss=lambda loss: loss, variables=model.trainable_variables, loss_scale=None,
      stateful=bool(model.non_trainable_variables))


def full_gradient(model, x, y):
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(losses.xent(y, model(x, training=True)))
  return tape.gradient(loss, model.trainable_variables), tape


# --- YOPO ------------------------------------------------------------------------------

def yopo_batch(n=6, inputs=12):
  x = RNG.uniform(0.3, 0.7, (n, inputs)).astype(np.float32)  # ε 0.1: nothing is clipped
  eta = RNG.uniform(-0.1, 0.1, (n, inputs)).astype(np.float32)
  return tf.constant(x), tf.constant(RNG.integers(0, 10, n)), tf.constant(eta)


def full_pass(model, x, y, scale=1.0):
  """A small_model's full pass by hand: (the co-state ∂(scale · loss)/∂first's output, the
  logits layer's gradients)."""
  first, rest = model.get_layer('first'), model.get_layer('logits')
  with tf.GradientTape() as tape:
    hidden = first(x)
    tape.watch(hidden)
    loss = scale * tf.reduce_sum(losses.xent(y, rest(hidden)))
  costate, *rest_gradients = tape.gradient(loss, [hidden] + rest.trainable_variables)
  return costate, rest_gradients


def hamiltonian_gradients(model, x, costate):
  """The first layer's gradients of p · f0(x)."""
  first = model.get_layer('first')
  with tf.GradientTape() as tape:
    hamiltonian = tf.reduce_sum(costate * first(x))
  return tape.gradient(hamiltonian, first.trainable_variables)


def test_yopo_without_inner_steps_is_the_full_gradient_at_x_plus_eta():
  # m = 1, n = 0: the rest's gradient from the pass, the first layer's from its Hamiltonian
  # p · f0(x + η): by the chain rule, the full loss's gradient at x + η, every layer.
  model = small_model()
  x, y, eta = yopo_batch()
  params = pgd.PGDParams(0.1, 0, 0.02)
  expected, _ = full_gradient(model, x + eta, y)
  for passes in (1, 3):  # n = 0 leaves η where it was: the mean of m equal passes
    result = yopo.YOPO(params, passes, 0).gradients(make_step(model), x, y, (eta,))
    for got, want in zip(result.gradients, expected):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_yopo_inner_step_from_the_pass_point_is_pgds_sign_step_and_stays_in_the_ball():
  model = small_model()
  x, y, eta = yopo_batch()
  params = pgd.PGDParams(0.1, 0, 0.03)
  result = yopo.YOPO(params, 1, 1).gradients(make_step(model), x, y, (eta,))
  x_start = x + eta
  with tf.GradientTape() as tape:
    tape.watch(x_start)
    loss = tf.reduce_sum(losses.xent(y, model(x_start)))
  expected = pgd.project(pgd.sign_step(x_start, tape.gradient(loss, x_start), 0.03), x, 0.1,
                         0.0, 1.0)
  np.testing.assert_allclose(result.x_adv, expected, atol=1e-6)
  # Further inner steps stay in the ε-ball and the pixel range.
  x_edge = tf.constant(np.where(RNG.uniform(size=x.shape) < 0.3, 0.02, x.numpy()), tf.float32)
  far = yopo.YOPO(params, 2, 6).gradients(make_step(model), x_edge, y, (eta,)).x_adv.numpy()
  assert np.all(np.abs(far - x_edge.numpy()) <= 0.1 + 1e-6) and far.min() >= 0


def test_yopo_reads_the_first_layer_at_the_clipped_point():
  # η's start is not clipped (the authors'), so x + η leaves the pixel range at the edges;
  # the Hamiltonian, its gradient for the first layer and the first inner step all read
  # f0(clip(x + η)), the pass itself x + η.
  model = small_model()
  _, y, _ = yopo_batch()
  x = tf.constant(np.where(RNG.uniform(size=(6, 12)) < 0.5, 0.02, 0.98), tf.float32)
  eta = tf.constant(np.where(x.numpy() < 0.5, -0.1, 0.1) * RNG.uniform(0.5, 1, (6, 12)),
                    tf.float32)
  params = pgd.PGDParams(0.1, 0, 0.03)
  result = yopo.YOPO(params, 1, 0).gradients(make_step(model), x, y, (eta,))
  costate, rest_gradients = full_pass(model, x + eta, y)
  clipped = tf.clip_by_value(x + eta, 0.0, 1.0)
  first_gradients = hamiltonian_gradients(model, clipped, costate)
  for got, want in zip(result.gradients, first_gradients + rest_gradients):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  unclipped = hamiltonian_gradients(model, x + eta, costate)
  assert np.abs(unclipped[0].numpy() - first_gradients[0].numpy()).max() > 1e-3
  # One inner step: the sign of the Hamiltonian's gradient at the clipped point.
  stepped = yopo.YOPO(params, 1, 1).gradients(make_step(model), x, y, (eta,)).x_adv
  with tf.GradientTape() as tape:
    tape.watch(eta)
    value = tf.reduce_sum(costate * model.get_layer('first')(
        tf.clip_by_value(x + eta, 0.0, 1.0)))
  expected = tf.clip_by_value(x + tf.clip_by_value(eta + 0.03 * tf.sign(tape.gradient(
      value, eta)), -0.1, 0.1), 0.0, 1.0)
  np.testing.assert_allclose(stepped, expected, atol=1e-6)


def test_yopo_first_layer_learns_from_the_hamiltonian_at_the_updated_eta():
  # m = 1, n = 2: the rest's gradient at the pass point x + η; the first layer's that of
  # p · f0(x + η') with p from the pass and η' after the two inner steps.
  model = small_model()
  x, y, eta = yopo_batch()
  params = pgd.PGDParams(0.1, 0, 0.03)
  result = yopo.YOPO(params, 1, 2).gradients(make_step(model), x, y, (eta,))
  costate, rest_gradients = full_pass(model, x + eta, y)
  first_gradients = hamiltonian_gradients(model, result.x_adv, costate)
  for got, want in zip(result.gradients, first_gradients + rest_gradients):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  moved = np.abs(result.x_adv.numpy() - (x + eta).numpy()).max()
  assert moved > 0.01  # the inner steps moved η


def test_yopo_carries_eta_from_one_full_pass_to_the_next():
  # m = 2, n = 2: the second pass starts where the first pass's inner steps left η, and each
  # pass adds its share (the loss over m) of every layer's gradient.
  model = small_model()
  x, y, eta = yopo_batch()
  params = pgd.PGDParams(0.1, 0, 0.03)
  result = yopo.YOPO(params, 2, 2).gradients(make_step(model), x, y, (eta,))
  first = model.get_layer('first')
  expected = [tf.zeros_like(v) for v in model.trainable_variables]
  for _ in range(2):
    costate, rest_gradients = full_pass(model, x + eta, y, scale=0.5)
    for _ in range(2):  # x + η stays inside [0.2, 0.8]: nothing for the pixel range to clip
      with tf.GradientTape() as tape:
        tape.watch(eta)
        hamiltonian = tf.reduce_sum(costate * first(x + eta))
      eta = tf.clip_by_value(eta + 0.03 * tf.sign(tape.gradient(hamiltonian, eta)), -0.1, 0.1)
    first_gradients = hamiltonian_gradients(model, x + eta, costate)
    expected = [e + g for e, g in zip(expected, first_gradients + rest_gradients)]
  np.testing.assert_allclose(result.x_adv, x + eta, atol=1e-6)
  for got, want in zip(result.gradients, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_yopo_runs_m_full_passes_and_m_times_n_plus_one_first_layer_passes(monkeypatch):
  model = MNIST.build_model(MNIST.load_config())
  split = yopo.SplitModel(model, yopo.first_layer_name(model))
  assert [layer.name for layer in split.first.layers[1:]] == ['x_image', 'conv1']
  calls = []
  original = yopo.SplitModel.call

  def counted(self, part, *args, **kwargs):
    calls.append('first' if part is self.first else 'rest')
    return original(self, part, *args, **kwargs)
  monkeypatch.setattr(yopo.SplitModel, 'call', counted)
  x = tf.constant(RNG.uniform(0, 1, (2, 784)).astype(np.float32))
  method = yopo.YOPO(pgd.PGDParams(0.3, 0, 0.01), 3, 4)
  method.gradients(make_step(model), x, tf.constant([1, 2]), (tf.zeros_like(x),))
  assert calls.count('rest') == 3  # m full passes
  assert calls.count('first') == 3 * (1 + 4 + 1)  # each: the pass, n updates, the Hamiltonian


def test_yopo_splits_each_challenges_networks_after_their_first_layer():
  cifar = CIFAR10.build_model(tiny_cifar_config_like())
  assert yopo.first_layer_name(cifar) == 'init_conv'
  for name in ('madry', 'small_cnn', 'tramer_b'):
    model = MNIST.build_model(MNIST.load_config(overrides={'model': name}))
    split = yopo.SplitModel(model, yopo.first_layer_name(model))
    assert yopo.first_layer_name(model) == 'conv1' and sum(split.in_first) == 2
  inputs = keras.Input((4,))
  skip = keras.Model(inputs, keras.layers.Add()([keras.layers.Dense(4, name='a')(inputs),
                                                  inputs]))
  with pytest.raises(ChallengeError, match='cannot be split'):
    yopo.SplitModel(skip, 'a')


def tiny_cifar_config_like():
  return CIFAR10.load_config(overrides={'filters': NON_WIDE})


# --- bilateral -------------------------------------------------------------------------

def test_the_bilateral_label_is_the_papers_closed_form_and_sums_to_one():
  logits = RNG.normal(0, 3, (8, 10)).astype(np.float32)
  labels = RNG.integers(0, 10, 8)
  beta, gamma, n = 9.0, 0.01, 10
  got = bilateral.adversarial_labels(logits, labels, beta).numpy()
  v = -np.log(softmax(logits.astype(np.float64)) + 1e-8)
  for row, c in enumerate(labels):
    wrong = np.arange(n) != c
    v_mc, v_ll = v[row, wrong].min(), v[row, wrong].max()
    mc = np.flatnonzero(wrong)[np.argmin(v[row, wrong])]
    # The paper's form, ε_y / (n-1) (v_k - v_MC + γ) / (Σ_{k≠c} v_k / (n-1) - v_MC + γ), with
    # the authors' ε_y (y'_c = β max_{k≠c} y'_k).
    denominator = v[row, wrong].sum() / (n - 1) - v_mc + gamma
    shares = (v[row] - v_mc + gamma) / denominator / (n - 1)
    label_epsilon = 1.0 / (1.0 + beta * shares[wrong].max())
    np.testing.assert_allclose(got[row, wrong], label_epsilon * shares[wrong], rtol=2e-5)
    assert got[row, c] == pytest.approx(1 - label_epsilon, rel=1e-5)
    assert got[row].sum() == pytest.approx(1.0, abs=1e-6)
    assert got[row, c] == pytest.approx(beta * got[row, wrong].max(), rel=1e-5)
    # The most confusing class gets the least (γ / D of ε_y), the least likely the most.
    assert got[row, mc] == pytest.approx(got[row, wrong].min())
    assert np.argmax(np.where(wrong, got[row], -1)) == np.argmax(np.where(wrong, v[row], -1))
    assert v_ll >= v_mc


def test_the_bilateral_image_is_one_targeted_step_towards_the_most_confusing_class():
  w = RNG.normal(0, 1, (12, 10)).astype(np.float32)
  model_fn = lambda v: tf.matmul(v, w)
  x = RNG.uniform(0, 1, (5, 12)).astype(np.float32)
  labels = RNG.integers(0, 10, 5)
  natural = x @ w
  targets = bilateral.most_confusing(natural, labels).numpy()
  masked = np.where(np.eye(10)[labels] > 0, -np.inf, natural)
  np.testing.assert_array_equal(targets, masked.argmax(1))
  params = bilateral.image_params(pgd.PGDParams(0.1, 40, 0.01), 0, 0)
  assert (params.num_steps, params.step_size) == (1, 0.1)  # the authors': one step of ε
  start = bilateral.start(tf.constant(x), 0.1, tf.constant([3, 4], tf.int64), (0, 5)).numpy()
  assert np.abs(start - x).max() <= 0.1 + 1e-6
  got = bilateral.perturb_image(model_fn, tf.constant(x), targets, params,
                                tf.constant(start)).numpy()
  # ∇_x CE(x W, t) = (softmax(x W) - onehot(t)) Wᵀ; the step descends it.
  gradient = (softmax(start @ w) - np.eye(10)[targets]) @ w.T
  expected = np.clip(np.clip(start - 0.1 * np.sign(gradient), x - 0.1, x + 0.1), 0, 1)
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_the_bilateral_start_is_not_clipped_to_the_pixel_range():
  x = tf.zeros([4, 50])
  start = bilateral.start(x, 0.1, tf.constant([1, 2], tf.int64), (0, 4)).numpy()
  assert start.min() < 0 and np.abs(start).max() <= 0.1


def test_the_bilateral_loss_is_the_soft_label_cross_entropy():
  logits = RNG.normal(0, 2, (4, 10)).astype(np.float32)
  soft = softmax(RNG.normal(0, 1, (4, 10)))
  expected = -(soft * np.log(softmax(logits.astype(np.float64)))).sum(1)
  np.testing.assert_allclose(bilateral.soft_xent(soft, logits), expected, rtol=1e-5)


def test_a_bilateral_step_descends_the_soft_label_loss_at_the_targeted_image():
  # The whole step: the label from the natural (inference-mode) logits, the image one
  # targeted step towards the most confusing class from the drawn start, the loss the
  # soft-label cross-entropy there, summed (MNIST's reduction).
  model = small_model()
  x, y, eta = yopo_batch()
  params = bilateral.image_params(pgd.PGDParams(0.1, 0, 0.01), 0, 0)
  result = bilateral.Bilateral(params, 9.0).gradients(make_step(model), x, y, (x + eta,))
  natural = model(x, training=False)
  x_adv = bilateral.perturb_image(lambda v: model(v, training=False), x,
                                  bilateral.most_confusing(natural, y), params, x + eta)
  np.testing.assert_allclose(result.x_adv, x_adv, atol=1e-6)
  soft = bilateral.adversarial_labels(natural, y, 9.0)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(bilateral.soft_xent(soft, model(x_adv, training=True)))
  for got, want in zip(result.gradients, tape.gradient(loss, model.trainable_variables)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  hard, _ = full_gradient(model, x_adv, y)  # trained on the soft label, not the hard one
  assert np.abs(hard[0] - result.gradients[0]).max() > 0.01 * np.abs(hard[0]).max()


# --- MMA -------------------------------------------------------------------------------

def test_the_soft_logit_margin():
  logits = RNG.normal(0, 2, (5, 10)).astype(np.float32)
  labels = RNG.integers(0, 10, 5)
  others = np.where(np.eye(10)[labels] > 0, -np.inf, logits.astype(np.float64))
  expected = np.log(np.exp(others).sum(1)) - logits[np.arange(5), labels]
  np.testing.assert_allclose(mma.soft_logit_margin(labels, logits), expected, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize('start_epsilon', [0.05, 0.3], ids=['pgd-fails', 'pgd-succeeds'])
def test_an_pgd_finds_the_analytic_margin_of_a_linear_model(start_epsilon):
  # Two classes, z = x W: the soft logit margin is z_1 - z_0 for label 0, linear in x; the
  # ℓ∞ distance to z_1 = z_0 is (z_0 - z_1) / ‖w_0 - w_1‖₁, reached along -sign(w_0 - w_1).
  w = RNG.normal(0, 1, (20, 2)).astype(np.float32)
  difference = w[:, 0] - w[:, 1]
  norm = np.abs(difference).sum()
  bias = np.array([0.15 * norm - 0.5 * difference.sum(), 0.0], np.float32)
  offsets = np.linspace(-0.09, 0.1, 6).astype(np.float32)
  x = (0.5 + offsets[:, None] * np.sign(difference)).astype(np.float32)  # margins .06-.25
  labels = np.zeros(6, np.int64)
  margin = ((x @ w + bias) @ np.array([1.0, -1.0])) / norm
  np.testing.assert_allclose(margin, 0.15 + offsets, atol=1e-5)
  model_fn = lambda v: tf.matmul(v, w) + bias
  epsilon = tf.fill([6], start_epsilon)
  noise = tf.constant(RNG.uniform(-1, 1, x.shape).astype(np.float32))
  max_epsilon = 0.45
  found, x_margin = mma.an_pgd(model_fn, tf.constant(x), labels, epsilon, 20, noise,
                               max_epsilon, 10, 0.0, 1.0)
  resolution = mma.SEARCH_CEILING * max_epsilon / 2 ** 10
  np.testing.assert_allclose(found, margin, atol=2 * resolution)
  np.testing.assert_allclose(np.abs(x_margin.numpy() - x).max(1), found, rtol=1e-5)


def test_an_pgd_on_a_robust_example_ends_near_the_ceiling():
  w = np.zeros((20, 2), np.float32)
  w[:, 0] = 1.0  # class 0 wins everywhere: no attack succeeds
  found, _ = mma.an_pgd(lambda v: tf.matmul(v, w), tf.fill([2, 20], 0.5), [0, 0],
                        tf.fill([2], 0.1), 5, tf.zeros([2, 20]), 0.45, 10, 0.0, 1.0)
  assert np.all(found.numpy() > 0.45) and np.all(found.numpy() < 0.45 * 1.05)


def test_the_mma_loss_per_example():
  labels = np.array([0, 1, 2, 3])
  natural = RNG.normal(0, 2, (4, 10)).astype(np.float32)
  mixed = RNG.normal(0, 2, (4, 10)).astype(np.float32)
  correct = tf.constant([True, True, False, False])
  new_epsilon = tf.constant([0.2, 0.5, 0.2, 0.5])
  got = mma.per_example_loss(labels, natural, mixed, correct, new_epsilon, 0.45, 1 / 3)
  ce = lambda z: -np.log(softmax(z.astype(np.float64))[np.arange(4), labels])
  margin_term = ce(mixed) * np.array([1, 0, 1, 1])  # the second: ε ≥ d_max, hinged off
  np.testing.assert_allclose(got, 2 / 3 * margin_term + 1 / 3 * ce(natural), rtol=1e-5)


def test_an_mma_step_trains_the_correct_at_their_margin_and_the_wrong_where_they_are():
  # The whole step on a batch of three correct and three wrong examples: AN-PGD from the
  # remembered ε, the correct examples' loss at their margin point, the wrong ones' at x,
  # a third of the natural loss for all; the new ε remembered for the correct only.
  model = small_model()
  model.get_layer('logits').kernel.assign(20 * model.get_layer('logits').kernel)
  x, _, _ = yopo_batch()
  predicted = np.argmax(model(x, training=False), 1)
  y = tf.constant(np.where(np.arange(6) < 3, predicted, (predicted + 1) % 10))
  correct = (mma.soft_logit_margin(y, model(x, training=True)) < 0).numpy()
  assert 0 < correct.sum() < 6, correct
  noise = tf.constant(RNG.uniform(-1, 1, x.shape).astype(np.float32))
  epsilon = tf.constant([0.1, 0.2, 0.1, 0.2, 0.1, 0.2])
  method = mma.MMA(pgd.PGDParams(0.3, 5, 0.0), 0.45, 0.1, 1 / 3, 6)
  result = method.gradients(make_step(model), x, y, (noise, epsilon))
  new_epsilon, x_margin = mma.an_pgd(lambda v: model(v, training=False), x, y, epsilon, 5,
                                     noise, 0.45, 6, 0.0, 1.0)
  mixed_input = np.where(correct[:, None], x_margin.numpy(), x.numpy())
  np.testing.assert_allclose(result.x_adv, mixed_input, atol=1e-6)
  np.testing.assert_allclose(result.outputs[0], np.where(correct, new_epsilon, 0), atol=1e-6)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(mma.per_example_loss(
        y, model(x, training=True), model(mixed_input, training=True), tf.constant(correct),
        new_epsilon, 0.45, 1 / 3))
  for got, want in zip(result.gradients, tape.gradient(loss, model.trainable_variables)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --- on the shared trainer -------------------------------------------------------------

def method_config(tmp_path, mnist_dir, method, **changes):
  settings = dict(METHODS[method], max_num_training_steps=1)
  settings.update(changes)
  return tiny_config(tmp_path, mnist_dir, **settings)


def test_mma_remembers_each_examples_epsilon(tmp_path, mnist_dir):
  trainer = training.Trainer(MNIST, method_config(tmp_path, mnist_dir, 'mma',
                                                  max_num_training_steps=2), log=quiet)
  trainer.run()
  remembered = trainer.method.epsilon.numpy()
  assert remembered.shape == (len(MNIST.load_data(trainer.config).train),)
  touched = remembered > 0
  assert 0 < touched.sum() <= 16  # two batches of 8; wrong examples store 0
  assert remembered.max() < 0.45 * 1.05
  x = tf.zeros([2, 784])
  _, start = trainer.method.prepare(x, tf.constant([0, 0], tf.int64), (0, 2),
                                    tf.constant([int(np.argmax(touched)), 0], tf.int64))
  assert start.numpy()[0] == pytest.approx(max(remembered[touched][0], 0.1))


def test_mma_keys_its_memory_by_the_examples_index_in_the_training_split(tmp_path, mnist_dir):
  # Not by the position in the batch: an example's ε follows it through the shuffles.
  method = methods.build(MNIST, MNIST.load_config(overrides=dict(training_method='mma')),
                         MNIST.attack_params(MNIST.load_config()))
  method.state(20, tf.distribute.get_strategy())
  examples = tf.constant([13, 4, 17], tf.int64)
  method.finish(examples, (tf.constant([0.2, 0.3, 0.0]),))
  expected = np.zeros(20, np.float32)
  expected[[13, 4, 17]] = [0.2, 0.3, 0.0]
  np.testing.assert_allclose(method.epsilon.numpy(), expected)
  _, start = method.prepare(tf.zeros([4, 784]), tf.constant([0, 0], tf.int64), (0, 4),
                            tf.constant([4, 0, 13, 17], tf.int64))
  np.testing.assert_allclose(start, [0.3, 0.1, 0.2, 0.1])  # at least ε_min, 0.1
  # On the trainer: the examples it touched are the shuffled batches', not positions 0-15.
  trainer = training.Trainer(MNIST, method_config(tmp_path, mnist_dir, 'mma',
                                                  max_num_training_steps=2), log=quiet)
  trainer.run()
  touched = set(np.flatnonzero(trainer.method.epsilon.numpy()))
  assert touched and not touched <= set(range(16))


@pytest.mark.versions
@pytest.mark.parametrize('method', sorted(METHODS))
def test_two_replicas_compute_one_devices_gradient(tmp_path, mnist_dir, method):
  single, mirrored = one_device_and_two_replicas(method_config(tmp_path, mnist_dir, method),
                                                 tmp_path)
  assert_same_gradient(first_moments(single), first_moments(mirrored))
  if method == 'mma':  # both replicas' examples remembered, on each replica alike
    copies = [v.numpy() for v in mirrored.strategy.experimental_local_results(
        mirrored.method.epsilon)]
    assert (copies[0] > 0).any()  # something remembered to compare
    np.testing.assert_allclose(copies[0], single.method.epsilon.numpy(), atol=1e-5)
    np.testing.assert_array_equal(copies[0], copies[1])


@pytest.mark.parametrize('method', sorted(METHODS))
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, mnist_dir, method):
  straight, resumed = straight_and_resumed(
      method_config(tmp_path, mnist_dir, method, max_num_training_steps=4), tmp_path)
  for a, b in zip(weights(straight.model), weights(resumed.model)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  if method == 'mma':
    np.testing.assert_allclose(straight.method.epsilon.numpy(),
                               resumed.method.epsilon.numpy(), atol=1e-6)


@pytest.mark.versions
@pytest.mark.parametrize('precision_name', ['mixed_bfloat16', 'mixed_float16'])
@pytest.mark.parametrize('method', sorted(METHODS))
def test_each_method_trains_in_every_precision(tmp_path, mnist_dir, method, precision_name):
  config = method_config(tmp_path, mnist_dir, method, precision=precision_name,
                         max_num_training_steps=2)
  if method in ('jacobian', 'cross_lipschitz') and precision_name == 'mixed_float16':
    with pytest.raises(ChallengeError, match='float16 would overflow'):
      training.Trainer(MNIST, config, log=quiet)  # the second derivative has no loss scale
    return
  trainer = training.Trainer(MNIST, config, log=quiet)
  before = weights(trainer.model)
  assert trainer.run() == 2
  after = weights(trainer.model)
  assert all(np.all(np.isfinite(w)) for w in after)
  if precision_name == 'mixed_bfloat16':  # float16's first steps may overflow and be skipped
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, after))


@pytest.mark.parametrize('method', sorted(METHODS))
def test_each_method_compiles_with_xla_as_it_runs_without(tmp_path, mnist_dir, method):
  if method in ('jacobian', 'cross_lipschitz'):  # their compiled second derivative differs
    with pytest.raises(ChallengeError, match='XLA computes'):
      training.Trainer(MNIST, method_config(tmp_path / 'b', mnist_dir, method,
                                            jit_compile=True), log=quiet)
    assert not training.Trainer(MNIST, method_config(tmp_path / 'c', mnist_dir, method,
                                                     jit_compile='auto'),
                                log=quiet).jit_compile
    return
  plain = training.Trainer(MNIST, method_config(tmp_path / 'a', mnist_dir, method,
                                                jit_compile=False), log=quiet)
  plain.run()
  compiled = training.Trainer(MNIST, method_config(tmp_path / 'b', mnist_dir, method,
                                                   jit_compile=True), log=quiet)
  compiled.run()
  assert_same_gradient(first_moments(plain), first_moments(compiled), rtol=1e-4)


@pytest.mark.parametrize('method', sorted(METHODS))
def test_each_method_trains_cifar10_with_batch_norm(tmp_path, cifar_dir, method):
  changes = dict(METHODS[method])
  config = tiny_cifar_config(tmp_path, cifar_dir, max_num_training_steps=2, **changes)
  trainer = training.Trainer(CIFAR10, config, log=quiet)
  before = [v.numpy().copy() for v in trainer.model.non_trainable_variables]
  assert trainer.run() == 2
  after = [v.numpy() for v in trainer.model.non_trainable_variables]
  assert any(np.abs(a - b).max() > 0 for a, b in zip(before, after))  # averages updated
  assert all(np.all(np.isfinite(w)) for w in weights(trainer.model))


@pytest.mark.parametrize('method', sorted(METHODS))
def test_the_guard_watches_each_method(tmp_path, mnist_dir, method):
  lines = []
  config = method_config(tmp_path, mnist_dir, method, max_num_training_steps=4,
                         robustness_check_steps=2, robustness_check_examples=20)
  training.train(MNIST, config, log=lines.append)
  assert sum('held-out' in line for line in lines) >= 2, lines


def built_method(**changes):
  """The method MNIST's default config with `changes` builds."""
  config = MNIST.load_config(overrides=changes)
  return methods.build(MNIST, config, MNIST.attack_params(config))


def test_each_method_is_chosen_by_its_keys_with_the_authors_defaults():
  mnist, cifar = MNIST.load_config(), CIFAR10.load_config()
  assert (mnist.bilateral_beta, mnist.mma_max_epsilon, mnist.mma_min_epsilon,
          mnist.yopo_outer_steps, mnist.yopo_inner_steps) == (9.0, 0.45, 0.1, 5, 10)
  assert (cifar.mma_max_epsilon, cifar.mma_min_epsilon, cifar.yopo_inner_steps) == (
      12.0, pytest.approx(1.275), 3)
  assert mnist.mma_clean_weight == pytest.approx(1 / 3) and mnist.mma_search_steps == 10
  assert type(built_method()) is madry.Madry
  assert isinstance(built_method(training_method='bilateral'), bilateral.Bilateral)
  assert built_method(training_method='bilateral').params.step_size == pytest.approx(0.3)
  assert built_method(training_method='mma', training_num_steps=10).params.num_steps == 10
  assert built_method(training_method='mma').params.num_steps == 40  # the configured k
  assert built_method(training_method='yopo').params.step_size == 0.01  # the configured a
  assert built_method(training_method='yopo', training_step_size=0.02).params.step_size == 0.02


def test_each_methods_own_keys_reach_it():
  method = built_method(training_method='yopo', yopo_outer_steps=3, yopo_inner_steps=1)
  assert (method.outer_steps, method.inner_steps) == (3, 1)
  assert built_method(training_method='bilateral', bilateral_beta=4.0).beta == 4.0
  method = built_method(training_method='mma', mma_max_epsilon=0.4, mma_min_epsilon=0.05,
                        mma_clean_weight=0.5, mma_search_steps=4)
  assert (method.max_epsilon, method.min_epsilon, method.clean_weight,
          method.search_steps) == (0.4, 0.05, 0.5, 4)


def test_the_training_epsilon_reaches_each_method_and_scales_its_defaults():
  assert built_method().params.epsilon == 0.3  # 0: the configured epsilon
  assert built_method(training_epsilon=0.4).params.epsilon == 0.4
  fgsm_rs = built_method(training_attack='fgsm_rs', training_epsilon=0.4).params
  assert (fgsm_rs.epsilon, fgsm_rs.step_size) == (0.4, pytest.approx(1.25 * 0.4))
  n_fgsm = built_method(training_attack='n_fgsm', training_epsilon=0.4).params
  assert (n_fgsm.step_size, n_fgsm.noise_radius) == (0.4, pytest.approx(0.8))
  for changes in (dict(training_method='trades'), dict(training_method='yopo')):
    assert built_method(training_epsilon=0.35, **changes).params.epsilon == 0.35
  bilateral_params = built_method(training_method='bilateral', training_epsilon=0.4).params
  assert bilateral_params.epsilon == bilateral_params.step_size == 0.4
  with pytest.raises(ChallengeError, match='training_epsilon is 0.4, but MMA'):
    built_method(training_method='mma', training_epsilon=0.4)
  cifar = CIFAR10.load_config(overrides={'training_epsilon': 10.0})
  assert methods.build(CIFAR10, cifar, CIFAR10.attack_params(cifar)).params.epsilon == 10
  assert CIFAR10.attack_params(cifar).epsilon == 8.0


def test_yopo_trains_the_small_cnn_through_its_dropout(tmp_path, mnist_dir):
  # The Small CNN's last layer starts at zero, so the first step's co-state is zero and its
  # first layer learns from the second step on; dropout draws a mask in each full pass.
  config = method_config(tmp_path, mnist_dir, 'yopo', model='small_cnn',
                         max_num_training_steps=2)
  trainer = training.Trainer(MNIST, config, log=quiet)
  first = trainer.model.get_layer('conv1').kernel
  before = first.numpy().copy()
  assert trainer.run() == 2
  assert np.abs(first.numpy() - before).max() > 0
  assert all(np.all(np.isfinite(w)) for w in weights(trainer.model))


@pytest.mark.parametrize('changes, message', [
    (dict(training_loss='bilateral', training_attack='fgsm_rs'), 'bilateral.*its own search'),
    (dict(training_loss='mma', training_attack='yopo'), 'mma.*its own search'),
    (dict(training_loss='trades', training_attack='yopo'), 'trades.*its own search'),
    (dict(training_method='yopo', training_num_steps=3), 'yopo_outer_steps'),
    (dict(training_method='mma', training_step_size=0.1), 'MMA.*2.5 ε / steps'),
    (dict(training_method='yopo', training_attack='fgsm_rs'), 'yopo.*its own search'),
    (dict(training_method='natural', training_num_steps=3), 'natural.*no training attack'),
    (dict(training_method='jacobian', training_attack='fgsm_rs'),
     'jacobian_adversarial_fraction 0.*training_attack fgsm_rs'),
    (dict(training_method='cross_lipschitz', training_epsilon=0.2),
     'cross_lipschitz_adversarial_fraction 0.*training_epsilon 0.2'),
])
def test_combinations_that_would_ignore_a_setting_are_errors(changes, message):
  with pytest.raises(ChallengeError, match=message):
    training.check_training_method(MNIST.load_config(overrides=changes))


def test_a_method_that_remembers_examples_needs_their_indices(tmp_path, mnist_dir):
  trainer = training.Trainer(MNIST, method_config(tmp_path, mnist_dir, 'mma'), log=quiet)
  trainer.method.state(10, trainer.strategy)
  with pytest.raises(ChallengeError, match='index'):
    trainer.train_step((tf.zeros([8, 784]), tf.zeros([8], tf.int64)))


@pytest.mark.parametrize('challenge, method', RECIPES,
                         ids=[f'{c.name}-{m}' for c, m in RECIPES])
def test_the_recipes_load(challenge, method):
  path = os.path.join(challenge.package_dir, 'configs', f'{method}.json')
  config = challenge.load_config(path)
  with open(path) as f:
    named = {name for name in json.load(f) if not name.startswith('_')}
  assert named <= {key.name for key in challenge.config_keys}
  training.check_training_method(config)
  chosen = methods.build(challenge, config, challenge.attack_params(config))
  assert isinstance(chosen, EXPECTED[method])


def test_a_trainer_run_twice_keeps_one_memory(tmp_path, mnist_dir):
  # The benchmark times a trainer's second run: MMA's memory must stay the variable its
  # compiled step reads and writes, and be the one checkpointed.
  trainer = training.Trainer(MNIST, method_config(tmp_path, mnist_dir, 'mma'), log=quiet)
  trainer.run()
  memory = trainer.method.epsilon
  trainer.config = trainer.config.replace(max_num_training_steps=2)
  trainer.run()
  assert trainer.method.epsilon is memory and (memory.numpy() > 0).sum() > 0
  assert trainer.checkpoint.method.mma_epsilon is memory


def test_yopo_scales_with_the_loss_and_an_overflow_moves_no_pixel():
  # float16 differentiates a scaled loss: every gradient scales with it (the co-state too),
  # and an overflowing one must leave η finite (the loss scaler skips that update).
  model = small_model()
  x, y, eta = yopo_batch()
  method = yopo.YOPO(pgd.PGDParams(0.1, 0, 0.03), 2, 2)
  plain = method.gradients(make_step(model), x, y, (eta,))
  scaled_step = make_step(model)
  scaled_step.scale_loss = lambda loss: 1024.0 * loss
  scaled = method.gradients(scaled_step, x, y, (eta,))
  for a, b in zip(plain.gradients, scaled.gradients):
    np.testing.assert_allclose(b, 1024.0 * a, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(plain.x_adv, scaled.x_adv)
  overflowing = make_step(model)
  overflowing.scale_loss = lambda loss: loss * 1e38 * 1e38  # inf
  result = method.gradients(overflowing, x, y, (eta,))
  assert np.all(np.isfinite(result.x_adv.numpy()))
  np.testing.assert_allclose(result.x_adv, x + eta, atol=1e-6)  # no gradient, no step


def test_yopo_in_float16_keeps_batch_norms_averages_finite(tmp_path, cifar_dir):
  config = tiny_cifar_config(tmp_path, cifar_dir, max_num_training_steps=2,
                             precision='mixed_float16', **METHODS['yopo'])
  trainer = training.Trainer(CIFAR10, config, log=quiet)
  trainer.run()
  assert all(np.all(np.isfinite(v.numpy())) for v in trainer.model.non_trainable_variables)
  assert all(np.all(np.isfinite(w)) for w in weights(trainer.model))


def test_an_example_twice_in_a_batch_keeps_its_later_value():
  keep = mma.last_occurrences(tf.constant([4, 7, 4, 1, 7, 9], tf.int64)).numpy()
  np.testing.assert_array_equal(keep, [False, False, True, True, True, True])


def test_mma_continues_another_methods_run(tmp_path, mnist_dir):
  config = method_config(tmp_path, mnist_dir, 'mma', max_num_training_steps=4)
  training.train(MNIST, tiny_config(tmp_path, mnist_dir, max_num_training_steps=2), log=quiet)
  lines = []
  trainer = training.Trainer(MNIST, config, log=lines.append)
  assert trainer.run() == 4
  assert any('holds no MMA memory' in line for line in lines), lines
  assert checkpoints.holds(checkpoints.latest(config.model_dir), 'method')  # saved since


@pytest.mark.parametrize('method', sorted(METHODS))
def test_train_py_runs_each_recipe_and_its_flags(tmp_path, mnist_dir, method):
  # The recipe file through the script, its keys overridden by flags (the method's own too).
  own = {'bilateral': ['--bilateral_beta', '4'],
         'mma': ['--mma_max_epsilon', '0.4', '--mma_min_epsilon', '0.05',
                 '--mma_clean_weight', '0.5', '--mma_search_steps', '4'],
         'yopo': ['--yopo_outer_steps', '2', '--yopo_inner_steps', '3'],
         'jacobian': ['--jacobian_lambda', '0.5', '--jacobian_projections', '2'],
         'cross_lipschitz': ['--cross_lipschitz_lambda', '0.2',
                             '--cross_lipschitz_adversarial_fraction', '0.25']}[method]
  result = run_script(['mnist_challenge/train.py', '--config',
                       f'mnist_challenge/configs/{method}.json', '--data_dir', mnist_dir,
                       '--model_dir', str(tmp_path / 'model'), '--max_num_training_steps', '2',
                       '--training_batch_size', '8', '--robustness_check_steps', '0',
                       '--num_output_steps', '1'] + own)
  assert result.returncode == 0, result.stderr
  assert 'training adv accuracy' in result.stdout
  with open(tmp_path / 'model' / 'config.json') as f:
    saved = json.load(f)
  assert all(str(saved[flag[2:]]) == value or float(saved[flag[2:]]) == float(value)
             for flag, value in zip(own[::2], own[1::2]))


@pytest.mark.parametrize('method', [m for c, m in RECIPES if c is CIFAR10])
def test_cifar_train_py_runs_each_recipe(tmp_path, cifar_dir, method):
  # The recipe file through the script, on the non-wide network so that a step is quick.
  result = run_script(['cifar10_challenge/train.py', '--config',
                       f'cifar10_challenge/configs/{method}.json'] + as_flags(dict(
                           data_path=cifar_dir, model_dir=str(tmp_path / 'model'),
                           filters=NON_WIDE, max_num_training_steps=2, training_batch_size=8,
                           robustness_check_steps=0, num_output_steps=1)))
  assert result.returncode == 0, result.stderr
  assert 'training adv accuracy' in result.stdout
  with open(tmp_path / 'model' / 'config.json') as f:
    saved = json.load(f)
  with open(os.path.join(CIFAR10.package_dir, 'configs', f'{method}.json')) as f:
    recipe = json.load(f)
  own = [key for key in recipe if key.startswith(('yopo_', 'bilateral_', 'mma_', 'training_'))
         and key != 'training_batch_size']
  assert own and all(saved[key] == recipe[key] for key in own)


def test_train_py_refuses_a_combination_in_one_line(tmp_path, mnist_dir):
  result = run_script(['mnist_challenge/train.py', '--data_dir', mnist_dir, '--model_dir',
                       str(tmp_path / 'model'), '--training_method', 'mma',
                       '--training_attack', 'fgsm_rs'])
  assert result.returncode == 1
  assert 'training_method "mma" runs its own search' in result.stderr
  assert not (tmp_path / 'model').exists()


def test_the_reference_benchmark_skips_saying_why_without_the_authors_code(tmp_path):
  script = os.path.join(REPO, 'benchmarks', 'methods_reference.py')
  result = run_script([script, '--methods', 'yopo', '--yopo', str(tmp_path / 'absent')])
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('skipped: no copy of the yopo authors\' code at --yopo')
  (tmp_path / 'mma').mkdir()
  (tmp_path / 'mma' / 'anpgd.py').write_text('')
  result = run_script([script, '--methods', 'mma', '--mma', str(tmp_path / 'mma')])
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('skipped: no copy of advertorch at --advertorch')
  (tmp_path / 'advertorch' / 'advertorch' / 'attacks').mkdir(parents=True)
  (tmp_path / 'advertorch' / 'advertorch' / 'attacks' / '__init__.py').write_text('')
  no_torch = tmp_path / 'python'  # a Python whose `import torch` fails
  no_torch.write_text(f'#!/bin/sh\nexec {sys.executable} -c "import sys; sys.exit(1)"\n')
  no_torch.chmod(0o755)
  result = run_script([script, '--methods', 'mma', '--mma', str(tmp_path / 'mma'),
                       '--advertorch', str(tmp_path / 'advertorch'),
                       '--reference_python', str(no_torch)])
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f'skipped: {no_torch} cannot import torch')
  result = run_script([script, '--methods', 'yopo,pgd'])
  assert result.returncode != 0 and 'unknown method(s) pgd' in result.stderr
