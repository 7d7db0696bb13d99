"""Models in and out of the project, as files any Keras 3 / TensorFlow 2 user can read.

Out (`export`): a challenge's model, restored from its checkpoint (ours or an original TF1
one), rebuilt from Keras' own layers and keras.ops only (the challenge's
`build_portable_model`: the same function, checked bit for bit before writing) and written
as a Keras 3 `.keras` file (`keras.saving.load_model`) or a SavedModel directory
(`tf.saved_model.load`, then `.serve(x)`). Inputs as the challenge defines them (MNIST
(N, 784) in [0, 1]; CIFAR-10 raw (N, 32, 32, 3) in [0, 255], standardised inside), logits
out, inference mode. Written atomically: staged beside the output, renamed into place; an
existing output is replaced only when asked.

In (`load_checked`): a `.keras` file (Keras' safe mode: a Lambda layer, i.e. Python code, is
refused unless `unsafe`) or a SavedModel directory (a program: any TensorFlow op may run when
it is called), ours or a researcher's own, held to the challenge's contract: one input of
the challenge's shape (else an error naming both shapes), ten outputs per example; outputs
that look like probabilities get AutoAttack's warning.
"""
import os
import zipfile
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from common import checkpoints, files, precision
from common.attacks import autoattack
from common.errors import ChallengeError

FORMATS = {
    'keras': 'a Keras 3 .keras file: keras.saving.load_model(path)',
    'saved_model': 'a SavedModel directory: tf.saved_model.load(path).serve(x)',
}
KERAS_SUFFIX = '.keras'
SAVED_MODEL_PB = 'saved_model.pb'
NUM_CLASSES = 10  # both challenges


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


# --- out ---------------------------------------------------------------------------------

def output_format(output: str, fmt: str = '') -> str:
  """The format to write `output` in: `fmt`, or from the name (.keras: keras; else a
  SavedModel directory). A name that contradicts `fmt` is an error."""
  if fmt and fmt not in FORMATS:
    raise ChallengeError(f'unknown --format "{fmt}"; use ' + ' or '.join(FORMATS))
  named_keras = output.endswith(KERAS_SUFFIX)
  if fmt == 'keras' and not named_keras:
    raise ChallengeError(f'--format keras writes a .keras file (Keras 3 requires the suffix); '
                         f'name the output {output.rstrip(os.sep)}{KERAS_SUFFIX}')
  if fmt == 'saved_model' and named_keras:
    raise ChallengeError(f'--format saved_model writes a directory; name it without '
                         f'{KERAS_SUFFIX} (e.g. {output[:-len(KERAS_SUFFIX)]})')
  return fmt or ('keras' if named_keras else 'saved_model')


def is_keras_file(path: str) -> bool:
  """A regular file named .keras that is a zip archive (what Keras writes)."""
  return (path.endswith(KERAS_SUFFIX) and os.path.isfile(path) and not os.path.islink(path)
          and zipfile.is_zipfile(path))


def is_saved_model(path: str) -> bool:
  return (os.path.isdir(path) and not os.path.islink(path)
          and os.path.isfile(os.path.join(path, SAVED_MODEL_PB)))


def refuse_existing(output: str, overwrite: bool, source: str = '') -> None:
  """Raises unless `output` may be written: absent, or, with `overwrite`, a model file (a
  .keras file or a SavedModel directory) that does not hold `source` (the model_dir being
  exported); --overwrite never deletes anything else."""
  files.check_distinct([('--output', output)], [('the model_dir', source)],
                       replaced_whole=[output])
  if not os.path.lexists(output):
    files.check_output(output, '--output', directory=not output.endswith(KERAS_SUFFIX))
    return
  if not overwrite:
    raise ChallengeError(f'{output} exists; pass --overwrite to replace it, or another --output')
  if not (is_keras_file(output) or is_saved_model(output)):
    raise ChallengeError(f'--overwrite replaces a model file only (a .keras file or a SavedModel '
                         f'directory, holding {SAVED_MODEL_PB}); {output} is neither, so it is '
                         'kept: choose another --output')
  files.check_output(output, '--output', directory=os.path.isdir(output))


