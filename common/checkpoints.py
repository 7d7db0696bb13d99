"""Checkpoint I/O: what a checkpoint holds and how scripts find and read one.

TensorFlow opens checkpoint files itself, so their kind is checked first: a model_dir that is
not a directory, or an index or data file that is not a regular file (a FIFO would hang the
reader, /dev/zero flood it), is an error naming it, never handed to TensorFlow."""
import contextlib
import os
import re
import shutil
from typing import Callable, List, Optional

import tensorflow as tf

from common import files, tf1_checkpoints
from common.errors import ChallengeError, UnreadableCheckpoint

CHECKPOINT_NAME = 'checkpoint'  # files model_dir/checkpoint-<step>.*, as the original


def training_checkpoint(model, optimizer, step) -> tf.train.Checkpoint:
  return tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)


def holds(path: str, name: str) -> bool:
  """Whether the (object-based) checkpoint at `path` holds an object called `name` at its top."""
  return any(variable.split('/')[0] == name for variable, _ in tf.train.list_variables(path))


def holds_tf1(model_dir: str) -> bool:
  """Whether any checkpoint listed in model_dir's index was written by the original TF1 code."""
  state = _state(model_dir)
  if state is None:
    return False
  names = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
  own = [_in_dir(model_dir, name) for name in names]
  return any(tf1_checkpoints.is_tf1(path) for path in own if path)


def manager(checkpoint, model_dir, max_to_keep=3) -> tf.train.CheckpointManager:
  # CheckpointManager writes the data files first and the `checkpoint` index file last,
  # atomically: a reader never sees a checkpoint it cannot open (unless it is later
  # rotated away, which readers handle).
  if holds_tf1(model_dir):
    max_to_keep = None  # rotation would delete the original checkpoint being fine-tuned
  return tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=max_to_keep,
                                    checkpoint_name=CHECKPOINT_NAME, step_counter=checkpoint.step)


def save(manager: tf.train.CheckpointManager, step: int) -> str:
  """manager.save at `step`. A write that fails (full disk, read-only file system) leaves
  nothing of this checkpoint behind (remove_partial) and is one ChallengeError."""
  try:
    return manager.save(checkpoint_number=step)
  except (tf.errors.OpError, OSError) as e:
    remove_partial(manager.directory, step)
    raise ChallengeError(f'cannot write checkpoint {step} in {manager.directory} '
                         f'({_reason(e)}); nothing of it was left behind: free space, or train '
                         'into another --model_dir') from None


def _reason(error: BaseException) -> str:
  """The gist of a TensorFlow or OS error: its first line without TensorFlow's wrappers
  ("{{function_node ...}} ", " [Op:SaveV2]") and its temporary file's path."""
  if isinstance(error, OSError):
    return error.strerror or str(error)
  line = (str(getattr(error, 'message', '') or error).strip().splitlines() or [''])[0]
  line = re.sub(r'^\{\{function_node [^}]*\}\}\s*', '', line)
  line = re.sub(r'\s*\[Op:\w+\]$', '', line)
  return line.rsplit('; ', 1)[-1] if '; ' in line else line


def remove_partial(directory: str, step: Optional[int] = None) -> None:
  """Removes what a failed or killed save left in `directory`: TensorFlow's staging
  directories checkpoint-<step>_temp (every one when `step` is None: call it only where no
  other process writes), and with `step`, the files checkpoint-<step>.* unless the index
  names that checkpoint."""
  prefix = f'{CHECKPOINT_NAME}-{"" if step is None else step}'
  try:
    entries = os.listdir(directory)
  except OSError:
    return
  state = None
  if step is not None:
    try:
      state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError):
      state = None
  listed = {os.path.basename(p) for p in (state.all_model_checkpoint_paths if state else ())}
  for name in entries:
    path = os.path.join(directory, name)
    staging = (name == prefix + '_temp' if step is not None else
               name.startswith(prefix) and name.endswith('_temp')
               and name[len(prefix):-len('_temp')].isdigit())
    if staging:
      shutil.rmtree(path, ignore_errors=True)
    elif (step is not None and name.startswith(prefix + '.')
          and f'{CHECKPOINT_NAME}-{step}' not in listed):
      with contextlib.suppress(OSError):
        os.remove(path)


def save_model(model, step: int, model_dir: str) -> str:
  """A weights-only checkpoint of `model` at `step` in model_dir (a model to ship: no
  optimizer slots), which every evaluation command reads; returns its path."""
  checkpoint = tf.train.Checkpoint(model=model, step=tf.Variable(step, dtype=tf.int64))
  return save(manager(checkpoint, model_dir), step)


