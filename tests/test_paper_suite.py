"""The paper's evaluation suite: FGSM, targeted PGD, CW/CW+, transfer, architecture B, the
table command and the loss landscape, on tiny models and data."""
import csv
import dataclasses
import functools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge.challenge import CIFAR10
from common import (checkpoints, commands, landscape, losses, paper_table, precision,
                    training)
from common.attacks import autoattack, cw_linf, pgd, registry
from common.attacks.pgd import PGDParams
from common.data import Split
from common.errors import ChallengeError
from common.evaluation import Evaluator
from conftest import quiet, run_script, tiny_cifar_config, tiny_config
from mnist_challenge import model as mnist_model
from mnist_challenge.challenge import MNIST

RNG_SEED = 11  # conftest reseeds RNG with it before each test
RNG = np.random.default_rng(RNG_SEED)


@pytest.fixture(scope='module')
def net():
  keras.utils.set_random_seed(5)
  return mnist_model.build_model()


def batch(model, n=20):
  x = tf.constant(RNG.uniform(0, 1, (n, 784)).astype(np.float32))
  return x, tf.argmax(model(x, training=False), axis=1)  # correct at first


def test_fgsm_is_one_sign_step_of_epsilon_from_the_input(net):
  x, y = batch(net)
  params = pgd.fgsm_params(0.1, 0.0, 1.0)
  assert (params.num_steps, params.step_size, params.random_start) == (1, 0.1, False)
  grad = pgd.input_gradient(lambda v: net(v), x, y, losses.xent)
  expected = np.clip(x.numpy() + 0.1 * np.sign(grad.numpy()), 0, 1)
  np.testing.assert_allclose(pgd.pgd(lambda v: net(v), x, y, params).numpy(), expected,
                             atol=1e-6)


@pytest.mark.parametrize('rule', list(pgd.TARGET_RULES))
def test_targeted_pgd_raises_the_probability_of_its_target(net, rule):
  x, y = batch(net)
  logits = net(x).numpy()
  targets = pgd.choose_targets(rule, logits, y, seed=tf.constant([1, 2], tf.int64)).numpy()
  assert not np.any(targets == y.numpy())
  wrong = np.where(np.eye(10)[y.numpy()] == 1, np.nan, logits)
  if rule == 'most_likely':
    np.testing.assert_array_equal(targets, np.nanargmax(wrong, 1))
  if rule == 'least_likely':
    np.testing.assert_array_equal(targets, np.nanargmin(wrong, 1))
  params = PGDParams(0.1, 10, 0.01)
  x_adv = pgd.pgd(lambda v: net(v), x, targets, params,
                     loss_fn=pgd.targeted(losses.xent), seed=tf.constant([3, 4], tf.int64))
  probability = lambda inputs: tf.nn.softmax(net(inputs)).numpy()[np.arange(len(y)), targets]
  assert np.all(probability(x_adv) > probability(x))
  with pytest.raises(ChallengeError, match='unknown target rule "easiest"'):
    pgd.choose_targets('easiest', logits, y)


def test_the_cw_confidence_sets_where_the_attack_stops_pushing():
  # A linear model: the margin correct - best wrong logit moves steadily with each step.
  w = tf.constant(RNG.normal(0, 1, (784, 10)).astype(np.float32))
  model_fn = lambda v: tf.matmul(v, w)
  x = tf.constant(RNG.uniform(0.3, 0.7, (16, 784)).astype(np.float32))
  y = tf.argmax(model_fn(x), axis=1)
  params = PGDParams(0.3, 100, 0.002, random_start=False)

  def margin(confidence):
    x_adv = pgd.pgd(model_fn, x, y, params,
                       loss_fn=functools.partial(losses.cw, confidence=confidence))
    logits = model_fn(x_adv).numpy()
    correct = logits[np.arange(16), y.numpy()]
    logits[np.arange(16), y.numpy()] = -np.inf
    return correct - logits.max(1)

  stopped, pushed = margin(0.0), margin(50.0)
  # κ = 0: once misclassified the loss is flat (gradient 0, sign 0) and it stops just past
  # the boundary; κ = 50 keeps pushing to a margin of -50.
  assert np.all(stopped <= 0) and np.all(stopped > -3)
  assert np.all(pushed < stopped - 5)


