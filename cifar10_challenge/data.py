"""CIFAR-10 from Krizhevsky's python pickles, as the original's cifar10_input.py read them,
with tensorflow_datasets as a fallback; and the training augmentation, in tf.data.

Pickles: data_batch_1..5 and test_batch, dicts with b'data' uint8 (N, 3072) in CHW order
and b'labels'; batches.meta with b'label_names'. The unpickler builds nothing but
containers and numpy arrays. Pixels become float32 in [0, 255]; the test set keeps
its original order (submissions are checked against it by index).
"""
import os
import pickle
import re

import numpy as np
import tensorflow as tf

from common import files
from common.data import Datasets, Split, check_reachable
from common.errors import ChallengeError

TRAIN_FILES = tuple(f'data_batch_{i}' for i in range(1, 6))
TEST_FILE = 'test_batch'
META_FILE = 'batches.meta'
FILES = TRAIN_FILES + (TEST_FILE, META_FILE)
LABEL_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
               'ship', 'truck')
# Where tensorflow_datasets' cifar10 downloads from (its builder's URL).
TFDS_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'
PAD = 4  # zero-pad 32x32 to 36x36, then crop 32x32 at random


class _DataUnpickler(pickle.Unpickler):
  """Unpickles plain containers and numpy arrays only: no other class can be constructed,
  so a file in the data directory cannot run code."""
  ALLOWED = {(numpy_core + module, name)
             for numpy_core in ('numpy.core', 'numpy._core')  # numpy 1 and 2 names
             for module, name in (('.multiarray', '_reconstruct'), ('.numeric', '_frombuffer'))
             } | {('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode')}

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a CIFAR-10 pickle')
    return super().find_class(module, name)


# The largest pickle accepted (a batch of 10,000 images is 31 MB).
MAX_PICKLE_BYTES = 1 << 28


def _unpickle(path):
  # Opened through common.files: a regular file (never blocking on a FIFO) of bounded size.
  with files.open_input(path, 'CIFAR-10 file', max_bytes=MAX_PICKLE_BYTES) as f:
    return _unpickle_from(f, path)


def _unpickle_from(f, path):
  try:
    return _DataUnpickler(f, encoding='bytes').load()
  except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError,
          AttributeError, ImportError, IndexError, KeyError, MemoryError,
          RecursionError) as e:
    raise ChallengeError(f'cannot read {path} ({type(e).__name__}: {e}); it should be a '
                         'CIFAR-10 python pickle: delete it and fetch it again') from None


def read_batch(path):
  """(images uint8 (N, 32, 32, 3), labels int64 (N,)) of one pickled batch."""
  batch = _unpickle(path)
  try:
    images, labels = np.asarray(batch[b'data']), np.asarray(batch[b'labels'], np.int64)
  except (KeyError, TypeError, ValueError):
    raise ChallengeError(f'{path} is not a CIFAR-10 batch: it needs the keys b"data" and '
                         'b"labels"') from None
  if (images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072
      or labels.shape != images.shape[:1] or labels.min(initial=0) < 0
      or labels.max(initial=0) > 9):
    raise ChallengeError(f'{path} is not a CIFAR-10 batch: data {images.dtype} '
                         f'{images.shape}, labels {labels.shape}; expected uint8 (N, 3072) '
                         'and N labels in 0..9')
  return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def write_batch(path, images, labels):
  """Writes a batch in the pickle format (for tests and conversions)."""
  data = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), 3072)
  with open(path, 'wb') as f:
    pickle.dump({b'data': data, b'labels': [int(y) for y in labels]}, f)


def write_meta(path, label_names=LABEL_NAMES):
  with open(path, 'wb') as f:
    pickle.dump({b'label_names': [n.encode() for n in label_names]}, f)


def read_label_names(path):
  meta = _unpickle(path) if os.path.lexists(path) else None
  names = meta.get(b'label_names') if isinstance(meta, dict) else None
  if not isinstance(names, list) or len(names) != 10:
    raise ChallengeError(f'{path} does not hold the 10 CIFAR-10 label names '
                         '(b"label_names")')
  return tuple(n.decode('utf-8') if isinstance(n, bytes) else str(n) for n in names)


