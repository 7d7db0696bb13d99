"""Mixed precision: the twin, the attack's threat model in float32, training in bfloat16 and
float16 (loss scaling), checkpoints independent of precision, evaluation float32 unless
opted in."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge.challenge import CIFAR10
from common import checkpoints, commands, distribute, precision, training
from common.attacks import pgd
from common.errors import ChallengeError
from conftest import NON_WIDE, make_cifar_arrays, quiet, tiny_cifar_config, tiny_config
from mnist_challenge.challenge import MNIST

pytestmark = pytest.mark.versions  # run on the oldest supported TensorFlow too

RNG_SEED = 5  # conftest reseeds RNG with it before each test
RNG = np.random.default_rng(RNG_SEED)


def mnist_batch(n=24):
  x = RNG.uniform(0, 1, (n, 784)).astype(np.float32)
  x[:, :100] = 0.0  # pixels at the range's edges, where clipping matters
  x[:, 100:200] = 1.0
  return tf.constant(x), tf.constant(RNG.integers(0, 10, n).astype(np.int64))


def cifar_batch(n=16):
  images, labels = make_cifar_arrays(n, seed=3)
  return tf.constant(images.astype(np.float32)), tf.constant(labels)


def twin_of(challenge, config, name):
  tf.keras.utils.set_random_seed(0)
  model = challenge.build_model(config)
  return model, precision.Twin(model, lambda: challenge.build_model(config), name)


def lines_of(log_calls):
  return lambda *args, **kwargs: log_calls.append(args[0])


def test_precision_keys_default_to_float32_and_unknown_names_are_errors(tmp_path, mnist_dir):
  for challenge in (MNIST, CIFAR10):
    config = challenge.load_config()
    assert (config.precision, config.eval_precision) == ('float32', 'float32')
  with pytest.raises(ChallengeError, match='unknown precision "bfloat16"; use one of: '
                                           'float32, tf32, mixed_bfloat16, mixed_float16'):
    training.Trainer(MNIST, tiny_config(tmp_path, mnist_dir, precision='bfloat16'))
  with pytest.raises(ChallengeError, match='unknown eval_precision "half"'):
    commands.evaluate(MNIST, tiny_config(tmp_path, mnist_dir, eval_precision='half'),
                      once=True)


@pytest.mark.parametrize('challenge', [MNIST, CIFAR10], ids=['mnist', 'cifar10'])
def test_the_twin_computes_the_models_current_weights_in_bfloat16(tmp_path, challenge):
  config = challenge.load_config(overrides={'filters': NON_WIDE} if challenge is CIFAR10
                                 else None)
  x = mnist_batch()[0] if challenge is MNIST else cifar_batch()[0]
  model, twin = twin_of(challenge, config, 'mixed_bfloat16')
  logits = twin(x)
  assert logits.dtype == tf.float32  # the output layer is float32 under the policy
  assert all(v.dtype == 'float32' for v in model.weights)
  reference = model(x, training=False).numpy()
  scale = np.abs(reference).max()
  assert 0 < np.abs(logits.numpy() - reference).max() < 0.05 * scale  # bfloat16, not equal
  # The twin holds no weights of its own: it follows the model's.
  for variable in model.trainable_variables:
    variable.assign(variable * 1.5 + 0.01)
  moved = model(x, training=False).numpy()
  assert np.abs(moved - reference).max() > 0.1 * scale
  assert np.abs(twin(x).numpy() - moved).max() < 0.05 * np.abs(moved).max()


@pytest.mark.parametrize('name', ['mixed_bfloat16', 'mixed_float16'])
@pytest.mark.parametrize('challenge', [MNIST, CIFAR10], ids=['mnist', 'cifar10'])
def test_a_mixed_precision_attack_stays_exactly_inside_the_threat_model(challenge, name):
  config = challenge.load_config(overrides={'filters': NON_WIDE} if challenge is CIFAR10
                                 else None)
  params = dataclasses.replace(challenge.attack_params(config), num_steps=5)
  x, y = mnist_batch() if challenge is MNIST else cifar_batch()
  model, twin = twin_of(challenge, config, name)
  x_adv = pgd.make_pgd(lambda v: twin(v, training=False), params, twin.loss_scale)(x, y)
  assert x_adv.dtype == tf.float32
  x, x_adv, eps = x.numpy(), x_adv.numpy(), np.float32(params.epsilon)
  # The very bounds a float32 attack clips to, computed in float32: no bfloat16 rounding.
  assert np.all(x_adv >= np.maximum(x - eps, params.clip_min))
  assert np.all(x_adv <= np.minimum(x + eps, params.clip_max))
  assert np.abs(x_adv - x).max() > 0.5 * eps  # it moved
  # And it is an attack on the float32 model: its loss rises about as much as under a
  # float32 attack from the same start.
  reference = pgd.make_pgd(lambda v: model(v, training=False), params)(x, y)

  def xent(inputs):
    return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        y, model(inputs, training=False))))
  assert xent(x_adv) > xent(x) + 0.5 * (xent(reference) - xent(x)) > xent(x)


def test_the_float16_attack_scales_its_loss_so_small_gradients_keep_their_sign():
  x, y = mnist_batch(8)

  def tiny_logits(v):  # float16 compute, gradients ~1e-10: they underflow in float16
    return tf.cast(tf.cast(v, tf.float16)[:, :10], tf.float32) * 1e-9

  loss_fn = lambda labels, logits: tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels, logits)
  unscaled = pgd.input_gradient(tiny_logits, x, y, loss_fn).numpy()
  scaled = pgd.input_gradient(tiny_logits, x, y, loss_fn,
                                 precision.ATTACK_LOSS_SCALE_FLOAT16).numpy()
  exact = pgd.input_gradient(lambda v: v[:, :10] * 1e-9, x, y, loss_fn).numpy()
  assert not unscaled.any()  # no step at all without scaling
  np.testing.assert_array_equal(np.sign(scaled), np.sign(exact))
  assert np.count_nonzero(exact) == 8 * 10

  def huge_logits(v):  # gradients that overflow float16 once scaled
    return tf.cast(tf.cast(v, tf.float16)[:, :10] * 60.0, tf.float32) * 1e3

  overflowing = pgd.input_gradient(huge_logits, x, y, loss_fn,
                                      precision.ATTACK_LOSS_SCALE_FLOAT16).numpy()
  assert np.isfinite(overflowing).all()  # inf/NaN components become "no step"


def flat(variables):
  return np.concatenate([np.ravel(v.numpy()) for v in variables])


def test_a_bfloat16_update_follows_the_float32_one(tmp_path, cifar_dir):
  # The momentum optimizer's first update is -lr · gradient: compare gradients directly.
  deltas = {}
  for name in ('float32', 'mixed_bfloat16'):
    config = tiny_cifar_config(tmp_path / name, cifar_dir, max_num_training_steps=1,
                               epsilon=0.0, precision=name)
    trainer = training.Trainer(CIFAR10, config, log=quiet)
    before = flat(trainer.model.trainable_variables)
    trainer.run()
    deltas[name] = flat(trainer.model.trainable_variables) - before
    assert all(v.dtype == 'float32' for v in trainer.model.weights)
  a, b = deltas['float32'], deltas['mixed_bfloat16']
  cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  # The same update up to bfloat16 rounding, which compounds over 31 layers of a freshly
  # initialised net on 8 images (0.97 measured; 0.98 on 64). A twin that used weights of
  # its own would give ~0; a twin that silently computed in float32, exactly 1.
  assert 0.9 < cosine < 0.9999


def test_checkpoints_do_not_depend_on_the_precision_that_wrote_them(tmp_path, mnist_dir):
  # float16 training with Keras' loss scaling, resumed in float32, then evaluated.
  config = tiny_config(tmp_path, mnist_dir, precision='mixed_float16',
                       max_num_training_steps=12, num_checkpoint_steps=6, num_output_steps=6,
                       num_summary_steps=6)
  trainer = training.Trainer(MNIST, config, log=quiet)
  start = flat(trainer.model.trainable_variables)
  assert trainer.run() == 12
  applied = int(trainer.optimizer.iterations.numpy())
  skipped = 12 - applied
  # Dynamic loss scaling: each step whose float16 gradients overflowed was skipped and
  # halved the scale (from 2^15; no growth within 2000 steps). The summed loss of the
  # original overflows at first, then the scale settles and updates are applied.
  assert 0 < skipped < 12
  assert float(trainer.updater.dynamic_scale.numpy()) == 2.0 ** (15 - skipped)
  assert np.isfinite(flat(trainer.model.trainable_variables)).all()
  assert np.abs(flat(trainer.model.trainable_variables) - start).max() > 1e-5
  saved = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(
      config.model_dir))]
  assert not any('dynamic_scale' in name or 'step_counter' in name for name in saved)

  lines = []
  resumed = training.Trainer(MNIST, config.replace(precision='float32',
                                                   max_num_training_steps=14),
                             log=lines_of(lines))
  assert resumed.run() == 14
  assert lines[0].endswith('checkpoint-12 at step 12')
  assert int(resumed.optimizer.iterations.numpy()) == applied + 2


@pytest.fixture(scope='module')
def trained(tmp_path_factory, mnist_dir):
  tmp_path = tmp_path_factory.mktemp('trained_bf16')
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=20, training_batch_size=20,
                       epsilon=0.0, precision='mixed_bfloat16')
  training.train(MNIST, config, log=quiet)
  return config


def test_evaluation_is_float32_unless_opted_in_and_says_so(trained):
  # The model was trained in bfloat16; its evaluation is float32 all the same.
  config = trained.replace(epsilon=0.3, k=5, a=0.05)
  lines = []
  float32 = commands.evaluate(MNIST, config, once=True, log=lines_of(lines))
  assert lines[0].endswith('precision float32, XLA off, deterministic off')
  assert not any(line.startswith('attack precision') or 'attack in' in line for line in lines)
  model = MNIST.build_model(config)
  checkpoints.restore_model(model, tf.train.latest_checkpoint(config.model_dir))
  test = MNIST.load_data(config).test
  assert float32.nat_correct == int(np.sum(
      np.argmax(model(test.images), 1) == test.labels))

  opted = config.replace(eval_precision='mixed_bfloat16')
  lines.clear()
  mixed = commands.evaluate(MNIST, opted, once=True, log=lines_of(lines))
  assert lines[0].startswith('attack precision: mixed_bfloat16 (eval_precision; opt-in')
  assert lines[-1] == '(attack in mixed_bfloat16)'
  assert mixed.nat_correct == float32.nat_correct  # scored by the float32 model
  lines.clear()
  stored = commands.pgd_attack(MNIST, opted, log=lines_of(lines))
  assert lines[-1].endswith('(attack in mixed_bfloat16)')
  x_adv = np.load(opted.store_adv_path)
  assert np.all((x_adv >= test.images - np.float32(0.3)) & (x_adv <= test.images + np.float32(0.3)))
  # run_attack scores in float32 whatever eval_precision says, and prints nothing about it.
  lines.clear()
  accuracy = commands.run_attack(MNIST, opted, log=lines_of(lines))
  assert not any('precision' in line for line in lines)
  predictions = np.argmax(model(x_adv, training=False), 1)
  assert accuracy == pytest.approx(np.mean(predictions == test.labels))
  assert accuracy == pytest.approx(stored.adv_accuracy)


def test_bfloat16_training_under_mirrored_strategy_matches_one_device(tmp_path, mnist_dir):
  # Attack steps of 0 (the attack still runs, from its random start): a sign step amplifies
  # bfloat16 rounding that depends on the batch size (4 or 8 rows: 13% apart in the first
  # moment on an AVX2-only CPU, with or without oneDNN), which is not what is tested here.
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=1,
                       precision='mixed_bfloat16', a=0.0)
  single = training.Trainer(MNIST, config.replace(model_dir=str(tmp_path / 'one')), log=quiet)
  single.run()
  strategy = distribute.local_strategy(['/cpu:0', '/cpu:1'])
  mirrored = training.Trainer(MNIST, config.replace(model_dir=str(tmp_path / 'two')),
                              strategy=strategy, log=quiet)
  mirrored.run()
  for variable in mirrored.model.trainable_variables:  # replicas hold the same weights
    copies = strategy.experimental_local_results(variable.value)
    np.testing.assert_array_equal(copies[0].numpy(), copies[1].numpy())
  # The same gradient up to bfloat16 rounding: Adam's first moment after one step is 0.1 ·
  # the gradient, so it shows the gradient's scale (a gradient off by the number of replicas
  # would be 50% or 100% off). Weight gradients are rounded to bfloat16 after summing 8
  # examples on one device, 4 on each replica: per variable, 0.3% measured on an AVX-512 BF16
  # CPU, over 2% on an AVX2-only one (with oneDNN on or off); 50% or more would be a bug.
  moments = lambda trainer: trainer.optimizer._momentums  # pylint: disable=protected-access
  for a, b in zip(moments(single), moments(mirrored)):
    a, b = a.numpy(), b.numpy()
    assert np.linalg.norm(a) > 0
    assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)
