"""Models in and out: export_model.py writes a checkpoint's model (ours or an original TF1
one) as a .keras file or a SavedModel that plain Keras / TensorFlow load in a process that
never imports this project, with the checkpoint's logits bit for bit; every evaluation
command takes such a file, or a researcher's own Keras model, with --model_path; bad files
get clear errors; autoattack.evaluate and evaluation.evaluate take any model in one call."""
import json
import os
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge.challenge import CIFAR10
from common import checkpoints, commands, evaluation, model_files, training
from common.attacks import autoattack
from common.errors import ChallengeError
from common.evaluation import Evaluator
from conftest import (REPO, quiet, require_shared_mnist, run_script, tiny_cifar_config,
                      tiny_config)
from mnist_challenge.challenge import MNIST
from tf1_originals import Original, mnist_network

# Saving and loading models is what changes between Keras releases: CI runs these on the
# oldest supported pair too.
pytestmark = pytest.mark.versions


def randomised(model, seed):
  """`model` with random weights and batch norm averages (variances positive), so that a
  layer copied wrongly or computed differently cannot go unnoticed."""
  rng = np.random.default_rng(seed)
  for variable in model.weights:
    if 'moving_variance' in variable.path or 'gamma' in variable.path:
      variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
    else:
      scale = 0.5 / np.sqrt(max(np.prod(variable.shape[:-1]), 1))
      variable.assign(rng.normal(0, scale, variable.shape).astype(np.float32))
  return model


def graph_logits(model, x):
  """The logits of `model` computed in a graph (tf.function), as the commands compute them
  and as a SavedModel's function runs: graph rewrites (e.g. oneDNN's fused convolution,
  bias and ReLU on TensorFlow 2.18) may round the last bit otherwise than eager calls."""
  return tf.function(lambda t: model(t, training=False))(tf.constant(x)).numpy()


def saved_checkpoint(challenge, config, seed=0):
  model = randomised(challenge.build_model(config), seed)
  checkpoints.save_model(model, 7, config.model_dir)
  return model


@pytest.fixture(scope='module')
def mnist_model(tmp_path_factory, mnist_dir):
  """(config, model): an MNIST checkpoint, trained briefly (naturally): accurate, not
  robust."""
  config = tiny_config(tmp_path_factory.mktemp('mnist'), mnist_dir)
  training.train(MNIST, config.replace(max_num_training_steps=30, training_batch_size=20,
                                       num_checkpoint_steps=30, k=0), log=quiet)
  model = MNIST.build_model(config)
  checkpoints.restore_model(model, checkpoints.latest(config.model_dir))
  return config, model


@pytest.fixture(scope='module')
def cifar_model(tmp_path_factory, cifar_dir):
  """(config, model): a CIFAR-10 checkpoint (the non-wide network) of random weights."""
  config = tiny_cifar_config(tmp_path_factory.mktemp('cifar'), cifar_dir)
  return config, saved_checkpoint(CIFAR10, config)


@pytest.fixture(scope='module')
def mnist_export(tmp_path_factory, mnist_model):
  config, _ = mnist_model
  path = str(tmp_path_factory.mktemp('exported') / 'robust.keras')
  commands.export_model(MNIST, config, output=path, log=quiet)
  return path


def foreign_mnist_model(path, activation=None, input_shape=(784,), lambda_layer=False):
  """A small Keras model that is not ours (the challenge's input contract), saved to path."""
  inputs = keras.Input(input_shape)
  x = keras.layers.Reshape((28, 28, 1))(inputs) if input_shape == (784,) else inputs
  if lambda_layer:
    x = keras.layers.Lambda(lambda t: t * 1.0)(x)
  x = keras.layers.Conv2D(4, 3, strides=2, activation='relu')(x)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(10, activation=activation)(x)
  model = keras.Model(inputs, outputs)
  randomised(model, 3)
  model.save(path)
  return model


# --- export -------------------------------------------------------------------------------