def portable_copy(model: keras.Model, build_portable: Callable[[], keras.Model],
                  input_shape, pixel_max: float) -> keras.Model:
  """`build_portable()` (float32) holding `model`'s weights, layer by layer (by name);
  raises unless it gives the same logits, bit for bit, on random inputs."""
  with precision.policy('float32'):
    portable = build_portable()
  for layer in model.layers:
    weights = layer.get_weights()
    if weights:
      portable.get_layer(layer.name).set_weights(weights)
  if len(portable.weights) != len(model.weights):
    raise ChallengeError(f'the portable {model.name} has {len(portable.weights)} weights, the '
                         f'checkpoint\'s {len(model.weights)}; the architectures differ')
  probe = np.random.default_rng(0).uniform(0, pixel_max, (8,) + tuple(input_shape))
  probe = tf.constant(probe.astype(np.float32))
  ours = model(probe, training=False).numpy()
  theirs = portable(probe, training=False).numpy()
  if not np.array_equal(ours, theirs):
    raise ChallengeError(f'the exported {model.name} would not give the checkpoint\'s logits '
                         f'(they differ by up to {np.abs(ours - theirs).max():g}); nothing '
                         'written. This is a bug: please report it')
  return portable


class _Serving(tf.Module):
  """What a SavedModel export holds: the model's variables and `serve(x)`, its logits in
  inference mode, for any batch size."""

  def __init__(self, model: keras.Model):
    super().__init__()
    self.model = model
    spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32, name='x')
    self.serve = tf.function(lambda x: model(x, training=False), input_signature=[spec])


def export(model: keras.Model, output: str, fmt: str, overwrite: bool = False,
           source: str = '') -> None:
  """Writes `model` to `output` in `fmt` (FORMATS): staged in a directory beside it (locked
  while it is written; one left by a killed export is removed by the next export to that
  output), then renamed into place, so that an interrupted export leaves no partial output.
  A failed write (full disk, ...) removes the staging directory and raises one
  ChallengeError; an existing output (--overwrite) is kept until the new one is whole."""
  refuse_existing(output, overwrite, source)
  with files.staging_directory(output, '--output') as staging:
    staged = os.path.join(staging, 'model' + (KERAS_SUFFIX if fmt == 'keras' else ''))
    try:
      if fmt == 'keras':
        model.save(staged)
      else:
        serving = _Serving(model)
        tf.saved_model.save(serving, staged, signatures={'serving_default': serving.serve})
      # The umask's mode, as any file the user writes (the staging directory's is 0700).
      os.chmod(staged, files.default_mode(directory=fmt == 'saved_model'))
      if os.path.lexists(output):  # --overwrite: the old one goes once the new one is whole
        os.replace(output, os.path.join(staging, 'replaced'))
      os.replace(staged, output)
    except OSError as e:
      raise files.os_error(e, f'cannot write {output}') from None
    except tf.errors.OpError as e:  # TensorFlow's own writes (a full disk, ...)
      raise ChallengeError(f'cannot write {output}: {_first_line(e)}') from None


# --- in ----------------------------------------------------------------------------------

def is_model_file(path: str) -> bool:
  """A model file rather than a checkpoint directory: a file, or a SavedModel directory."""
  return os.path.isfile(path) or os.path.isfile(os.path.join(path, SAVED_MODEL_PB))


