"""Op determinism (`deterministic`) in every command, alone and with XLA (`jit_compile`) and
every precision: each command runs or refuses in one line; deterministic runs repeat bit for
bit (evaluations across processes, training across a resume with XLA); the ops replaced
under determinism (MNIST's max pooling, CIFAR-10's inference batch norm) compute what
TensorFlow's own do, gradient included."""
import itertools
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from cifar10_challenge.challenge import CIFAR10
from common import commands, files, pooling, runtime, training
from common.errors import ChallengeError
from conftest import (NON_WIDE, REPO, as_flags, quiet, run_script, tiny_cifar_config,
                      tiny_config)
from mnist_challenge.challenge import MNIST

RNG_SEED = 25
RNG = np.random.default_rng(RNG_SEED)

PRECISIONS = ('float32', 'tf32', 'mixed_bfloat16', 'mixed_float16')
COMMANDS = ('train', 'eval', 'pgd_attack', 'run_attack', 'autoattack', 'evaluate', 'landscape')


# --- the replaced ops compute TensorFlow's -------------------------------------------------

def traced_value_and_gradient(fn, x, upstream):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = fn(x)
  return y, tape.gradient(y, x, output_gradients=upstream)


def value_and_gradient(fn, x, upstream):
  return tuple(t.numpy() for t in traced_value_and_gradient(fn, x, upstream))


@pytest.mark.parametrize('shape,padding', [((3, 28, 28, 5), 'same'), ((3, 7, 7, 4), 'same'),
                                           ((2, 7, 9, 3), 'valid'), ((2, 14, 14, 8), 'same')])
@pytest.mark.versions
def test_max_pool_is_tensorflows_bit_for_bit_ties_included(shape, padding):
  # Integers in 0..2: most windows hold ties, the case where gradients could differ.
  x = tf.constant(RNG.integers(0, 3, shape).astype(np.float32))
  native = lambda v: tf.nn.max_pool2d(v, 2, 2, padding.upper())
  upstream = tf.constant(RNG.normal(size=native(x).shape).astype(np.float32))
  expected = value_and_gradient(native, x, upstream)
  ours = value_and_gradient(lambda v: pooling.max_pool(v, 2, padding), x, upstream)
  for a, b in zip(expected, ours):
    np.testing.assert_array_equal(b, a)
  # Averaging over ties (reduce_max's own gradient) would not be TensorFlow's gradient.
  averaged = value_and_gradient(lambda v: tf.reduce_max(tf.reshape(
      v[:, :shape[1] // 2 * 2, :shape[2] // 2 * 2], [-1, 2]), axis=-1), x, None)[1]
  assert 0.5 in np.unique(averaged)


def op_types(fn, x, jit_compile):
  graph = tf.function(fn, jit_compile=jit_compile).get_concrete_function(x).graph
  return {op.type for op in graph.get_operations()}


@pytest.mark.versions
def test_the_mnist_network_under_determinism_and_xla_pools_with_the_original_gradient():
  model = MNIST.build_model(None)
  x = tf.constant(np.round(RNG.uniform(size=(6, 784)) * 4).astype(np.float32) / 4)  # ties
  y = tf.constant(RNG.integers(0, 10, 6))

  def input_gradient(v):
    with tf.GradientTape() as tape:
      tape.watch(v)
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(v)))
    return tape.gradient(loss, v)
  runtime.make_deterministic(True)
  # TensorFlow refuses its own max pool's gradient under XLA: "GPU MaxPool gradient ops do not
  # yet have a deterministic XLA implementation" (on CPUs too); the command says what to do.
  with pytest.raises(tf.errors.UnimplementedError) as refused:
    tf.function(lambda v: traced_value_and_gradient(
        lambda u: tf.nn.max_pool2d(u, 2, 2, 'SAME'), v, None), jit_compile=True)(
            tf.zeros([1, 4, 4, 1]))
  conflict = runtime.determinism_conflict(refused.value)
  assert 'do not yet have a deterministic XLA implementation' in conflict
  assert 'jit_compile false (keeps deterministic) or deterministic false' in conflict
  # Without XLA the network keeps TensorFlow's kernels (deterministic there, and faster);
  # compiled by XLA it pools with common.pooling.
  assert {'MaxPool', 'MaxPoolGrad'} <= op_types(input_gradient, x, jit_compile=False)
  assert not {'MaxPool', 'MaxPoolGrad'} & op_types(input_gradient, x, jit_compile=True)
  native = input_gradient(x).numpy()
  compiled = tf.function(input_gradient, jit_compile=True)(x).numpy()
  # XLA sums in another order: rounding only (a tie sent elsewhere would move whole terms).
  np.testing.assert_allclose(compiled, native, rtol=1e-4, atol=1e-5 * np.abs(native).max())
  tf_config.disable_op_determinism()
  assert 'MaxPoolGrad' in op_types(input_gradient, x, jit_compile=True)  # XLA's own


@pytest.mark.versions
@pytest.mark.slow
def test_an_op_tensorflow_cannot_run_deterministically_ends_a_command_in_one_line():
  # A command whose model pools with TensorFlow's own max pool under XLA and determinism.
  program = (
      'from common import cli\n'
      'import tensorflow as tf\n'
      'from mnist_challenge.challenge import MNIST\n'
      'def command(challenge, config):\n'
      '  tf.config.experimental.enable_op_determinism()\n'
      '  def pooled(x):\n'
      '    with tf.GradientTape() as tape:\n'
      '      tape.watch(x)\n'
      '      y = tf.nn.max_pool2d(x, 2, 2, "SAME")\n'
      '    return tape.gradient(y, x)\n'
      '  tf.function(pooled, jit_compile=True)(tf.zeros([1, 4, 4, 1]))\n'
      'cli.run(command, MNIST)\n')
  result = run_script(['-c', program])
  assert result.returncode == 1, result.stderr
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      'error: the model needs an op that TensorFlow cannot run deterministically here ("GPU '
      'MaxPool gradient ops do not yet have a deterministic XLA implementation."); run it with '
      'jit_compile false (keeps deterministic) or deterministic false (keeps XLA)')


@pytest.mark.versions
def test_cifar_batch_norm_is_fused_in_training_mode_only():
  """Inference mode, which every evaluation attack differentiates through, is Keras'
  arithmetic in every run (TensorFlow has no deterministic GPU kernel for the fused op's
  gradient there, and an exported model computes it so); training mode keeps the fused
  kernel (deterministic)."""
  model = CIFAR10.build_model(tiny_cifar_config_free())
  x = tf.constant(RNG.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32))
  inference = lambda v: model(v, training=False)
  for deterministic in (False, True):
    runtime.make_deterministic(deterministic)
    for xla in (False, True):
      assert not any(t.startswith('FusedBatchNorm') for t in op_types(inference, x, xla))
  assert 'FusedBatchNormV3' in op_types(lambda v: model(v, training=True), x, False)