def test_portable_networks_compute_the_same_logits_from_keras_own_layers(mnist_model,
                                                                          cifar_model):
  for challenge, config in ((MNIST, mnist_model[0]),
                            (MNIST, mnist_model[0].replace(model='tramer_b')),
                            (MNIST, mnist_model[0].replace(model='small_cnn')),
                            (CIFAR10, cifar_model[0])):
    model = randomised(challenge.build_model(config), 1)
    portable = model_files.portable_copy(model, lambda: challenge.build_portable_model(config),
                                         challenge.input_shape, challenge.pixel_max)
    for layer in portable.layers:  # nothing of this project's: loadable without it
      assert type(layer).__module__.startswith('keras.'), type(layer)
    x = np.random.default_rng(2).uniform(0, challenge.pixel_max,
                                         (6,) + challenge.input_shape).astype(np.float32)
    np.testing.assert_array_equal(portable(x, training=False), model(x, training=False))


FRESH_PROCESS = textwrap.dedent('''
    import sys
    import numpy as np
    import keras
    import tensorflow as tf
    jobs = np.load(sys.argv[1], allow_pickle=False)
    logits = {}
    for name in jobs['names']:
      path, x = str(jobs[name + '/path']), jobs[name + '/x']
      if path.endswith('.keras'):
        logits[name] = keras.saving.load_model(path)(x, training=False).numpy()
      else:
        loaded = tf.saved_model.load(path)  # kept: it holds the variables
        logits[name] = loaded.serve(tf.constant(x)).numpy()
    ours = sorted(m for m in sys.modules
                  if m.split('.')[0] in ('common', 'mnist_challenge', 'cifar10_challenge'))
    assert not ours, ours
    np.savez(sys.argv[2], **logits)
''')