class SavedModelFunction:
  """A SavedModel's inference function, called as the commands call a model:
  model(x, training=False) -> logits. Uses `serve` (this project's and Keras' exports), else
  the `serving_default` signature (one input, one output)."""

  def __init__(self, loaded, path: str):
    self._loaded = loaded  # holds the variables
    self._input_name, self._output_name = None, None
    serve = getattr(loaded, 'serve', None)
    if serve is not None and callable(serve):
      self._function = serve
      try:
        args = serve.get_concrete_function().structured_input_signature[0]
      except (ValueError, TypeError):
        args = ()
      self.input_spec = args[0] if len(args) == 1 else None
      return
    signature = getattr(loaded, 'signatures', {}).get('serving_default')
    if signature is None:
      raise ChallengeError(f'{path} is a SavedModel without a function to call (neither '
                           '`serve` nor the `serving_default` signature)')
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
      raise ChallengeError(f'{path}: its serving_default signature takes {len(inputs)} '
                           f'input(s) and returns {len(outputs)} output(s); a model of the '
                           'challenge takes one batch of images and returns its logits')
    (self._input_name, self.input_spec), = inputs.items()
    self._output_name, = outputs
    self._function = signature

  def __call__(self, x, training=False):
    del training  # an exported function has its mode fixed: inference
    dtype = self.input_spec.dtype if self.input_spec is not None else tf.float32
    x = tf.cast(x, dtype)
    if self._input_name is None:
      return self._function(x)
    return self._function(**{self._input_name: x})[self._output_name]


def require_model_file(path: str) -> None:
  """Raises unless `path` is a regular file or a SavedModel directory of regular files (the
  loaders open what is there by name: a FIFO would hang them, /dev/zero flood them)."""
  if not os.path.exists(path):
    raise ChallengeError(f'no model at {path}: --model_path takes a .keras file or a '
                         'SavedModel directory')
  if os.path.isdir(path):
    if not os.path.lexists(os.path.join(path, SAVED_MODEL_PB)):
      raise ChallengeError(f'{path} is a directory without {SAVED_MODEL_PB}, not a SavedModel '
                           '(a directory of checkpoints goes to --model_dir)')
    files.require_regular_tree(path, 'SavedModel')
  else:
    files.require_regular(path, 'model file')


def load(path: str, unsafe: bool = False):
  """The model in `path` (a .keras file or a SavedModel directory): model(x, training=...)."""
  require_model_file(path)
  if os.path.isdir(path):
    try:
      loaded = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001  (TensorFlow raises many kinds here)
      raise ChallengeError(f'{path} could not be loaded as a SavedModel: '
                           f'{_first_line(e)}') from None
    return SavedModelFunction(loaded, path)
  if not (zipfile.is_zipfile(path) or path.endswith(('.h5', '.hdf5'))):
    raise ChallengeError(f'{path} is not a model file: --model_path takes a Keras .keras file '
                         '(model.save) or a SavedModel directory')
  try:
    return keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
  except Exception as e:  # noqa: BLE001  (Keras raises many kinds here)
    if 'safe_mode' in str(e):
      raise ChallengeError(
          f'{path} holds Python code (a Lambda layer) that loading it would run; Keras\' '
          'safe mode refused it. Pass --unsafe_model only if you trust the file as you '
          'would trust a program') from None
    raise ChallengeError(f'{path} could not be loaded as a Keras model (Keras '
                         f'{keras.__version__}): {_first_line(e)}') from None


def declared_input_shape(model, path: str) -> Optional[tuple]:
  """The shape of one example the model declares it takes (None where it declares none)."""
  if isinstance(model, SavedModelFunction):
    spec = model.input_spec
    return None if spec is None or spec.shape.rank is None else tuple(spec.shape[1:])
  try:
    inputs = model.inputs
  except (AttributeError, ValueError):  # a subclassed model declares none
    return None
  if not inputs:
    return None
  if len(inputs) != 1:
    raise ChallengeError(f'{path} takes {len(inputs)} inputs; a model of the challenge takes '
                         'one batch of images')
  return tuple(inputs[0].shape[1:])


def _shape(dims) -> str:
  return '(' + ', '.join('None' if d is None else str(d) for d in dims) + ')'


