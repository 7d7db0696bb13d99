"""The one attack interface (common/attacks/registry.py) and the one runner
(common/attacks/runner.py): every attack called one way; batches, padding and replicas
written once; results that do not depend on the batch size or the number of replicas."""
import numpy as np
import pytest
import tensorflow as tf

from common import data, evaluation
from common.attacks import autoattack, cw_l2, pgd, registry, runner
from common.attacks.threat import ThreatModel
from common.errors import ChallengeError

RNG = np.random.default_rng(0)


def two_cpus():
  return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])


def mlp(seed, inputs=12, hidden=16, classes=4, scale=3.0):
  rng = np.random.default_rng(seed)
  w1 = tf.constant(rng.normal(0, scale / np.sqrt(inputs), (inputs, hidden)), tf.float32)
  w2 = tf.constant(rng.normal(0, scale / np.sqrt(hidden), (hidden, classes)), tf.float32)
  return lambda v: tf.matmul(tf.tanh(tf.matmul(v, w1)), w2)


def test_map_returns_every_row_in_order_and_pads_a_partial_batch_to_a_sixteenth():
  seen = []

  def fn(batch, x, index):
    seen.append((int(batch), int(x.shape[0])))
    return x * 2.0, index + 100 * batch

  x = np.arange(45, dtype=np.float32)[:, None]
  index = np.arange(45, dtype=np.int64)
  doubled, tagged = runner.Runner(batch_size=32).map(fn, [x, index])
  np.testing.assert_array_equal(doubled, 2 * x)
  np.testing.assert_array_equal(tagged, index + 100 * (index >= 32))  # batch 1 from row 32
  assert seen == [(0, 32), (1, 14)]  # 13 rows padded to the next multiple of 32 / 16
  (only,) = runner.Runner(batch_size=32).map(fn, [x, index], keep=1)  # the rest not held
  np.testing.assert_array_equal(only, 2 * x)


def test_map_splits_each_batch_evenly_over_the_replicas_and_gathers_in_order():
  rows = []

  def fn(batch, x):
    rows.append(int(x.shape[0]))
    return (x + tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group,
                        tf.float32) * 1000,)

  x = np.arange(21, dtype=np.float32)[:, None]
  strategy = two_cpus()
  two = runner.Runner(strategy, batch_size=15)
  assert two.batch_size == 16  # rounded up to a multiple of the replicas
  (out,) = two.map(fn, [x])
  # Batch 0: rows 0-7 on replica 0, 8-15 on replica 1; batch 1 (5 rows, padded to 6): 16-18
  # and 19-20 (+ the padding row) on replica 1.
  expected = x[:, 0] + 1000 * np.array([0] * 8 + [1] * 8 + [0] * 3 + [1] * 2)
  np.testing.assert_array_equal(out[:, 0], expected)
  assert rows == [8, 8, 3, 3]


@pytest.mark.parametrize('name', sorted(registry.ATTACKS))
def test_every_attack_is_called_one_way_and_keeps_to_its_threat_model(name):
  model_fn = mlp(seed=1)
  x = RNG.uniform(0, 1, (10, 12)).astype(np.float32)
  labels = np.argmax(model_fn(x).numpy(), 1)
  threat = ThreatModel('linf', 0.2, 0.0, 1.0)
  options = {'params': pgd.PGDParams(0.2, 5, 0.05)} if name == 'pgd' else {}
  attack = registry.make(name, threat, 3, (2, 2, 3), **options)
  targets = (labels + 1) % 4
  x_adv, success = runner.Runner(batch_size=8).attack(attack, model_fn, x, labels, targets,
                                                     seed=4)
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert success.shape == (10,) and success.dtype == bool
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  if attack.norm is None:  # an ε attack stays in the ball
    assert threat.contains(x_adv, x, 1e-6).all()
  predicted = np.argmax(model_fn(x_adv).numpy(), 1)
  assert np.all(predicted[success] != labels[success])  # what it calls a success is one
  assert success.any()  # a random MLP at ε 0.2: some break


@pytest.mark.parametrize('name', ['pgd', 'apgd-ce', 'apgd-t', 'fab-t', 'cw-linf'])
def test_a_seeded_attack_does_not_depend_on_the_batch_size_or_the_replicas(name):
  # Draws from (seed, each example's index): the same examples whatever the batching. (Square
  # draws its squares per batch, as the reference does, and C&W-ℓ2 aborts per batch, as its
  # authors' code does: both depend on the batching by design.)
  model_fn = mlp(seed=2)
  x = RNG.uniform(0, 1, (19, 12)).astype(np.float32)
  labels = np.argmax(model_fn(x).numpy(), 1)
  threat = ThreatModel('l2', 0.8, 0.0, 1.0)
  options = {'params': pgd.PGDParams(0.8, 5, 0.3, norm='l2')} if name == 'pgd' else {}
  attack = registry.make(name, threat, 4, **options)
  targets = (labels + 2) % 4
  reference, _ = runner.Runner(batch_size=19).attack(attack, model_fn, x, labels, targets,
                                                     seed=3)
  for strategy, batch_size in ((None, 5), (two_cpus(), 8)):
    other, _ = runner.Runner(strategy, batch_size).attack(attack, model_fn, x, labels, targets,
                                                          seed=3)
    np.testing.assert_allclose(other, reference, rtol=0, atol=1e-5)  # float rounding
  if name in ('pgd', 'apgd-ce', 'apgd-t'):  # random starts: another seed, other points
    other, _ = runner.Runner(batch_size=19).attack(attack, model_fn, x, labels, targets, seed=4)
    assert not np.allclose(other, reference)