def _in_dir(model_dir: str, name: str) -> Optional[str]:
  """The checkpoint `name` (as an index lists it) among model_dir's own files, if there."""
  own = os.path.join(model_dir, os.path.basename(name))
  return own if tf.io.gfile.exists(own + '.index') else None


def _state(model_dir: str):
  """model_dir's index (tf.train.get_checkpoint_state), once model_dir is known to be a
  directory (or absent: None) whose index, if any, is a regular file."""
  if not files.require_directory(model_dir, 'model_dir'):
    return None
  index = os.path.join(model_dir, CHECKPOINT_NAME)
  if os.path.lexists(index):
    files.require_regular(index, "model_dir's checkpoint index")
  return tf.train.get_checkpoint_state(model_dir)


def latest(model_dir: str) -> Optional[str]:
  """The latest checkpoint of model_dir. TF1's Saver recorded absolute paths in the index: a
  directory that was copied or moved reads its own files, not those at the old place."""
  state = _state(model_dir)
  if state is None or not state.model_checkpoint_path:
    return None
  return _in_dir(model_dir, state.model_checkpoint_path) or tf.train.latest_checkpoint(model_dir)


def candidates(model_dir: str) -> List[str]:
  """The checkpoints of model_dir that exist, newest first (the latest, then the older ones
  its index lists)."""
  state = _state(model_dir)
  listed = list(reversed(state.all_model_checkpoint_paths)) if state else []
  paths = [latest(model_dir)] + [_in_dir(model_dir, name) for name in listed]
  unique = []
  for path in paths:
    if path and path not in unique:
      unique.append(path)
  return unique


def restore_newest_readable(model_dir: str, restore_fn: Callable[[str], object], log=print):
  """Calls restore_fn on the newest checkpoint of model_dir that can be read, warning about
  each unreadable one it passes over; returns (path, result), or (None, None) if model_dir
  has no checkpoint. If checkpoints exist but none can be read, that is an error: nothing
  silently starts from scratch."""
  paths = candidates(model_dir)
  for path in paths:
    try:
      return path, restore_fn(path)
    except UnreadableCheckpoint as e:
      log(f'warning: {e}. Falling back to an older checkpoint.')
  if paths:
    raise ChallengeError(f'no checkpoint in {model_dir} can be read ({", ".join(paths)}); '
                         'delete the corrupt ones or pass another --model_dir')
  return None, None


def require_latest(model_dir: str) -> str:
  path = latest(model_dir)
  if path is None:
    raise ChallengeError(f'no checkpoint found in {model_dir}; train a model first '
                         '(train.py) or pass --model_dir with a directory that holds one')
  return path


def restore_newest_model(model, model_dir: str, tf1_variables=None, log=print):
  """`restore_model` from the newest readable checkpoint of model_dir: (path, step)."""
  return restore_newest_readable(
      model_dir, lambda path: restore_model(model, path, tf1_variables), log)


def restore_model(model, path: str, tf1_variables=None) -> int:
  """Loads the model weights saved at `path`, ours or an original TF1 checkpoint (then
  `tf1_variables(model)` names them); returns the checkpoint's step.

  Raises tf.errors.NotFoundError if the files vanished (e.g. rotated out).
  """
  if tf1_checkpoints.is_tf1(path):  # (which checks the files are regular ones)
    if tf1_variables is None:
      raise ChallengeError(f'{path} is a TF1 checkpoint, which {model.name} cannot read')
    tf1_checkpoints.load(path, tf1_variables(model), model.name)
    return tf1_checkpoints.step(path)
  step = tf.Variable(0, dtype=tf.int64)
  restore(tf.train.Checkpoint(model=model, step=step), path, model.name, partial=True)
  return int(step.numpy())


def restore(checkpoint, path: str, what: str, partial: bool = False) -> None:
  """Restores `checkpoint` from `path`; a checkpoint of something else (variables missing
  or of other shapes) is a ChallengeError naming `what` it should hold. `partial`: the
  file may hold more (e.g. optimizer slots when only the model is wanted)."""
  tf1_checkpoints.require_regular_files(path)
  try:
    status = checkpoint.read(path) if partial else checkpoint.restore(path)
    if partial:
      status.expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:  # missing variables; a shape mismatch
    raise ChallengeError(
        f'checkpoint {path} does not hold a {what}: {str(e).rstrip(".")}') from None
  except tf.errors.NotFoundError:
    raise  # vanished (rotated out)
  except (tf.errors.OpError, IndexError) as e:  # a truncated data file: IndexError
    raise tf1_checkpoints.unreadable(path, e) from None