def check_contract(model, path: str, challenge, log=print, input_shape=None) -> None:
  """Raises unless `model` takes the challenge's inputs (or `input_shape`: a network behind
  a thermometer defence takes its codes) and returns ten values per example; warns
  (AutoAttack's check) when those look like probabilities."""
  expected = tuple(input_shape or challenge.input_shape)
  contract = (f'the {challenge.name} challenge\'s inputs are {_shape((None,) + expected)}, '
              f'pixels in [0, {challenge.pixel_max:g}]')
  found = declared_input_shape(model, path)
  if found is not None and (len(found) != len(expected) or any(
      f is not None and f != e for f, e in zip(found, expected))):
    raise ChallengeError(f'{path} takes inputs of shape {_shape((None,) + found)}; {contract}')
  probe = np.random.default_rng(0).uniform(0, challenge.pixel_max, (4,) + expected)
  if input_shape is not None and tuple(input_shape) != tuple(challenge.input_shape):
    probe = np.round(probe / challenge.pixel_max)  # codes are 0 or 1
  try:
    outputs = np.asarray(model(tf.constant(probe.astype(np.float32)), training=False))
  except Exception as e:  # noqa: BLE001  (whatever the foreign model raises)
    raise ChallengeError(f'{path} could not be run on a batch of shape '
                         f'{_shape((4,) + expected)} ({contract}): {_first_line(e)}') from None
  if outputs.shape != (4, NUM_CLASSES):
    raise ChallengeError(f'{path} returns shape {_shape(outputs.shape)} for 4 examples; the '
                         f'attacks need {NUM_CLASSES} logits per example')
  if autoattack.looks_like_probabilities(outputs):
    log(f'warning: {path}: {autoattack.PROBABILITIES_WARNING}')


def load_checked(challenge, path: str, unsafe: bool = False, log=print, input_shape=None):
  """`load`, then `check_contract` (against `input_shape`, default the challenge's)."""
  model = load(path, unsafe)
  check_contract(model, path, challenge, log, input_shape)
  return model


def twin(model, build: Optional[Callable[[], keras.Model]], attack_precision: str):
  """The attack's view of `model` in attack_precision; a model file (no `build`) is attacked
  in float32 (or tf32) only: a mixed-precision twin needs the architecture."""
  if build is None and not precision.computes_in_float32(attack_precision):
    raise ChallengeError(f'eval_precision {attack_precision} needs the challenge\'s own '
                         'architecture; a model file (--model_path) is attacked in float32 '
                         '(or tf32): set eval_precision to one of those')
  return precision.Twin(model, build, attack_precision)


def architecture_config(challenge, config, model_dir: str):
  """The config to build model_dir's network from: the config.json train.py saved there
  (the network its checkpoints hold, e.g. the shipped Small CNN), else `config`. Every
  command that reads model_dir's checkpoints builds from it, so that `--model_dir` alone
  reads a model of another network than the config's."""
  saved = os.path.join(model_dir, 'config.json')
  return challenge.load_config(saved) if os.path.exists(saved) else config


def restore(challenge, config, model_dir: str, log=print):
  """(model, its config, the checkpoint's path, its step) of model_dir's newest readable
  checkpoint, ours or TF1, in the network of `architecture_config`."""
  model_config = architecture_config(challenge, config, model_dir)
  checkpoints.require_latest(model_dir)
  model = challenge.build_model(model_config)
  path, step = checkpoints.restore_newest_model(model, model_dir, challenge.tf1_variables, log)
  return model, model_config, path, step


def results_dir(model_dir: str, model_path: str, name: str) -> str:
  """Where a command writes its results by default: <model_dir>/<name>, or, for a model
  file, <the file's name without .keras>_<name> beside it."""
  if not model_path:
    return os.path.join(model_dir, name)
  stem = os.path.normpath(model_path)
  if stem.endswith(KERAS_SUFFIX):
    stem = stem[:-len(KERAS_SUFFIX)]
  return f'{stem}_{name}'
