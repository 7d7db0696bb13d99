"""Input pipelines shared by both challenges (arrays in memory -> tf.data), and the check
that a download can start at all."""
import dataclasses
import socket
import threading
import urllib.parse
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # float32, the model's input layout and pixel range
  labels: np.ndarray  # int64

  def __len__(self):
    return len(self.labels)

  def head(self, n: int) -> 'Split':
    return Split(self.images[:n], self.labels[:n])


@dataclasses.dataclass(frozen=True)
class Datasets:
  train: Split
  test: Split  # in the original order: submissions are checked against it by index
  validation: Optional[Split] = None
  label_names: Optional[Tuple[str, ...]] = None  # class names by label, when the data has them


def training_batches(split: Split, batch_size: int, seed: int, start_step: int = 0,
                     augment: Optional[Callable] = None,
                     with_index: bool = False) -> tf.data.Dataset:
  """Endless batches (images, labels) of `split`: each epoch a fresh permutation, without
  replacement; with_index: (images, labels, each example's index in the split (int64)).

  Epoch e's order is a stateless function of (seed, e), so the stream is reproducible
  and a resumed run at `start_step` sees exactly the batches an uninterrupted run would.
  A batch may span two epochs, as in the TF1 tutorial loader the original used.
  `augment(images, seed)` (optional) maps a batch of images, with a per-batch seed.
  """
  n = len(split)
  first_epoch, offset = divmod(start_step * batch_size, n)
  images, labels = tf.constant(split.images), tf.constant(split.labels)

  def epoch_order(epoch):
    return tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))

  def gather(step, indices):
    x, y = tf.gather(images, indices), tf.gather(labels, indices)
    if augment is not None:
      x = augment(x, tf.stack([tf.constant(seed, tf.int64) + 1, step]))
    return (x, y, indices) if with_index else (x, y)

  indices = (tf.data.Dataset.counter(first_epoch).map(epoch_order).unbatch()
             .skip(offset).batch(batch_size, drop_remainder=True))
  steps = tf.data.Dataset.counter(start_step)
  return (tf.data.Dataset.zip(steps, indices)
          .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))


def replica_batches(global_batches: tf.data.Dataset, first_row: int, num_rows: int,
                    replica_batch: int) -> tf.data.Dataset:
  """One worker's share of a stream of global batches: rows first_row .. first_row+num_rows
  of each, as num_rows / replica_batch consecutive batches of replica_batch (one per local
  replica, in replica order). Workers taking disjoint row ranges that cover the global
  batch see every example of it exactly once between them."""
  def split(*columns):  # (images, labels) or (images, labels, indices)
    def per_replica(t):
      return tf.reshape(t[first_row:first_row + num_rows],
                        [num_rows // replica_batch, replica_batch] + t.shape[1:].as_list())
    return tf.data.Dataset.from_tensor_slices(tuple(per_replica(t) for t in columns))
  return global_batches.flat_map(split).prefetch(tf.data.AUTOTUNE)


def check_reachable(url: str, timeout: float = 10.0) -> None:
  """Raises OSError within about `timeout` seconds if url's host cannot be resolved or
  reached: on an offline compute node a downloader would retry for minutes before failing.
  A slow network that answers is fine: only the first connection is timed."""
  parsed = urllib.parse.urlsplit(url)
  address = (parsed.hostname, parsed.port or (443 if parsed.scheme == 'https' else 80))
  outcome = []

  def connect():  # in a thread: name resolution has no timeout of its own
    try:
      socket.create_connection(address, timeout=timeout).close()
      outcome.append(None)
    except OSError as e:
      outcome.append(e)
  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(timeout)
  if not outcome:
    raise OSError(f'{address[0]} did not answer within {timeout:g} s (no network?)')
  if outcome[0] is not None:
    raise OSError(f'cannot reach {address[0]}:{address[1]} ({outcome[0]})')
