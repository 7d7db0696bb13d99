"""Checkpoint I/O: what a checkpoint holds and how scripts find and read one."""
from typing import Optional

import tensorflow as tf

from common.errors import ChallengeError

CHECKPOINT_NAME = 'checkpoint'  # files model_dir/checkpoint-<step>.*, as the original


def training_checkpoint(model, optimizer, step) -> tf.train.Checkpoint:
  return tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)


def manager(checkpoint, model_dir, max_to_keep=3) -> tf.train.CheckpointManager:
  # CheckpointManager writes the data files first and the `checkpoint` index file last,
  # atomically: a reader never sees a checkpoint it cannot open (unless it is later
  # rotated away, which readers handle).
  return tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=max_to_keep,
                                    checkpoint_name=CHECKPOINT_NAME, step_counter=checkpoint.step)


def latest(model_dir: str) -> Optional[str]:
  return tf.train.latest_checkpoint(model_dir)


def require_latest(model_dir: str) -> str:
  path = latest(model_dir)
  if path is None:
    raise ChallengeError(f'no checkpoint found in {model_dir}; train a model first '
                         '(train.py) or pass --model_dir with a directory that holds one')
  return path


def restore_model(model, path: str) -> int:
  """Loads the model weights saved at `path`; returns the checkpoint's step.

  Raises tf.errors.NotFoundError if the files vanished (e.g. rotated out).
  """
  step = tf.Variable(0, dtype=tf.int64)
  restore(tf.train.Checkpoint(model=model, step=step), path, model.name, partial=True)
  return int(step.numpy())


def restore(checkpoint, path: str, what: str, partial: bool = False) -> None:
  """Restores `checkpoint` from `path`; a checkpoint of something else (variables missing
  or of other shapes) is a ChallengeError naming `what` it should hold. `partial`: the
  file may hold more (e.g. optimizer slots when only the model is wanted)."""
  try:
    status = checkpoint.read(path) if partial else checkpoint.restore(path)
    if partial:
      status.expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:  # missing variables; a shape mismatch
    raise ChallengeError(f'checkpoint {path} does not hold a {what}: {e}') from None