def _datasets(train_x, train_y, test_x, test_y, label_names):
  def split(x, y):
    return Split(x.astype(np.float32), y.astype(np.int64))
  return Datasets(train=split(train_x, train_y), test=split(test_x, test_y),
                  label_names=label_names)


def load_pickles(data_path):
  parts = [read_batch(os.path.join(data_path, name)) for name in TRAIN_FILES]
  test_x, test_y = read_batch(os.path.join(data_path, TEST_FILE))
  return _datasets(np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]),
                   test_x, test_y, read_label_names(os.path.join(data_path, META_FILE)))


def in_original_order(ids, images, labels, split_name):
  """Sorts tfds examples back into the official order by their ids ('test_00042').

  tfds shuffles examples when it prepares a dataset; the challenge needs the test set in
  its original order.
  """
  index = []
  for id_ in ids:
    match = re.fullmatch(rf'{split_name}_(\d+)', id_.decode() if isinstance(id_, bytes) else id_)
    if match is None:
      raise ChallengeError(f'unexpected tensorflow_datasets cifar10 id {id_!r}: cannot put '
                           f'the {split_name} split back into its original order')
    index.append(int(match.group(1)))
  order = np.argsort(index)
  if sorted(index) != list(range(len(index))):
    raise ChallengeError(f'tensorflow_datasets cifar10 {split_name} ids are not 0..N-1')
  return images[order], labels[order]


def load_with_tfds(data_path):
  """The tfds `cifar10` dataset (downloaded and prepared under data_path/tfds)."""
  import tensorflow_datasets as tfds  # slow import, only needed here
  if not tfds.builder('cifar10', data_dir=os.path.join(data_path, 'tfds')).is_prepared():
    check_reachable(TFDS_URL)  # offline: fail now, not after the downloader's retries
  arrays = []
  for split_name in ('train', 'test'):
    examples = tfds.as_numpy(tfds.load('cifar10', split=split_name, batch_size=-1,
                                       data_dir=os.path.join(data_path, 'tfds')))
    arrays += in_original_order(examples['id'], examples['image'], examples['label'],
                                split_name)
  return _datasets(*arrays, label_names=LABEL_NAMES)


def data_files(data_path):
  """Every path load() reads from data_path (the tfds fallback's own files aside)."""
  return [os.path.join(data_path, name) for name in FILES]


def load(data_path) -> Datasets:
  files.require_directory(data_path, 'data_path')
  # Whatever is there under a file's name counts: one that is not a regular file is
  # reported when it is read, not taken for missing (which would start a download).
  missing = [name for name in FILES if not os.path.lexists(os.path.join(data_path, name))]
  if not missing:
    return load_pickles(data_path)
  try:
    return load_with_tfds(data_path)
  except Exception as e:  # any failure here ends in the same advice
    raise ChallengeError(
        f'CIFAR-10 not found in {data_path}: it needs the python pickles '
        + ', '.join(FILES) + f' (missing: {", ".join(missing)}; they are in cifar-10-python'
        f'.tar.gz), and loading it with tensorflow_datasets failed ({type(e).__name__}: '
        f'{e}). Put the files there or pass --data_path with a directory that holds them.'
    ) from None


def augment(images, seed):
  """The original's training augmentation of a batch [N, 32, 32, 3]: zero-pad to 36x36,
  crop 32x32 at a random offset, flip left-right with probability 1/2; each image on its
  own. `seed`: shape-[2] int tensor (stateless, so resumed runs augment identically)."""
  n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
  offset_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
  padded = tf.pad(images, [[0, 0], [PAD // 2, PAD // 2], [PAD // 2, PAD // 2], [0, 0]])
  offsets = tf.random.stateless_uniform([n, 2], offset_seed, 0, PAD + 1, dtype=tf.int32)
  rows = offsets[:, :1] + tf.range(height)  # [N, 32] row indices into the padded image
  cols = offsets[:, 1:] + tf.range(width)
  cropped = tf.gather(tf.gather(padded, rows, batch_dims=1), cols, axis=2, batch_dims=1)
  flip = tf.random.stateless_uniform([n], flip_seed) < 0.5
  return tf.where(flip[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)