def test_transfer_uses_the_sources_gradients_only(net):
  keras.utils.set_random_seed(6)
  source = mnist_model.build_model()
  x, y = batch(net, 20)
  params = PGDParams(0.2, 5, 0.05)
  data = Split(x.numpy(), y.numpy())
  transfer = Evaluator(net, params, attack_twin=precision.Twin(source, None, 'float32'),
                       seed=9).attack(data, 20, keep_adversarial=True)
  white_box = Evaluator(net, params, seed=9).attack(data, 20, keep_adversarial=True)
  # The same random starts (seed 9, drawn per example): the transfer examples are PGD on
  # the source alone.
  start = pgd.starting_points(x, params, tf.constant([9, 0], tf.int64),
                                 examples=tf.range(20, dtype=tf.int64))[0]
  on_source = pgd.pgd(lambda v: source(v, training=False), x, y, params, start=start)
  np.testing.assert_allclose(transfer.adversarial, on_source.numpy(), atol=1e-6)
  assert not np.allclose(transfer.adversarial, white_box.adversarial)
  assert transfer.nat_correct == white_box.nat_correct == 20  # scored by the target


def test_architecture_b_as_the_reference_code_builds_it():
  config = MNIST.load_config(overrides={'model': 'tramer_b'})
  model = MNIST.build_model(config)
  shapes = [tuple(v.shape) for v in model.trainable_variables]
  assert shapes == [(8, 8, 1, 64), (64,), (6, 6, 64, 128), (128,), (5, 5, 128, 128), (128,),
                    (128, 10), (10,)]
  x = tf.constant(RNG.uniform(0, 1, (4, 784)).astype(np.float32))
  np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
  assert not np.allclose(model(x, training=True), model(x, training=False))  # dropout
  with pytest.raises(ChallengeError, match='unknown model "resnet"'):
    MNIST.build_model(MNIST.load_config(overrides={'model': 'resnet'}))