@pytest.mark.slow
def test_exports_load_without_this_project_and_give_the_checkpoints_logits(
    tmp_path, mnist_model, cifar_model):
  """Both formats, both challenges, and an original TF1 checkpoint: loaded in a fresh
  process that imports only numpy, keras and tensorflow, bit for bit on the CPU (a .keras
  model called eagerly as the checkpoint's model called eagerly; a SavedModel's function, a
  graph, as the checkpoint's model in a tf.function)."""
  original = Original(mnist_network, (784,), 0)
  original.randomise(np.random.default_rng(4))
  tf1_config = mnist_model[0].replace(model_dir=str(tmp_path / 'tf1'))
  original.save(tf1_config.model_dir)
  cases = {'mnist_keras': (MNIST, mnist_model[0], 'robust.keras'),
           'mnist_saved': (MNIST, mnist_model[0], 'robust_saved_model'),
           'cifar_keras': (CIFAR10, cifar_model[0], 'cifar.keras'),
           'cifar_saved': (CIFAR10, cifar_model[0], 'cifar_saved_model'),
           'tf1_keras': (MNIST, tf1_config, 'original.keras')}
  jobs, expected = {'names': np.array(list(cases))}, {}
  for name, (challenge, config, output) in cases.items():
    path = str(tmp_path / output)
    assert commands.export_model(challenge, config, output=path, log=quiet) == path
    x = np.random.default_rng(5).uniform(0, challenge.pixel_max,
                                         (7,) + challenge.input_shape).astype(np.float32)
    model = challenge.build_model(config)
    checkpoints.restore_model(model, checkpoints.latest(config.model_dir),
                              challenge.tf1_variables)
    expected[name] = (model(x, training=False).numpy() if output.endswith('.keras')
                      else graph_logits(model, x))
    jobs[name + '/path'], jobs[name + '/x'] = np.array(path), x
  np.testing.assert_allclose(expected['tf1_keras'], original.logits(jobs['tf1_keras/x']),
                             rtol=1e-5, atol=1e-5)  # the TF1 graph's (test_tf1_checkpoints.py)
  np.savez(tmp_path / 'jobs.npz', **jobs)
  script = tmp_path / 'load.py'
  script.write_text(FRESH_PROCESS)
  result = run_script([str(script), str(tmp_path / 'jobs.npz'), str(tmp_path / 'out.npz')],
                      cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = np.load(tmp_path / 'out.npz')
  for name in cases:
    np.testing.assert_array_equal(loaded[name], expected[name], err_msg=name)


@pytest.mark.slow
def test_the_export_script_writes_once_and_replaces_only_with_overwrite(tmp_path, mnist_model):
  config, _ = mnist_model
  output = tmp_path / 'out' / 'robust.keras'
  args = ['mnist_challenge/export_model.py', '--model_dir', config.model_dir,
          '--output', str(output), '--format', 'keras']
  first = run_script(args)
  assert first.returncode == 0, first.stderr
  assert f'to {output} (keras: inputs (N, 784) in [0, 1], logits out)' in first.stdout
  written = output.read_bytes()
  again = run_script(args)
  assert again.returncode == 1
  assert again.stderr.strip().splitlines() == [
      f'error: {output} exists; pass --overwrite to replace it, or another --output']
  assert output.read_bytes() == written
  assert sorted(os.listdir(output.parent)) == ['robust.keras']  # nothing staged left over


def test_overwrite_replaces_and_an_interrupted_export_leaves_nothing(tmp_path, mnist_model,
                                                                     monkeypatch):
  config, _ = mnist_model
  saved = str(tmp_path / 'saved')
  commands.export_model(MNIST, config, output=saved, log=quiet)
  assert os.path.isfile(os.path.join(saved, 'saved_model.pb'))
  os.remove(os.path.join(saved, 'fingerprint.pb'))  # tell the new one from the old one
  commands.export_model(MNIST, config, output=saved, overwrite=True, log=quiet)
  assert os.path.isfile(os.path.join(saved, 'fingerprint.pb'))

  keras_path = tmp_path / 'robust.keras'
  commands.export_model(MNIST, config, output=str(keras_path), log=quiet)
  written = keras_path.read_bytes()

  def interrupted(self, path, *args, **kwargs):
    with open(path, 'wb') as f:
      f.write(b'PK half')
    raise KeyboardInterrupt
  monkeypatch.setattr(keras.Model, 'save', interrupted)
  with pytest.raises(KeyboardInterrupt):
    commands.export_model(MNIST, config, output=str(tmp_path / 'other.keras'), log=quiet)
  with pytest.raises(KeyboardInterrupt):  # an output being replaced stays as it was
    commands.export_model(MNIST, config, output=str(keras_path), overwrite=True, log=quiet)
  assert keras_path.read_bytes() == written
  assert sorted(os.listdir(tmp_path)) == ['robust.keras', 'saved']  # nothing half-written


def test_the_format_follows_the_name_unless_the_flag_says_otherwise():
  assert model_files.output_format('m.keras') == 'keras'
  assert model_files.output_format('m') == 'saved_model'
  assert model_files.output_format('m/', 'saved_model') == 'saved_model'
  with pytest.raises(ChallengeError, match=r'name the output m\.keras'):
    model_files.output_format('m', 'keras')
  with pytest.raises(ChallengeError, match='without .keras'):
    model_files.output_format('m.keras', 'saved_model')
  with pytest.raises(ChallengeError, match='unknown --format "onnx"; use keras or saved_model'):
    model_files.output_format('m', 'onnx')


def test_export_needs_an_output_and_a_checkpoint(tmp_path, mnist_model):
  config, _ = mnist_model
  with pytest.raises(ChallengeError, match='--output is required'):
    commands.export_model(MNIST, config, log=quiet)
  with pytest.raises(ChallengeError, match='no checkpoint found'):
    commands.export_model(MNIST, config.replace(model_dir=str(tmp_path / 'empty')),
                          output=str(tmp_path / 'm.keras'), log=quiet)
  assert not os.path.exists(tmp_path / 'm.keras')


# --- every evaluation command on a model file ----------------------------------------------

def run_commands(challenge, config, tmp_path, **model):
  """Each evaluation command on `config`'s model_dir, or on model_path=... (`model`):
  {command: what it produced}, its outputs in tmp_path."""
  config = config.replace(store_adv_path=str(tmp_path / 'attack.npy'),
                          pred_path=str(tmp_path / 'pred.npy'))
  out = {'eval': commands.evaluate(challenge, config, once=True, log=quiet, **model)}
  out['pgd_attack'] = commands.pgd_attack(challenge, config, log=quiet, **model)
  out['attack.npy'] = np.load(config.store_adv_path)
  out['run_attack'] = commands.run_attack(challenge, config, log=quiet, **model)
  out['pred.npy'] = np.load(config.pred_path)
  out['autoattack'] = commands.run_autoattack(
      challenge, config, num_examples=12, iterations=2, output_dir=str(tmp_path / 'aa'),
      log=quiet, **model)
  out['table'] = commands.evaluate_table(
      challenge, config, num_examples=12, method=('natural', 'FGSM', 'targeted'),
      output_dir=str(tmp_path / 'table'), log=quiet, **model)
  out['landscape'] = commands.loss_landscape(
      challenge, config, num_examples=2, restarts=3, output_dir=str(tmp_path / 'landscape'),
      log=quiet, **model)['model']
  return out


def assert_same_outputs(a, b):
  for results in ('eval', 'pgd_attack'):
    assert (a[results].nat_correct, a[results].adv_correct) == (
        b[results].nat_correct, b[results].adv_correct)
    assert a[results].adv_xent == b[results].adv_xent
  for array in ('attack.npy', 'pred.npy', 'landscape'):
    np.testing.assert_array_equal(a[array], b[array], err_msg=array)
  assert a['run_attack'] == b['run_attack']
  np.testing.assert_array_equal(a['autoattack'].robust, b['autoattack'].robust)
  np.testing.assert_array_equal(a['autoattack'].adversarial, b['autoattack'].adversarial)
  assert [r.accuracy for r in a['table']] == [r.accuracy for r in b['table']]


def test_every_command_gives_the_checkpoints_results_on_its_exported_file(
    tmp_path, mnist_model, mnist_export):
  config, _ = mnist_model
  from_checkpoint = run_commands(MNIST, config, tmp_path / 'checkpoint')
  from_file = run_commands(MNIST, config, tmp_path / 'file', model_path=mnist_export)
  assert_same_outputs(from_file, from_checkpoint)
  assert from_checkpoint['eval'].adv_correct < from_checkpoint['eval'].nat_correct  # attacked
  summary = json.loads((tmp_path / 'file' / 'aa' / 'autoattack.json').read_text())
  assert summary['model'] == mnist_export and summary['step'] is None


@pytest.mark.slow
def test_a_saved_model_and_the_cifar_export_give_the_checkpoints_results(tmp_path,
                                                                         cifar_model):
  config, _ = cifar_model
  saved = str(tmp_path / 'cifar_saved_model')
  exported = run_script(['-m', 'cifar10_challenge.export_model', '--model_dir',
                         config.model_dir, '--filters', json.dumps(config.filters),
                         '--output', saved])
  assert exported.returncode == 0, exported.stderr
  assert (f'to {saved} (saved_model: inputs (N, 32, 32, 3) in [0, 255], logits out)'
          in exported.stdout)
  for what in ('checkpoint', 'file'):
    config_here = config.replace(store_adv_path=str(tmp_path / f'{what}.npy'))
    model = {'model_path': saved} if what == 'file' else {}
    results = commands.pgd_attack(CIFAR10, config_here, log=quiet, **model)
    assert results.adv_correct <= results.nat_correct
  np.testing.assert_array_equal(np.load(tmp_path / 'file.npy'),
                                np.load(tmp_path / 'checkpoint.npy'))


def test_every_command_runs_on_a_foreign_keras_model(tmp_path, mnist_model):
  """Not our architecture, the same input contract: each command's figures are the
  model's own (checked against direct calls)."""
  config, _ = mnist_model
  path = str(tmp_path / 'theirs.keras')
  model = foreign_mnist_model(path)
  out = run_commands(MNIST, config, tmp_path, model_path=path)
  test = MNIST.load_data(config).test.head(config.num_eval_examples)
  natural = np.argmax(model(test.images, training=False), 1) == test.labels
  assert out['eval'].nat_correct == out['pgd_attack'].nat_correct == natural.sum()
  adversarial = out['attack.npy'][:len(test)]
  assert np.abs(adversarial - test.images).max() <= config.epsilon + 1e-6
  predictions = np.argmax(model(adversarial, training=False), 1)
  assert out['pgd_attack'].adv_correct == (predictions == test.labels).sum()
  np.testing.assert_array_equal(out['pred.npy'][:len(test)], predictions)
  assert out['autoattack'].clean_accuracy == natural[:12].mean()
  assert out['autoattack'].robust_accuracy <= out['autoattack'].clean_accuracy
  assert out['table'][0].accuracy == 100 * natural[:12].mean()  # the natural row
  assert out['landscape'].shape == (2, 3, config.k + 1)


def test_a_model_file_can_be_a_transfer_source_and_the_compared_model(tmp_path, mnist_model,
                                                                      mnist_export):
  config, _ = mnist_model
  theirs = str(tmp_path / 'theirs.keras')
  foreign_mnist_model(theirs)
  rows = commands.evaluate_table(MNIST, config, source=(f'B={theirs}',), num_examples=12,
                                 method=('FGSM',), output_dir=str(tmp_path / 't'), log=quiet)
  ran = [r for r in rows if r.accuracy is not None]
  assert [r.row.source for r in ran] == ['A', 'B']
  traces = commands.loss_landscape(MNIST, config, num_examples=2, restarts=2,
                                   compare_model_dir=theirs, model_path=mnist_export,
                                   output_dir=str(tmp_path / 'l'), log=quiet)
  assert sorted(traces) == ['compared', 'model']
  assert not np.array_equal(traces['compared'], traces['model'])


def test_results_go_beside_the_model_file_by_default(tmp_path, mnist_model):
  config, _ = mnist_model
  assert model_files.results_dir('d', '', 'autoattack') == os.path.join('d', 'autoattack')
  assert model_files.results_dir('d', 'x/m.keras', 'autoattack') == 'x/m_autoattack'
  assert model_files.results_dir('d', 'x/saved/', 'landscape') == 'x/saved_landscape'
  path = str(tmp_path / 'theirs.keras')
  foreign_mnist_model(path)
  commands.run_autoattack(MNIST, config.replace(store_adv_path=str(tmp_path / 'a.npy')),
                          num_examples=4, iterations=1, attacks='apgd-ce', model_path=path,
                          log=quiet)
  assert os.path.isfile(tmp_path / 'theirs_autoattack' / 'autoattack.json')


# --- what is refused, and what is warned about ----------------------------------------------

@pytest.mark.slow
def test_a_model_of_other_inputs_is_refused_naming_both_shapes(tmp_path, mnist_model):
  config, _ = mnist_model
  path = str(tmp_path / 'images.keras')
  foreign_mnist_model(path, input_shape=(28, 28, 1))
  result = run_script(['mnist_challenge/pgd_attack.py', '--model_dir', config.model_dir,
                       '--data_dir', config.data_dir, '--model_path', path,
                       '--store_adv_path', str(tmp_path / 'a.npy')])
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"error: {path} takes inputs of shape (None, 28, 28, 1); the mnist challenge's inputs "
      'are (None, 784), pixels in [0, 1]']
  assert not os.path.exists(tmp_path / 'a.npy')
  notes = tmp_path / 'notes.keras'
  notes.write_text('not a model')
  result = run_script(['mnist_challenge/run_attack.py', '--model_dir', config.model_dir,
                       '--data_dir', config.data_dir, '--model_path', str(notes),
                       '--store_adv_path', str(tmp_path / 'missing.npy')])
  assert result.returncode == 1  # the model is checked before the submission (exit 2)
  assert result.stderr.strip().splitlines() == [
      f'error: {notes} is not a model file: --model_path takes a Keras .keras file '
      '(model.save) or a SavedModel directory']
  cifar_path = str(tmp_path / 'mnist_for_cifar.keras')
  foreign_mnist_model(cifar_path)
  with pytest.raises(ChallengeError, match=r'takes inputs of shape \(None, 784\); the cifar10 '
                     r"challenge's inputs are \(None, 32, 32, 3\), pixels in \[0, 255\]"):
    model_files.load_checked(CIFAR10, cifar_path, log=quiet)


