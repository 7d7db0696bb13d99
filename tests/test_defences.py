"""Input defences (common/defences), BPDA and EOT (common/attacks/eot.py), and AutoAttack's
rand version: each against numpy or a loop, and the obfuscated-gradients lesson on a model
whose gradient is exactly zero. Through the commands: test_defence_commands.py."""
import dataclasses
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import defences, losses
from common.attacks import apgd, autoattack, pgd, registry
from common.attacks.threat import ThreatModel
from common.defences import bit_depth, random_resize_pad, thermometer
from common.errors import ChallengeError
from conftest import MNIST, quiet, tiny_cifar_config

RNG_SEED = 2049
RNG = np.random.default_rng(RNG_SEED)
SHAPE = (28, 28, 1)


def images(n, shape=(784,)):
  return RNG.uniform(0, 1, (n,) + shape).astype(np.float32)


# --- the transforms against numpy -------------------------------------------------------------

def numpy_thermometer(x, levels):
  """code_k = 1 where k ≤ min(⌊levels·x⌋, levels − 1): the cumulative one-hot, written as
  a loop over levels."""
  bucket = np.minimum(np.floor(x * levels), levels - 1)
  return np.stack([(k <= bucket).astype(np.float32) for k in range(levels)], -1)


def numpy_soft(x, levels):
  return np.stack([np.clip(levels * x - k + 1, 0, 1) for k in range(levels)], -1)