def test_unknown_names_and_targets_an_attack_cannot_take_are_one_line_errors():
  threat = ThreatModel('linf', 0.1)
  with pytest.raises(ChallengeError, match='unknown attack "cw-l1"; use one of: pgd, apgd-ce'):
    registry.make('cw-l1', threat)
  with pytest.raises(ChallengeError, match='apgd-ce has no targeted form; the targeted attacks: '
                                           'apgd-t, fab-t, cw-l2, cw-linf, cw-l0'):
    registry.make('apgd-ce', threat, to_targets=True)
  with pytest.raises(ChallengeError, match='pgd needs its PGDParams'):
    registry.make('pgd', threat)


def test_robust_accuracy_counts_a_break_only_when_misclassified_inside_the_ball():
  # A linear model on 2 inputs: class 1 when x0 > x1.
  model_fn = lambda v: tf.stack([v[:, 1], v[:, 0]], axis=1)
  x = np.array([[0.2, 0.6], [0.2, 0.6], [0.2, 0.6], [0.7, 0.1]], np.float32)
  labels = np.array([0, 0, 0, 0])  # the last one misclassified already
  adversarial = np.array([[0.2, 0.6],     # not moved: robust
                          [0.45, 0.35],   # crosses, ℓ∞ 0.25 <= 0.3: broken
                          [0.7, 0.6],     # crosses, but ℓ∞ 0.5 > 0.3: outside, robust
                          [0.7, 0.1]], np.float32)
  split = data.Split(x, labels)
  threat = ThreatModel('linf', 0.3)
  assert evaluation.robust_accuracy(model_fn, threat, split, adversarial, 3) == 0.5
  assert evaluation.robust_accuracy(model_fn, ThreatModel('l2', 0.3), split, adversarial,
                                    3) == 0.75  # ℓ2 0.354 > 0.3: the second is outside now
  assert evaluation.robust_accuracy(model_fn, ThreatModel('l2', 0.36), split, adversarial,
                                    3) == 0.5


def test_attack_by_name_runs_autoattacks_four_as_the_chain_and_cw_as_its_function():
  model_fn = mlp(seed=5, classes=10)  # APGD-T: towards the 2nd ... 10th class
  x = RNG.uniform(0, 1, (14, 12)).astype(np.float32)
  labels = np.argmax(model_fn(x).numpy(), 1)
  labels[:3] = (labels[:3] + 1) % 10  # three misclassified already
  split = data.Split(x, labels.astype(np.int64))
  params = pgd.PGDParams(0.15, 5, 0.05)
  by_name = evaluation.attack_by_name('apgd-t', model_fn, params, split, (2, 2, 3),
                                      batch_size=8, seed=2, iterations=4)
  chain = autoattack.AutoAttack(model_fn, 0.15, 0.0, 1.0, (2, 2, 3), ['apgd-t'], batch_size=8,
                                seed=2, apgd_iterations=4, log=lambda *a, **k: None).run(
                                    x, labels)
  np.testing.assert_array_equal(by_name, chain.adversarial)
  targets = (labels + 1) % 10
  cw = evaluation.attack_by_name('cw-l2', model_fn, params, split, None, batch_size=14,
                                 iterations=20, targets=targets)
  direct, _ = tf.function(lambda: cw_l2.cw_l2(model_fn, x, labels, params.threat,
                                              tf.constant(targets), max_iterations=20))()
  np.testing.assert_allclose(cw, direct.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize('name', sorted(n for n, a in registry.ATTACKS.items() if a.xla))
def test_each_attack_xla_allows_compiles_and_agrees_with_the_uncompiled(name):
  # jit_compile (the config key) reaches every attack through the runner; Square opts out.
  model_fn = mlp(seed=6, inputs=16)
  x = RNG.uniform(0, 1, (6, 16)).astype(np.float32)
  labels = np.argmax(model_fn(x).numpy(), 1)
  options = {'params': pgd.PGDParams(0.2, 4, 0.05)} if name == 'pgd' else {}
  attack = registry.make(name, ThreatModel('linf', 0.2), 5, (4, 4, 1), **options)
  targets = (labels + 1) % 4
  plain, plain_success = runner.Runner(batch_size=8).attack(attack, model_fn, x, labels,
                                                            targets, seed=1)
  compiled, success = runner.Runner(batch_size=8).attack(attack, model_fn, x, labels, targets,
                                                         seed=1, jit_compile=True)
  np.testing.assert_allclose(compiled, plain, rtol=0, atol=1e-5)
  np.testing.assert_array_equal(success, plain_success)