@pytest.mark.slow
def test_a_lambda_layer_is_refused_unless_the_user_allows_it(tmp_path, mnist_model):
  config, _ = mnist_model
  path = str(tmp_path / 'code.keras')
  model = foreign_mnist_model(path, lambda_layer=True)
  args = ['mnist_challenge/eval.py', '--once', '--model_dir', config.model_dir, '--data_dir',
          config.data_dir, '--num_eval_examples', '10', '--k', '1', '--model_path', path]
  refused = run_script(args)
  assert refused.returncode == 1
  assert refused.stderr.strip().splitlines() == [
      f"error: {path} holds Python code (a Lambda layer) that loading it would run; Keras' "
      'safe mode refused it. Pass --unsafe_model only if you trust the file as you would '
      'trust a program']
  allowed = run_script(args + ['--unsafe_model'])
  assert allowed.returncode == 0, allowed.stderr
  test = MNIST.load_data(config).test.head(10)
  natural = np.mean(np.argmax(model(test.images, training=False), 1) == test.labels)
  assert f'natural: {100 * natural:.2f}%' in allowed.stdout.splitlines()


def test_probabilities_get_autoattacks_warning(tmp_path, mnist_model):
  config, _ = mnist_model
  path = str(tmp_path / 'softmax.keras')
  foreign_mnist_model(path, activation='softmax')
  logged = []
  model_files.load_checked(MNIST, path, log=logged.append)
  assert logged == [f'warning: {path}: {autoattack.PROBABILITIES_WARNING}']
  foreign_mnist_model(path)  # logits: no warning
  logged.clear()
  model_files.load_checked(MNIST, path, log=logged.append)
  assert logged == []