@pytest.mark.parametrize('levels', [16, 5])
def test_thermometer_code_and_its_soft_code_against_numpy(levels):
  x = np.concatenate([images(6), np.tile(np.arange(levels + 1, dtype=np.float32) / levels,
                                         (1, 784 // (levels + 1) + 1))[:, :784]])
  defence = thermometer.Thermometer(SHAPE, 1.0, levels)
  coded = defence.apply(tf.constant(x)).numpy()
  assert coded.shape == (len(x), 784 * levels)
  np.testing.assert_array_equal(coded.reshape(len(x), 784, levels), numpy_thermometer(x, levels))
  soft = defence.apply(tf.constant(x), 'approximation').numpy()  # BPDA: the forward is the code
  np.testing.assert_array_equal(soft, coded)
  soft = defence._on_images(defence.approximation_images, tf.constant(x), ()).numpy()
  np.testing.assert_allclose(soft.reshape(len(x), 784, levels), numpy_soft(x, levels), atol=1e-6)
  # The soft code is the code at every level k / levels.
  grid = np.arange(levels, dtype=np.float32) / levels
  np.testing.assert_allclose(numpy_soft(grid, levels), numpy_thermometer(grid, levels))
  # Colour images: each channel's levels together.
  rgb = RNG.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  coded = thermometer.Thermometer((32, 32, 3), 255.0, levels).apply(tf.constant(rgb)).numpy()
  np.testing.assert_array_equal(coded, numpy_thermometer(rgb / 255, levels).reshape(
      2, 32, 32, 3 * levels))


@pytest.mark.parametrize('bits', [1, 3])
def test_bit_depth_against_numpy(bits):
  x = images(5)
  out = bit_depth.BitDepth(SHAPE, 1.0, bits).apply(tf.constant(x)).numpy()
  top = 2 ** bits - 1
  np.testing.assert_allclose(out, np.round(x * top) / top, atol=1e-7)
  rgb = RNG.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  out = bit_depth.BitDepth((32, 32, 3), 255.0, bits).apply(tf.constant(rgb)).numpy()
  np.testing.assert_allclose(out, np.round(rgb / 255 * top) / top * 255, rtol=1e-6)


def numpy_resize_pad(image, r, top, left):
  """Xie et al.'s transform, a pixel at a time: nearest neighbour without half-pixel
  centres, zeros outside the placed image."""
  size = image.shape[0]
  out = np.zeros_like(image)
  for i in range(top, top + r):
    for j in range(left, left + r):
      out[i, j] = image[(i - top) * size // r, (j - left) * size // r]
  return out


def test_random_resize_pad_against_numpy_and_its_draws():
  defence = random_resize_pad.RandomResizePad(SHAPE, 1.0)
  assert (defence.smallest, defence.largest) == (25, 27)
  assert random_resize_pad.RandomResizePad((32, 32, 3), 255.0).smallest == 29
  generator = tf.random.Generator.from_seed(3)
  x = images(300)
  r, top, left = (d.numpy() for d in defence.draw(generator, 300))
  assert set(r) == {25, 26, 27}
  assert (top >= 0).all() and (top <= 28 - r).all() and (left <= 28 - r).all()
  assert set(top[r == 25]) == {0, 1, 2, 3}  # every offset is drawn
  out = defence.transform_images(tf.reshape(x, (-1, 28, 28, 1)), (r, top, left)).numpy()
  for i in range(0, 300, 37):
    np.testing.assert_array_equal(out[i], numpy_resize_pad(x[i].reshape(28, 28, 1), r[i],
                                                           top[i], left[i]))
  # A call draws anew; reseeding repeats the draws.
  model = defences.Defended(lambda v, training=False: v, defence, seed=5)
  first, second = model(tf.constant(x[:20])).numpy(), model(tf.constant(x[:20])).numpy()
  assert not np.array_equal(first, second)
  model.reseed(5)
  np.testing.assert_array_equal(model(tf.constant(x[:20])).numpy(), first)


# --- BPDA ------------------------------------------------------------------------------------

def network(inputs=784, seed=0):
  keras.utils.set_random_seed(seed)
  return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(32, activation='tanh'),
                           keras.layers.Dense(10)])


def input_gradient(model_fn, x, labels):
  x = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(losses.xent(labels, model_fn(x)))
  return tape.gradient(loss, x)


def test_bpda_identity_is_the_networks_gradient_at_the_transformed_input():
  x, labels = images(8), RNG.integers(0, 10, 8)
  net = network()
  defence = bit_depth.BitDepth(SHAPE, 1.0, 2)
  squeezed = defence.apply(tf.constant(x)).numpy()
  naive = input_gradient(defences.Defended(net, defence, 'off'), x, labels)
  assert naive is None or not np.any(naive.numpy())  # rounding: no gradient at all
  bpda = input_gradient(defences.Defended(net, defence, 'identity'), x, labels).numpy()
  expected = input_gradient(net, squeezed, labels).numpy()
  np.testing.assert_array_equal(bpda, expected)
  assert np.any(bpda)
  # Identity on a transform whose own gradient is not: random_resize_pad's (one draw).
  shifted = defences.Defended(net, random_resize_pad.RandomResizePad(SHAPE, 1.0), 'identity',
                              seed=4)
  placed = shifted.transform(tf.constant(x)).numpy()
  shifted.reseed(4)
  np.testing.assert_array_equal(input_gradient(shifted, x, labels).numpy(),
                                input_gradient(net, placed, labels).numpy())
  # "on" is bit_depth's default backward: the identity.
  assert defences.backward_of(MNIST.load_config(overrides={
      'defence': 'bit_depth', 'bpda': 'on'}), defence) == 'identity'


def test_bpda_approximation_is_the_soft_codes_chain_rule():
  x, labels = images(6), RNG.integers(0, 10, 6)
  levels = 16
  net = network(784 * levels)
  defence = thermometer.Thermometer(SHAPE, 1.0, levels)
  bpda = input_gradient(defences.Defended(net, defence, 'approximation'), x, labels).numpy()
  # The network's gradient at the code, through the soft code's Jacobian (diagonal per
  # pixel: levels where levels·x − k + 1 lies in (0, 1), else 0).
  upstream = input_gradient(net, defence.apply(tf.constant(x)).numpy(), labels).numpy()
  ramp = levels * x[..., None] - np.arange(levels) + 1
  slope = np.where((ramp > 0) & (ramp < 1), levels, 0.0)
  expected = np.sum(upstream.reshape(6, 784, levels) * slope, -1)
  np.testing.assert_allclose(bpda, expected, rtol=1e-5, atol=1e-6)
  assert np.any(bpda)
  naive = input_gradient(defences.Defended(net, defence, 'off'), x, labels)
  assert naive is None or not np.any(naive.numpy())


def zero_gradient_problem():
  """A linear two-class model on inputs whose pixels are 0.6: class 1 when most pixels are
  above one half after 1-bit reduction. ε 0.3 lets every pixel fall to 0.3: a sign step
  breaks it if it is shown the way."""
  net = keras.Sequential([keras.Input((784,)), keras.layers.Dense(2)])
  kernel = np.zeros((784, 2), np.float32)
  kernel[:, 1] = 0.01  # logits of moderate size: the softmax does not saturate
  net.layers[0].set_weights([kernel, np.array([3.92, 0.0], np.float32)])
  x = np.full((4, 784), 0.6, np.float32)
  return net, x, np.ones(4, np.int64)


def test_plain_pgd_moves_nothing_through_a_zero_gradient_and_bpda_breaks_it():
  net, x, labels = zero_gradient_problem()
  defence = bit_depth.BitDepth(SHAPE, 1.0, 1)
  params = pgd.PGDParams(0.3, 10, 0.05, random_start=False)
  naive = defences.Defended(net, defence, 'off')
  assert (np.argmax(naive(tf.constant(x)).numpy(), 1) == labels).all()
  x_adv = pgd.pgd(naive, tf.constant(x), labels, params).numpy()
  np.testing.assert_array_equal(x_adv, x)  # no gradient: no step
  bpda = defences.Defended(net, defence, 'identity')
  x_adv = pgd.pgd(bpda, tf.constant(x), labels, params).numpy()
  assert np.abs(x_adv - x).max() <= 0.3 + 1e-6
  assert (np.argmax(naive(tf.constant(x_adv)).numpy(), 1) != labels).all()  # broken
  # APGD alike, through the registry (BPDA is the model's: every gradient attack gets it).
  threat = ThreatModel('linf', 0.3)
  attack = registry.make('apgd-ce', threat, 10)
  start = tf.constant(x)
  for model, broken in ((naive, False), (bpda, True)):
    x_adv, fooled = attack(model, tf.constant(x), labels, labels, start)
    assert fooled.numpy().all() == broken


# --- EOT -------------------------------------------------------------------------------------

def test_eot_gradient_is_the_mean_over_the_seeded_draws_and_repeats():
  x, labels = images(5), RNG.integers(0, 10, 5)
  net = network()
  model = defences.Defended(net, random_resize_pad.RandomResizePad(SHAPE, 1.0), seed=11)
  xt = tf.constant(x)
  eot = pgd.input_gradient(model, xt, labels, losses.xent, samples=7).numpy()
  model.reseed(11)
  singles = [pgd.input_gradient(model, xt, labels, losses.xent).numpy() for _ in range(7)]
  np.testing.assert_allclose(eot, np.sum(singles, 0) / 7, rtol=1e-5, atol=1e-7)
  assert not np.allclose(singles[0], singles[1])  # the draws differ
  model.reseed(11)
  np.testing.assert_array_equal(
      pgd.input_gradient(model, xt, labels, losses.xent, samples=7).numpy(), eot)
  # APGD's: the mean gradient, the last pass's logits and loss (the reference's eot_iter).
  model.reseed(11)
  logits, loss, gradient = apgd._loss_and_gradient(model, xt, labels, losses.xent, 4)
  model.reseed(11)
  passes = [apgd._loss_and_gradient(model, xt, labels, losses.xent) for _ in range(4)]
  np.testing.assert_allclose(gradient.numpy(), sum(p[2].numpy() for p in passes) / 4,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(logits.numpy(), passes[-1][0].numpy())
  np.testing.assert_array_equal(loss.numpy(), passes[-1][1].numpy())


def test_pgd_with_eot_repeats_with_its_seed_and_averages_inside_the_attack():
  x, labels = images(6), RNG.integers(0, 10, 6)
  model = defences.Defended(network(), random_resize_pad.RandomResizePad(SHAPE, 1.0), seed=1)
  params = pgd.PGDParams(0.3, 3, 0.1, random_start=False, eot_samples=5)
  runs = []
  for _ in range(2):
    model.reseed(1)
    runs.append(pgd.pgd(model, tf.constant(x), labels, params).numpy())
  np.testing.assert_array_equal(runs[0], runs[1])
  # One step of PGD with EOT is the sign of the loop's mean gradient.
  model.reseed(1)
  singles = [pgd.input_gradient(model, tf.constant(x), labels, losses.xent).numpy()
             for _ in range(5)]
  model.reseed(1)
  step = pgd.pgd(model, tf.constant(x), labels, dataclasses.replace(params, num_steps=1)).numpy()
  expected = np.clip(x + 0.1 * np.sign(np.sum(singles, 0) / 5), 0, 1)
  np.testing.assert_allclose(step, expected, atol=1e-6)


# --- AutoAttack's rand version ----------------------------------------------------------------

def test_rand_version_runs_apgd_ce_and_dlr_with_eot_20_and_no_randomness_warning(recwarn):
  x, labels = images(12), RNG.integers(0, 10, 12)
  model = defences.Defended(network(), random_resize_pad.RandomResizePad(SHAPE, 1.0), seed=2)
  attacker = autoattack.AutoAttack(model, 0.3, 0.0, 1.0, SHAPE, version='rand', batch_size=12,
                                   apgd_iterations=2, log=quiet)
  assert [a.name for a in attacker._chain] == ['apgd-ce', 'apgd-dlr']
  assert [a.eot_samples for a in attacker._chain] == [20, 20]
  report = attacker.run(x, labels)
  assert [o.attack for o in report.outcomes] == ['apgd-ce', 'apgd-dlr']
  assert not [w for w in recwarn if 'randomised' in str(w.message)]
  # The standard version warns, naming the rand version.
  with pytest.warns(UserWarning, match='--version rand'):
    autoattack.AutoAttack(model, 0.3, 0.0, 1.0, SHAPE, ['apgd-ce'], batch_size=12,
                          apgd_iterations=1, log=quiet).run(x, labels)
  refused = pytest.raises(ChallengeError, match='unknown version "plus"')
  with refused:
    autoattack.AutoAttack(model, 0.3, 0.0, 1.0, SHAPE, version='plus')


def test_rand_version_judges_the_returned_point_by_one_more_pass():
  """A model right at every point but the clean images, where it answers at random (one
  time in two): the attack never fools it (its start and iterates are not clean images), so
  what it returns is the clean image, judged by a fresh pass (the reference's rule): about
  half of the clean-correct are broken; the standard rule would break none."""
  clean = images(200)
  labels = np.zeros(200, np.int64)

  class CoinOnCleanImages:
    def __init__(self):
      self.generator = tf.random.Generator.from_seed(0)

    def __call__(self, x, training=False):
      right = tf.one_hot(tf.zeros(tf.shape(x)[0], tf.int64), 10) * 5.0 + 0.0 * x[:, :10]
      distance = tf.reduce_max(tf.abs(x[:, None, :] - clean[None, :, :]), axis=-1)
      is_clean = tf.reduce_min(distance, axis=1) == 0
      flip = is_clean & (self.generator.uniform([tf.shape(x)[0]]) < 0.5)
      return tf.where(flip[:, None], tf.roll(right, 1, axis=1), right)

  for version, low, high in (('rand', 0.1, 0.4), ('standard', 0.35, 0.65)):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # (random: the standard version says so)
      report = autoattack.AutoAttack(CoinOnCleanImages(), 0.3, 0.0, 1.0, SHAPE, ['apgd-ce'],
                                     version=version, batch_size=200, apgd_iterations=2,
                                     eot_samples=1, log=quiet).run(clean, labels)
    assert 0.35 < report.clean_accuracy < 0.65
    assert low < report.robust_accuracy < high, version
    if version == 'standard':
      assert report.robust_accuracy == report.clean_accuracy  # nothing fooled


def test_apgd_takes_eot_samples_passes_per_gradient():
  calls = tf.Variable(0)
  net = network()

  def counted(x):
    calls.assign_add(1)
    return net(x)
  x, labels = images(4), RNG.integers(0, 10, 4)
  for samples in (1, 3):
    calls.assign(0)
    attack = registry.make('apgd-ce', ThreatModel('linf', 0.3), 2, eot_samples=samples)
    attack(counted, tf.constant(x), labels, labels, tf.constant(x))
    assert int(calls.numpy()) == 3 * samples  # the start and two iterations
  calls.assign(0)
  pgd.pgd(counted, tf.constant(x), labels,
          pgd.PGDParams(0.3, 2, 0.1, random_start=False, eot_samples=4))
  assert int(calls.numpy()) == 2 * 4


# --- the commands, bad input ------------------------------------------------------------------

def test_bad_combinations_are_refused_in_one_line():
  shape, top = SHAPE, 1.0
  config = lambda **overrides: MNIST.load_config(overrides=overrides)
  cases = [
      (dict(bpda='on'), 'no defence is set'),
      (dict(eot_samples=2), 'nothing to average'),
      (dict(defence='bit_depth', eot_samples=3), 'bit_depth is deterministic: nothing to'),
      (dict(defence='thermometer', bpda='identity'), 'changes the input\'s shape'),
  ]
  for overrides, match in cases:
    with pytest.raises(ChallengeError, match=match):
      defences.from_config(config(**overrides), shape, top)
  with pytest.raises(ChallengeError, match='eot_samples" must be at least 1'):
    config(eot_samples=0)
  with pytest.raises(ChallengeError, match='takes one pass per gradient'):
    registry.make('square', ThreatModel('linf', 0.3), eot_samples=2)
  assert defences.from_config(config(), shape, top) is None
  net = network()
  assert defences.defend(net, config(), MNIST) is net  # nothing changes without a defence


def test_cifar_thermometer_network_takes_the_codes(tmp_path):
  from conftest import CIFAR10
  config = tiny_cifar_config(tmp_path, str(tmp_path), defence='thermometer',
                             thermometer_levels=4)
  assert CIFAR10.build_model(config).input_shape == (None, 32, 32, 12)
  assert CIFAR10.build_model(config.replace(defence='bit_depth')).input_shape == (
      None, 32, 32, 3)