def tiny_cifar_config_free():
  return CIFAR10.load_config(overrides={'filters': NON_WIDE})


# --- every command under every switch ------------------------------------------------------

SWITCHES = tuple(itertools.product(('true', 'false'), (True, False)))  # (jit, deterministic)


def matrix_rows(challenge):
  """(command, precision, jit, deterministic) rows for `challenge`. MNIST: every command with
  each of the four (jit, deterministic) pairs, and across those four rows each precision
  once (rotated from command to command). CIFAR-10, whose network takes 8 s a row to trace:
  every command with two of the pairs, (XLA, deterministic) and (neither) or the two mixed
  ones in turn, the precisions rotated. Together: every pair of values of the five factors
  (challenge, command, precision, jit, deterministic), and for MNIST every command with
  every (jit, deterministic) pair."""
  rows = []
  for c, command in enumerate(COMMANDS):
    if challenge is MNIST:
      switches = SWITCHES
    else:
      switches = (SWITCHES[0], SWITCHES[3]) if c % 2 == 0 else (SWITCHES[1], SWITCHES[2])
    for j, (jit, deterministic) in enumerate(switches):
      rows.append((command, PRECISIONS[(c + j + 2 * (c % 2) * (challenge is not MNIST)) % 4],
                   jit, deterministic))
  return rows


def test_the_matrix_covers_every_pair_of_settings():
  rows = [(challenge.name,) + row for challenge in (MNIST, CIFAR10)
          for row in matrix_rows(challenge)]
  values = (('mnist', 'cifar10'), COMMANDS, PRECISIONS, ('true', 'false'), (True, False))
  for (i, a), (j, b) in itertools.combinations(enumerate(values), 2):
    assert {(row[i], row[j]) for row in rows} == set(itertools.product(a, b)), (i, j)
  assert {r[1:2] + r[3:] for r in rows if r[0] == 'mnist'} == set(itertools.product(
      COMMANDS, ('true', 'false'), (True, False)))