def zip_of_arrays(path):
  with open(path, 'wb') as f:
    np.savez(f, a=np.zeros(3))


@pytest.mark.parametrize('make, message', [
    (lambda p: p.write_text('not a model'), 'is not a model file: --model_path takes a Keras '
                                            r'\.keras file \(model\.save\) or a SavedModel'),
    (lambda p: p.mkdir(), r'is a directory without saved_model\.pb, not a SavedModel'),
    (lambda p: None, 'no model at'),
    (lambda p: zip_of_arrays(p), 'could not be loaded as a Keras model'),  # a zip, not Keras'
])
def test_what_is_not_a_model_is_a_clear_error(tmp_path, make, message):
  path = tmp_path / 'thing'
  make(path)
  with pytest.raises(ChallengeError, match=message):
    model_files.load(str(path))


class Predictor(tf.Module):
  """A SavedModel of someone else's: no `serve`, a serving_default signature."""

  def __init__(self, model, outputs=1):
    super().__init__()
    self.model, self.outputs = model, outputs

  @tf.function(input_signature=[tf.TensorSpec([None, 784], tf.float32, name='pixels')])
  def predict(self, pixels):
    logits = self.model(pixels, training=False)
    return {f'out{i}': logits for i in range(self.outputs)}


def test_other_saved_models_and_legacy_h5_files_load(tmp_path, mnist_model):
  config, _ = mnist_model
  model = foreign_mnist_model(str(tmp_path / 'theirs.keras'))
  x = np.random.default_rng(0).uniform(0, 1, (3, 784)).astype(np.float32)
  predictor = Predictor(model)
  tf.saved_model.save(predictor, str(tmp_path / 'sig'),
                      signatures={'serving_default': predictor.predict})
  loaded = model_files.load_checked(MNIST, str(tmp_path / 'sig'), log=quiet)
  np.testing.assert_array_equal(loaded(x), graph_logits(model, x))
  two = Predictor(model, outputs=2)
  tf.saved_model.save(two, str(tmp_path / 'two'), signatures={'serving_default': two.predict})
  with pytest.raises(ChallengeError, match='takes 1 input.s. and returns 2 output.s.'):
    model_files.load(str(tmp_path / 'two'))
  model.save(str(tmp_path / 'legacy.h5'))
  loaded = model_files.load_checked(MNIST, str(tmp_path / 'legacy.h5'), log=quiet)
  np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))


