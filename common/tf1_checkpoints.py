"""The original challenges' TF1 checkpoints (name-based, written by tf.train.Saver).

A challenge declares how the original's variable names map onto its Keras model (and,
where they map cleanly, onto its optimizer's slots); this module detects such a checkpoint
and loads it, checking every name and shape before anything is assigned.
"""
import glob
import os
import stat
from typing import Dict, Mapping

import numpy as np
import tensorflow as tf

from common import files
from common.errors import ChallengeError, UnreadableCheckpoint

# Object-based checkpoints (tf.train.Checkpoint, ours) hold their object graph under this key;
# name-based ones (TF1's Saver) do not.
_OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'
GLOBAL_STEP = 'global_step'


def unreadable(path, error) -> UnreadableCheckpoint:
  message = str(getattr(error, 'message', error)).splitlines()[0]
  return UnreadableCheckpoint(f'checkpoint {path} cannot be read ({type(error).__name__}: '
                              f'{message}); it may be truncated or corrupt: fetch or copy it '
                              'again')


def require_regular_files(path: str) -> None:
  """Raises UnreadableCheckpoint unless each file of the checkpoint `path` (its .index and
  .data-* files) is a regular file."""
  for part in glob.glob(glob.escape(path) + '.*'):
    try:
      mode = os.stat(part).st_mode
    except FileNotFoundError:
      if not os.path.lexists(part):
        continue  # rotated away meanwhile: TensorFlow's NotFoundError says so
      mode = None
    if mode is None or not stat.S_ISREG(mode):
      what = 'a dangling link' if mode is None else files.kind(mode)
      raise UnreadableCheckpoint(f'checkpoint {path} cannot be read: {part} is {what}, not a '
                                 'regular file')


def _reader(path):
  """A reader of the checkpoint; NotFoundError if its files are gone (e.g. rotated out)."""
  require_regular_files(path)
  try:
    return tf.train.load_checkpoint(path)
  except tf.errors.NotFoundError:
    raise
  except tf.errors.OpError as e:
    raise unreadable(path, e) from None


def is_tf1(path: str) -> bool:
  """Whether the checkpoint at `path` (a prefix) was written by TF1's Saver."""
  return not _reader(path).has_tensor(_OBJECT_GRAPH_KEY)


def check(path: str, names: Mapping[str, tf.Variable], what: str) -> None:
  """Raises a ChallengeError naming the first of `names` the checkpoint lacks or holds
  with another shape."""
  shapes = _reader(path).get_variable_to_shape_map()
  for name, variable in names.items():
    expected = tuple(variable.shape)
    if name not in shapes:
      held = ', '.join(sorted(n for n in shapes if not n.endswith(('/Adam', '/Adam_1',
                                                                    '/Momentum')))[:4])
      raise ChallengeError(
          f'checkpoint {path} does not hold a {what}: it has no variable "{name}" '
          f'(shape {list(expected)}); it holds e.g. {held}')
    if tuple(shapes[name]) != expected:
      raise ChallengeError(
          f'checkpoint {path} does not hold a {what}: variable "{name}" has shape '
          f'{list(shapes[name])}, the model expects {list(expected)}')


def load(path: str, names: Mapping[str, tf.Variable], what: str) -> None:
  """Assigns each variable of `names` {tf1 name: variable} from the checkpoint, after
  checking them all."""
  check(path, names, what)
  reader = _reader(path)
  try:
    values = {name: reader.get_tensor(name) for name in names}
  except (tf.errors.OpError, IndexError) as e:  # a truncated data file: IndexError
    raise unreadable(path, e) from None
  for name, variable in names.items():
    variable.assign(values[name].astype(np.dtype(variable.dtype)))


def present(path: str, names: Mapping[str, tf.Variable]) -> Dict[str, tf.Variable]:
  """The entries of `names` that the checkpoint holds with the right shape."""
  shapes = _reader(path).get_variable_to_shape_map()
  return {name: variable for name, variable in names.items()
          if name in shapes and tuple(shapes[name]) == tuple(variable.shape)}


def step(path: str) -> int:
  """The checkpoint's global step (0 if it has none)."""
  reader = _reader(path)
  return int(reader.get_tensor(GLOBAL_STEP)) if reader.has_tensor(GLOBAL_STEP) else 0