def run_command(challenge, command, config, tmp_path, chain=''):
  """The command as its script runs it (without the flags), on a few examples; returns
  the files it must have written. `chain`: autoattack's --attacks (default: standard)."""
  out = tmp_path / 'out'
  if command == 'train':
    commands.train(challenge, config)
    return [os.path.join(config.model_dir, f'checkpoint-{config.max_num_training_steps}.index')]
  if command == 'eval':
    commands.evaluate(challenge, config, once=True, log=quiet)
    return [os.path.join(config.model_dir, 'eval')]
  if command == 'pgd_attack':
    commands.pgd_attack(challenge, config.replace(store_adv_path=str(out / 'adv.npy')),
                        log=quiet)
    return [str(out / 'adv.npy')]
  if command == 'run_attack':
    commands.run_attack(challenge, config, log=quiet)
    return [config.pred_path]
  if command == 'autoattack':
    commands.run_autoattack(challenge, config.replace(store_adv_path=str(out / 'aa.npy')),
                            attacks=chain, num_examples=2, batch_size=2, iterations=1,
                            output_dir=str(out), log=quiet)
    return [str(out / 'autoattack.json'), str(out / 'aa.npy')]
  if command == 'evaluate':
    commands.evaluate_table(challenge, config, num_examples=4, method=('FGSM',),
                            output_dir=str(out), log=quiet)
    return [str(out / 'table.csv')]
  assert command == 'landscape'
  commands.loss_landscape(challenge, config, num_examples=2, restarts=2, output_dir=str(out),
                          log=quiet)
  return [str(out / 'landscape.npz')]


@pytest.fixture(scope='module')
def trained(tmp_path_factory, mnist_dir, cifar_dir):
  """Each challenge's tiny config, with a trained checkpoint and a valid submission."""
  made = {}
  for challenge in (MNIST, CIFAR10):
    tmp_path = tmp_path_factory.mktemp(f'determinism_{challenge.name}')
    if challenge is MNIST:
      config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=2, k=2)
    else:
      config = tiny_cifar_config(tmp_path, cifar_dir, max_num_training_steps=2, num_steps=2)
    training.train(challenge, config, log=quiet)
    test = challenge.load_data(config).test
    files.save_npy(config.store_adv_path, test.images.astype(np.float32))  # unperturbed
    made[challenge.name] = config
  return made


# The MNIST halves run on the oldest supported TensorFlow too (marker `versions`).
BOTH_CHALLENGES = [pytest.param(MNIST, id='mnist', marks=pytest.mark.versions),
                   pytest.param(CIFAR10, id='cifar10')]


@pytest.mark.slow
@pytest.mark.parametrize('challenge', BOTH_CHALLENGES)
def test_every_command_runs_under_every_switch(challenge, trained, tmp_path):
  base = trained[challenge.name]
  outcomes = []
  for i, (command, precision, jit, deterministic) in enumerate(matrix_rows(challenge)):
    row = tmp_path / f'{i}'
    config = base.replace(precision=precision, eval_precision=precision, jit_compile=jit,
                          deterministic=deterministic)
    if command == 'train':  # from scratch, two steps
      config = config.replace(model_dir=str(row / 'model'))
    # AutoAttack's whole chain takes 30 s to trace on the CIFAR-10 network: there, it runs
    # with both switches on, and APGD-CE alone under the other settings.
    both = jit == 'true' and deterministic
    chain = '' if challenge is MNIST or both else 'apgd-ce'
    tf.random.set_seed(None)  # as in a new process: no global seed left by earlier training
    try:
      written = run_command(challenge, command, config, row, chain)
      missing = [path for path in written if not os.path.exists(path)]
      outcomes.append(f'missing {missing}' if missing else 'ran')
    except ChallengeError as e:  # exit 1 with one line
      assert '\n' not in str(e), (command, precision, jit, deterministic)
      outcomes.append(f'refused: {e}')
    finally:
      tf_config.disable_op_determinism()
  report = {row: outcome for row, outcome in zip(matrix_rows(challenge), outcomes)}
  # Every combination runs: none needs refusing now (XLA keeps determinism's ops).
  assert all(outcome == 'ran' for outcome in outcomes), report