def test_a_model_without_ten_outputs_is_refused(tmp_path):
  inputs = keras.Input((784,))
  path = str(tmp_path / 'five.keras')
  keras.Model(inputs, keras.layers.Dense(5)(inputs)).save(path)
  with pytest.raises(ChallengeError, match=r'returns shape \(4, 5\) for 4 examples; the '
                                           'attacks need 10 logits per example'):
    model_files.load_checked(MNIST, path, log=quiet)


def test_option_combinations_that_cannot_work_are_errors(tmp_path, mnist_model, mnist_export):
  config, _ = mnist_model
  with pytest.raises(ChallengeError, match='--model_path needs --once'):
    commands.evaluate(MNIST, config, model_path=mnist_export, log=quiet)
  with pytest.raises(ChallengeError, match='--unsafe_model applies to a model file'):
    commands.pgd_attack(MNIST, config, unsafe_model=True, log=quiet)
  for command in (commands.evaluate_table, commands.loss_landscape):  # a model_dir is no file
    with pytest.raises(ChallengeError, match='is a directory without saved_model.pb'):
      command(MNIST, config, model_path=config.model_dir, log=quiet)
  with pytest.raises(ChallengeError, match='eval_precision mixed_bfloat16 needs the '
                                           "challenge's own architecture"):
    commands.pgd_attack(MNIST, config.replace(eval_precision='mixed_bfloat16'),
                        model_path=mnist_export, log=quiet)