def read_table(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_the_tables_hold_the_papers_rows():
  assert [row.label for row in MNIST.paper_table] == [
      'natural from A', 'FGSM from A', 'PGD 40 from A', 'PGD 100 from A', 'PGD 40 x 20 from A',
      'PGD 100 x 20 from A', 'targeted 40 from A', 'CW 40 from A', 'CW+ 40 from A',
      "FGSM from A'", "PGD 40 from A'", "PGD 100 x 20 from A'", "CW 40 from A'",
      "CW+ 40 from A'", 'FGSM from B', 'PGD 40 from B', 'CW 40 from B', 'CW+ 40 from B',
      'AutoAttack 100 from A']
  assert [row.label for row in CIFAR10.paper_table] == [
      'natural from A', 'FGSM from A', 'PGD 7 from A', 'PGD 20 from A', 'CW 30 from A',
      "FGSM from A'", "PGD 7 from A'", "CW 30 from A'", 'FGSM from A_nat', 'PGD 7 from A_nat',
      'AutoAttack 100 from A']


def scaled_down(challenge):
  """The challenge with its table's rows at a tenth of the steps and at most 3 restarts:
  the same command and rows, at a test's cost."""
  rows = tuple(dataclasses.replace(row, steps=row.steps and max(row.steps // 10, 1),
                                   restarts=min(row.restarts, 3))
               for row in challenge.paper_table)
  return dataclasses.replace(challenge, paper_table=rows)


@pytest.fixture(scope='module')
def table_models(tmp_path_factory, mnist_dir):
  """A (adversarially trained, briefly), A' (another seed) and B (architecture B, natural)."""
  tmp_path = tmp_path_factory.mktemp('table')
  common = dict(max_num_training_steps=6, training_batch_size=20, num_checkpoint_steps=6,
                eval_batch_size=10)
  models = {'A': tiny_config(tmp_path / 'a', mnist_dir, **common),
            "A'": tiny_config(tmp_path / 'a2', mnist_dir, random_seed=7, **common),
            'B': tiny_config(tmp_path / 'b', mnist_dir, model='tramer_b', epsilon=0.0, **common)}
  for config in models.values():
    training.train(MNIST, config, log=quiet)
  return models


def sources(models, *names):
  """--source values NAME=MODEL_DIR for the named models."""
  return tuple(f'{name}={models[name].model_dir}' for name in names)


def test_the_mnist_table_has_every_row_or_an_explicit_skip(tmp_path, table_models):
  model_a = table_models['A']
  lines = []
  log = lambda *a, **k: lines.append(a[0])
  challenge = scaled_down(MNIST)
  results = commands.evaluate_table(challenge, model_a,
                                    source=sources(table_models, "A'"),
                                    num_examples=10, output_dir=str(tmp_path / 'out'), log=log)
  rows = read_table(tmp_path / 'out' / 'table.csv')
  assert len(rows) == len(results) == len(MNIST.paper_table)
  for row, spec, result in zip(rows, challenge.paper_table, results):
    assert (row['method'], row['source'], row['restarts']) == (
        spec.method, spec.source, str(spec.restarts))
    assert row['steps'] == ('' if spec.steps is None else str(spec.steps))
    if spec.source == 'B':  # not given: listed, not dropped
      assert row['accuracy %'] == '' and row['note'].startswith('skipped')
    else:
      assert row['accuracy %'] == f'{result.accuracy:.2f}' and row['note'] == ''
  accuracy = {r.row.label: r.accuracy for r in results}
  # The natural row: the model's own predictions on the first 10 test images.
  model = MNIST.build_model(model_a)
  checkpoints.restore_model(model, checkpoints.latest(model_a.model_dir))
  test = MNIST.load_data(model_a).test.head(10)
  assert accuracy['natural from A'] == 100.0 * np.mean(
      np.argmax(model(test.images, training=False), 1) == test.labels)
  assert accuracy['PGD 4 x 3 from A'] <= accuracy['PGD 4 from A']
  # AutoAttack (at a tenth of its iterations here) is at least as strong as every PGD row.
  assert accuracy['AutoAttack 10 from A'] <= min(
      a for label, a in accuracy.items() if label.startswith('PGD') and label.endswith(' A'))
  assert (tmp_path / 'out' / 'table.md').read_text().count('\n| ') == len(MNIST.paper_table) + 1
  assert any('skipped' in line for line in lines)
  # Deterministic: the same figures again; B given, its rows are run.
  again = commands.evaluate_table(
      challenge, model_a, source=sources(table_models, "A'", 'B'),
      num_examples=10, output_dir=str(tmp_path / 'out2'), log=quiet)
  for first, second in zip(results, again):
    if first.accuracy is not None:
      assert first.accuracy == second.accuracy, first.row.label
    else:
      assert second.accuracy is not None  # the B rows
  with pytest.raises(ChallengeError, match='--source must be NAME=MODEL_DIR'):
    commands.evaluate_table(challenge, model_a, source=('nonsense',), log=quiet)
  with pytest.raises(ChallengeError, match='no row of the table uses source'):
    commands.evaluate_table(challenge, model_a, source=(f'C={table_models["B"].model_dir}',),
                            log=quiet)
  with pytest.raises(ChallengeError, match=r'no row of the table uses method\(s\) PDG; '
                                           'methods: natural, FGSM, PGD, targeted, CW'):
    commands.evaluate_table(challenge, model_a, method=('PGD', 'PDG'), log=quiet)
  # Only the rows of the methods asked for are run, with the figures of the whole table's run.
  only = commands.evaluate_table(challenge, model_a, method=('natural', 'CW+'),
                                 source=sources(table_models, "A'"), num_examples=10,
                                 output_dir=str(tmp_path / 'out3'), log=quiet)
  for first, chosen in zip(results, only):
    if first.row.method in ('natural', 'CW+'):
      assert chosen.accuracy == first.accuracy, first.row.label
    else:
      assert chosen.accuracy is None and chosen.note.startswith('skipped: method'), first.row.label


def test_each_row_runs_the_attack_it_names(tmp_path, table_models, monkeypatch):
  # What each row's attack actually receives when it runs (recorded at the calls into the
  # attack core, as the compiled evaluation traces them), against the row's specification.
  runs, current = {}, {}
  real_evaluator_for, real_pgd, real_restarts = (paper_table.evaluator_for, pgd.pgd,
                                                 pgd.pgd_restarts)

  def evaluator_for(row, model, attacker, *args, **kwargs):
    evaluator = real_evaluator_for(row, model, attacker, *args, **kwargs)
    current['row'] = row.label
    runs[row.label] = {'evaluated': model, 'crafted with': attacker.model,
                       'target rule': evaluator.target_rule, 'pgd': [], 'restarts': []}
    return evaluator

  def recorded_pgd(model_fn, x_nat, labels, params, seed=None, loss_fn=None, **kwargs):
    runs[current['row']]['pgd'].append((params, loss_fn))
    return real_pgd(model_fn, x_nat, labels, params, seed=seed, loss_fn=loss_fn, **kwargs)

  def pgd_restarts(model_fn, x_nat, labels, params, restarts, *args, **kwargs):
    runs[current['row']]['restarts'].append(restarts)
    return real_restarts(model_fn, x_nat, labels, params, restarts, *args, **kwargs)

  real_autoattack = autoattack.AutoAttack

  def recorded_autoattack(model_fn, epsilon, clip_min, clip_max, image_shape, attacks, *args,
                          **kwargs):
    runs[current['row']]['autoattack'] = (epsilon, tuple(attacks), kwargs['apgd_iterations'],
                                          kwargs['fab_iterations'], kwargs['square_queries'])
    return real_autoattack(model_fn, epsilon, clip_min, clip_max, image_shape, attacks, *args,
                           **kwargs)

  monkeypatch.setattr(autoattack, 'AutoAttack', recorded_autoattack)
  monkeypatch.setattr(paper_table, 'evaluator_for', evaluator_for)
  monkeypatch.setattr(pgd, 'pgd', recorded_pgd)
  monkeypatch.setattr(pgd, 'pgd_restarts', pgd_restarts)
  challenge = scaled_down(MNIST)
  results = commands.evaluate_table(
      challenge, table_models['A'], source=sources(table_models, "A'", 'B'),
      num_examples=10, target_rule='least_likely', output_dir=str(tmp_path / 'out'), log=quiet)
  assert all(result.accuracy is not None for result in results)
  config = table_models['A']
  model_a, crafted_with = runs['natural from A']['evaluated'], {}
  for spec in challenge.paper_table:
    run = runs[spec.label]
    assert run['evaluated'] is model_a, spec.label  # every row scores model A
    crafted_with.setdefault(spec.source, run['crafted with'])
    assert run['crafted with'] is crafted_with[spec.source], spec.label
  # The gradients come from the row's source: A's own model, or the model in the source's
  # model_dir (its weights, and for B its architecture).
  assert crafted_with['A'] is model_a
  for name, model in crafted_with.items():
    saved = MNIST.build_model(table_models[name])
    checkpoints.restore_model(saved, checkpoints.latest(table_models[name].model_dir))
    assert model.name == saved.name and len(model.weights) == len(saved.weights)
    for ours, expected in zip(model.weights, saved.weights):
      np.testing.assert_array_equal(ours.numpy(), expected.numpy())
  for spec in challenge.paper_table:
    run = runs[spec.label]
    if spec.method in ('natural', 'AutoAttack'):
      assert run['pgd'] == [] and run['restarts'] == []
      if spec.method == 'AutoAttack':  # the standard version at the row's iterations
        assert run['autoattack'] == (0.3, autoattack.STANDARD, spec.steps, spec.steps,
                                     50 * spec.steps)
      continue
    params, loss_fn = run['pgd'][0]
    assert all(p == params for p, _ in run['pgd'])  # every trace and restart alike
    assert params.epsilon == config.epsilon == 0.3
    assert (params.clip_min, params.clip_max) == (0.0, 1.0)
    if spec.method == 'FGSM':
      assert (params.num_steps, params.step_size, params.random_start) == (1, 0.3, False)
    else:
      assert (params.num_steps, params.step_size, params.random_start) == (
          spec.steps, config.a, True), spec.label
    assert set(run['restarts']) == ({spec.restarts} if spec.restarts > 1 else set()), spec.label
    assert run['target rule'] == ('least_likely' if spec.method == 'targeted' else None)
    if spec.method in ('CW', 'CW+'):
      assert loss_fn.func is losses.cw, spec.label
      assert loss_fn.keywords == {'confidence': {'CW': 0.0, 'CW+': 50.0}[spec.method]}
    elif spec.method == 'targeted':
      # Descends the target class's cross-entropy: the loss is minus xent of the target.
      logits = tf.constant([[2.0, 0.5, -1.0]])
      assert float(loss_fn(tf.constant([1]), logits)[0]) == pytest.approx(
          -float(losses.xent(tf.constant([1]), logits)[0]))
    else:
      assert loss_fn is losses.xent, spec.label


@pytest.mark.slow
def test_rows_named_by_attack_follow_the_papers_and_judge_inside_the_ball(tmp_path,
                                                                          table_models,
                                                                          monkeypatch):
  model_a = table_models['A']
  budgets = []  # what each named row's attack is made with
  real_make, real_init = registry.make, autoattack.AutoAttack.__init__

  def make(name, threat, iterations=0, *args, **kwargs):
    budgets.append((name, iterations))
    return real_make(name, threat, iterations, *args, **kwargs)

  def init(self, *args, **kwargs):
    budgets.append((tuple(kwargs.get('attacks', args[5])), kwargs['apgd_iterations']))
    real_init(self, *args, **kwargs)
  monkeypatch.setattr(registry, 'make', make)
  monkeypatch.setattr(autoattack.AutoAttack, '__init__', init)
  results = commands.evaluate_table(
      scaled_down(MNIST), model_a, method=('natural', 'apgd-ce', 'cw-linf'),
      attack=('apgd-ce:5', 'cw-linf:20'), num_examples=10,
      output_dir=str(tmp_path / 'out'), log=quiet)
  named = results[len(MNIST.paper_table):]
  assert [r.row.label for r in named] == ['apgd-ce 5 from A', 'cw-linf 20 from A']
  assert (('apgd-ce',), 5) in budgets and ('cw-linf', 20) in budgets
  monkeypatch.undo()
  rows = read_table(tmp_path / 'out' / 'table.csv')
  assert [(r['method'], r['steps']) for r in rows[-2:]] == [('apgd-ce', '5'), ('cw-linf', '20')]
  model = MNIST.build_model(model_a)
  checkpoints.restore_model(model, checkpoints.latest(model_a.model_dir))
  model_fn = lambda x: model(x, training=False)
  test = MNIST.load_data(model_a).test.head(10)
  params = MNIST.attack_params(model_a)
  seed = MNIST.seed(model_a) + len(MNIST.paper_table)  # the row's index
  # apgd-ce: the figure AutoAttack's chain gives with that attack alone.
  chain = autoattack.AutoAttack(model_fn, params.epsilon, 0.0, 1.0, (28, 28, 1), ['apgd-ce'],
                                10, seed, apgd_iterations=5, log=quiet).run(test.images,
                                                                            test.labels)
  assert named[0].accuracy == 100.0 * chain.robust_accuracy
  # cw-linf minimises the distance: its example counts as a break only inside the ε-ball.
  x_adv, success = tf.function(lambda: cw_linf.cw_linf(
      model_fn, test.images, test.labels, params.threat, max_iterations=20))()
  wrong = np.argmax(model_fn(x_adv), 1) != test.labels
  inside = np.abs(x_adv.numpy() - test.images).max(axis=1) <= params.epsilon + 1e-6
  clean = np.argmax(model_fn(test.images), 1) == test.labels
  assert named[1].accuracy == pytest.approx(100.0 * np.mean(clean & ~(wrong & inside)))
  with pytest.raises(ChallengeError, match='unknown attack "cw-l1" in --attack cw-l1; names'):
    commands.evaluate_table(MNIST, model_a, attack=('cw-l1',), log=quiet)
  with pytest.raises(ChallengeError, match='the iterations after ":" must be a positive'):
    commands.evaluate_table(MNIST, model_a, attack=('square:0',), log=quiet)


def test_the_cifar_table_script_with_a_transfer_source(tmp_path, cifar_dir):
  config = tiny_cifar_config(tmp_path / 'a', cifar_dir, max_num_training_steps=2,
                             eval_batch_size=10)
  natural = tiny_cifar_config(tmp_path / 'nat', cifar_dir, max_num_training_steps=2,
                              epsilon=0.0)
  training.train(CIFAR10, config, log=quiet)
  training.train(CIFAR10, natural, log=quiet)
  # Natural and FGSM (FGSM from A and from A_nat): every row of every method ran
  # here, AutoAttack's above all, for over 400 s on a 2-core CPU; the MNIST tests above check
  # each method's rows in process.
  methods = ['natural', 'FGSM']
  result = run_script(['cifar10_challenge/evaluate.py', '--config',
                       os.path.join(config.model_dir, 'config.json'), '--num_examples', '10',
                       '--source', f'A_nat={natural.model_dir}',
                       '--output_dir', str(tmp_path / 'out')]
                      + [f'--method={m}' for m in methods])
  assert result.returncode == 0, result.stderr
  rows = read_table(tmp_path / 'out' / 'table.csv')
  assert [r['source'] for r in rows] == [spec.source for spec in CIFAR10.paper_table]
  for row, spec in zip(rows, CIFAR10.paper_table):
    if spec.method not in methods:
      assert row['note'] == 'skipped: method not asked for (--method)', spec.label
    elif spec.source == "A'":
      assert row['note'] == "skipped: no model given for source A'", spec.label
    else:
      assert row['note'] == '' and 0 <= float(row['accuracy %']) <= 100, spec.label
  assert "skipped (no --source A'=<model_dir>)" in result.stdout
  assert 'AutoAttack 100 from A' in result.stdout and 'not asked for' in result.stdout


def test_the_landscape_records_every_iteration_of_every_restart(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=2, k=6, eval_batch_size=32)
  training.train(MNIST, config, log=quiet)
  natural = tiny_config(tmp_path / 'nat', mnist_dir, max_num_training_steps=2, epsilon=0.0)
  training.train(MNIST, natural, log=quiet)
  lines = []
  traces = commands.loss_landscape(MNIST, config, num_examples=3, restarts=7,
                                   compare_model_dir=natural.model_dir,
                                   output_dir=str(tmp_path / 'out'),
                                   log=lambda *a, **k: lines.append(a[0]))
  saved = np.load(tmp_path / 'out' / 'landscape.npz')
  for name in ('model', 'compared'):
    assert traces[name].shape == (3, 7, 7)  # examples, restarts, k + 1
    np.testing.assert_array_equal(saved[f'{name}_losses'], traces[name])
    np.testing.assert_array_equal(saved[f'{name}_final'], traces[name][:, :, -1])
    # Restarts differ (random starts), and PGD raises the loss from its start on average.
    assert np.ptp(traces[name][:, :, 0], axis=1).min() > 0
    assert np.mean(traces[name][:, :, -1]) > np.mean(traces[name][:, :, 0])
  assert sum('outlier restart(s)' in line for line in lines) == 6
  assert os.listdir(tmp_path / 'out' / 'model') and os.listdir(tmp_path / 'out' / 'compared')


def test_landscape_summary_finds_an_outlying_restart():
  final = np.array([[1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 9.0],
                    [2.0, 2.1, 1.9, 2.0, 2.05, 1.95, 2.02]])
  summary = landscape.summarise(final)
  np.testing.assert_array_equal(summary['outliers'], [1, 0])
  np.testing.assert_allclose(summary['max'], [9.0, 2.1])
  np.testing.assert_allclose(summary['median'], [1.0, 2.0])