# --- deterministic runs repeat bit for bit -------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize('challenge', BOTH_CHALLENGES)
def test_deterministic_training_with_xla_resumed_equals_an_uninterrupted_run(
    challenge, tmp_path, mnist_dir, cifar_dir):
  def config(name, steps):
    if challenge is MNIST:
      made = tiny_config(tmp_path / name, mnist_dir, max_num_training_steps=steps)
    else:
      made = tiny_cifar_config(tmp_path / name, cifar_dir, max_num_training_steps=steps)
    return made.replace(deterministic=True, jit_compile='true')
  straight = training.Trainer(challenge, config('a', 4), log=quiet)
  assert tf_config.is_op_determinism_enabled() and straight.jit_compile
  straight.run()
  training.train(challenge, config('b', 2), log=quiet)
  resumed = training.Trainer(challenge, config('b', 4), log=quiet)
  resumed.run()
  assert int(resumed.step.numpy()) == 4
  for a, b in zip(straight.model.weights + straight.optimizer.variables,
                  resumed.model.weights + resumed.optimizer.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def events(directory):
  """{events file: [(step, tag, float32 value)]} of the TensorBoard files in directory."""
  found = {}
  for name in sorted(os.listdir(directory)):
    values = []
    for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
      for value in event.summary.value:
        values.append((event.step, value.tag, tf.make_ndarray(value.tensor).tobytes()))
    found[name] = values
  return found


@pytest.mark.slow
def test_deterministic_evaluations_repeat_bit_for_bit_across_processes(tmp_path, trained):
  model_dir = str(tmp_path / 'model')  # a copy: eval.py writes into model_dir/eval
  shutil.copytree(trained['mnist'].model_dir, model_dir, ignore=shutil.ignore_patterns('eval'))
  flags = as_flags({'data_dir': trained['mnist'].data_dir, 'model_dir': model_dir, 'k': 2,
                    'num_eval_examples': 30, 'eval_batch_size': 20})

  def attack(name, *extra):
    path = tmp_path / f'{name}.npy'
    result = run_script(['mnist_challenge/pgd_attack.py', '--deterministic', '--jit_compile',
                         'true', '--store_adv_path', str(path)] + flags + list(extra))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith('XLA on, deterministic on'), result.stdout
    return path.read_bytes()
  first = attack('first')
  assert attack('again') == first
  assert attack('other_seed', '--random_seed', '5') != first  # the comparison can fail

  eval_dir = tmp_path / 'eval_runs'
  for run in range(2):
    result = run_script(['mnist_challenge/eval.py', '--once', '--deterministic'] + flags)
    assert result.returncode == 0, result.stderr
    # eval.py writes to model_dir/eval: keep each run's events file apart.
    os.makedirs(eval_dir / str(run))
    for name in os.listdir(os.path.join(model_dir, 'eval')):
      os.rename(os.path.join(model_dir, 'eval', name), eval_dir / str(run) / name)
  (a,), (b,) = events(eval_dir / '0').values(), events(eval_dir / '1').values()
  assert len(a) == 6 and a == b


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize('challenge', [MNIST, CIFAR10], ids=['mnist', 'cifar10'])
def test_deterministic_commands_repeat_bit_for_bit_on_a_gpu(challenge, tmp_path, mnist_dir,
                                                           cifar_dir):
  # On the GPU (jit_compile auto: XLA on), then without XLA: train.py twice, pgd_attack.py
  # twice; each pair must be equal bit for bit.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('CUDA_VISIBLE_DEVICES', None)
  if challenge is MNIST:
    settings = {'data_dir': mnist_dir, 'k': 3}
  else:
    settings = {'data_path': cifar_dir, 'filters': NON_WIDE, 'num_steps': 2}
  settings.update(max_num_training_steps=3, num_checkpoint_steps=3, training_batch_size=16,
                  num_eval_examples=40, eval_batch_size=20)
  for jit in ('auto', 'false'):
    outputs = []
    for run in range(2):
      model_dir = tmp_path / f'{jit}{run}'
      flags = as_flags({**settings, 'model_dir': str(model_dir), 'jit_compile': jit,
                        'store_adv_path': str(model_dir / 'adv.npy')})
      flags += ['--deterministic', '--noeval_on_cpu']
      for name in ('train.py', 'pgd_attack.py'):
        result = subprocess.run([sys.executable, os.path.join(challenge.package_dir, name)]
                                + flags, cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr
        assert ', GPU; ' in result.stdout.splitlines()[0], result.stdout
        assert ('XLA on' if jit == 'auto' else 'XLA off') in result.stdout.splitlines()[0]
      weights = tf.train.load_checkpoint(str(model_dir / 'checkpoint-3'))
      outputs.append(({name: np.asarray(weights.get_tensor(name)).tobytes()
                       for name in weights.get_variable_to_shape_map()},
                      (model_dir / 'adv.npy').read_bytes()))
    assert outputs[0] == outputs[1], jit