# --- one call from a notebook ---------------------------------------------------------------

def test_autoattack_and_pgd_in_one_call_on_a_keras_model_or_a_function(tmp_path, mnist_model):
  config, model = mnist_model
  test = MNIST.load_data(config).test.head(16)
  reports = [autoattack.evaluate(m, test.images, test.labels, epsilon=0.3, batch_size=8,
                                 iterations=2, log=quiet)
             for m in (model, lambda x: model(x, training=False))]
  direct = autoattack.AutoAttack(lambda x: model(x, training=False), 0.3, 0.0, 1.0,
                                 (28, 28, 1), batch_size=8, **autoattack.budget(2),
                                 log=quiet).run(test.images, test.labels)
  for report in reports:
    np.testing.assert_array_equal(report.robust, direct.robust)
    np.testing.assert_array_equal(report.adversarial, direct.adversarial)
  params = MNIST.attack_params(config)
  results = [evaluation.evaluate(m, test.images, test.labels, epsilon=params.epsilon,
                                 num_steps=params.num_steps, step_size=params.step_size,
                                 batch_size=8)
             for m in (model, lambda x: model(x, training=False))]
  expected = Evaluator(model, params, seed=0).attack(test, 8, keep_adversarial=True)
  for result in results:
    assert (result.nat_correct, result.adv_correct) == (expected.nat_correct,
                                                        expected.adv_correct)
    np.testing.assert_array_equal(result.adversarial, expected.adversarial)
  with pytest.raises(ChallengeError, match='a model must be a Keras model or a callable'):
    evaluation.evaluate('model.keras', test.images, test.labels, epsilon=0.3)


def test_the_image_shape_is_told_from_the_inputs():
  assert autoattack.image_shape_of(np.zeros((2, 784))) == (28, 28, 1)
  assert autoattack.image_shape_of(np.zeros((2, 28, 28))) == (28, 28, 1)
  assert autoattack.image_shape_of(np.zeros((2, 32, 32, 3))) == (32, 32, 3)
  with pytest.raises(ChallengeError, match='pass image_shape'):
    autoattack.image_shape_of(np.zeros((2, 3072)))


@pytest.mark.realdata
@pytest.mark.slow
def test_the_shipped_model_exported_keeps_its_recorded_accuracy(tmp_path):
  data_dir = require_shared_mnist()
  shipped = os.path.join(REPO, 'checkpoints', 'mnist', 'fast_robust')
  with open(os.path.join(shipped, 'evaluation.json')) as f:
    recorded = json.load(f)
  config = MNIST.load_config(os.path.join(shipped, 'config.json'),
                             {'data_dir': data_dir, 'model_dir': shipped, 'k': 0})
  path = str(tmp_path / 'fast_robust.keras')
  commands.export_model(MNIST, config, output=path, log=quiet)
  results = commands.evaluate(MNIST, config, once=True, model_path=path, log=quiet)
  assert results.num_examples == 10000
  assert 100 * results.nat_accuracy == pytest.approx(recorded['natural'], abs=0.005)
