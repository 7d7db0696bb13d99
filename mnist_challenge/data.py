"""MNIST from LeCun's IDX files, split as the original's TF1 tutorial loader did.

The loader held out the first 5,000 training images as a validation set, so training saw
images 5,000-59,999. Pixels are uint8 * float32(1/255), as the loader computed them, so
the test set here is bit-identical to the one the original code scored submissions on.
"""
import gzip
import os
import shutil
import tempfile
import zlib

import numpy as np

from common import files
from common.data import Datasets, Split, check_reachable
from common.errors import ChallengeError

FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}
VALIDATION_SIZE = 5000

# IDX type codes (http://yann.lecun.com/exdb/mnist/, bottom of the page).
_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


# The largest IDX file accepted (MNIST's training images are 47 MB): a header may announce
# any size, and nothing is allocated beyond what it may announce.
MAX_IDX_BYTES = 1 << 30


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped); a malformed one is an error naming it. Opened
  through common.files (a regular file, never blocking); only as many bytes as the header
  announces are read (a .gz file is not inflated beyond them)."""
  def corrupt(why):
    return ChallengeError(f'{path} {why}; delete it and fetch it again')
  with files.open_input(path, 'MNIST file') as raw:
    try:
      f = gzip.GzipFile(fileobj=raw, mode='rb') if path.endswith('.gz') else raw
      magic = f.read(4)
      if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise corrupt('is not an IDX file (bad magic number)')
      ndim = magic[3]
      dims = f.read(4 * ndim)
      if len(dims) != 4 * ndim:
        raise corrupt('is truncated or corrupt: its header is cut short')
      shape = tuple(int(d) for d in np.frombuffer(dims, '>u4'))
      dtype = np.dtype(_IDX_DTYPES[magic[2]])
      size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
      if size > MAX_IDX_BYTES:
        raise corrupt(f'announces {size:,} bytes of data; an MNIST file holds at most '
                      f'{MAX_IDX_BYTES:,}')
      data = f.read(size + 1)
    except (OSError, EOFError, zlib.error) as e:
      raise corrupt(f'cannot be read ({type(e).__name__}: {e})') from None
  if len(data) != size:
    raise corrupt(f'is truncated or corrupt: {4 + 4 * ndim + len(data)} bytes, its header '
                  f'announces {4 + 4 * ndim + size}')
  return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder('='))


def write_idx(path: str, array: np.ndarray) -> None:
  codes = {np.dtype(v).newbyteorder('='): k for k, v in _IDX_DTYPES.items()}
  array = np.asarray(array)
  header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(
      array.shape, '>u4').tobytes()
  with (gzip.open(path, 'wb') if path.endswith('.gz') else open(path, 'wb')) as f:
    f.write(header + array.astype(array.dtype.newbyteorder('>')).tobytes())


def _find(data_dir):
  """{name: path} of the four files in data_dir (plain or .gz), or None if any is missing.
  Whatever is there under a file's name counts: one that is not a regular file is reported
  when it is read (not taken for missing, which would start a download)."""
  found = {}
  for name, base in FILES.items():
    for candidate in (base, base + '.gz'):
      if os.path.lexists(os.path.join(data_dir, candidate)):
        found[name] = os.path.join(data_dir, candidate)
        break
    else:
      return None
  return found


def download_url() -> str:
  """Where tensorflow_datasets downloads MNIST's four .gz files from."""
  import tensorflow_datasets as tfds  # slow import, only needed here
  return tfds.builder_cls('mnist').URL


def download_with_tfds(data_dir: str) -> None:
  """Fetches the four .gz files into data_dir with tensorflow_datasets' downloader.

  tfds' prepared `mnist` splits are reordered (shuffled by key hash), and the test set
  must keep its original order, so we take the raw files from the URL tfds uses.
  """
  import tensorflow_datasets as tfds  # slow import, only needed here
  url = download_url()
  check_reachable(url)  # offline: fail now, not after the downloader's retries
  os.makedirs(data_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
    manager = tfds.download.DownloadManager(download_dir=tmp)
    paths = manager.download({name: url + base + '.gz' for name, base in FILES.items()})
    for name, path in paths.items():
      # Rename within data_dir: atomic, so a later run never sees a half-written file.
      shutil.move(os.fspath(path), os.path.join(data_dir, FILES[name] + '.gz'))


def data_files(data_dir: str):
  """Every path load() may read (each file plain and .gz)."""
  return [os.path.join(data_dir, base + suffix) for base in FILES.values()
          for suffix in ('', '.gz')]


def load(data_dir: str) -> Datasets:
  files.require_directory(data_dir, 'data_dir')
  found = _find(data_dir)
  if found is None:
    try:
      download_with_tfds(data_dir)
    except Exception as e:  # any failure here ends in the same advice
      raise ChallengeError(
          f'MNIST not found in {data_dir}: it needs the files '
          + ', '.join(FILES.values()) + ' (each optionally .gz), and downloading them with '
          f'tensorflow_datasets failed ({type(e).__name__}: {e}). Put the four files there '
          'or pass --data_dir with a directory that holds them.') from None
    found = _find(data_dir)
  arrays = {name: read_idx(path) for name, path in found.items()}
  for part in ('train', 'test'):
    images, labels = arrays[part + '_images'], arrays[part + '_labels']
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
      raise ChallengeError(
          f'{found[part + "_images"]} and {found[part + "_labels"]} do not hold MNIST: '
          f'images {images.shape}, labels {labels.shape}')

  def split(images, labels):
    flat = images.reshape(len(images), 784).astype(np.float32)
    return Split(flat * np.float32(1.0 / 255.0), labels.astype(np.int64))

  train = split(arrays['train_images'], arrays['train_labels'])
  return Datasets(
      train=Split(train.images[VALIDATION_SIZE:], train.labels[VALIDATION_SIZE:]),
      validation=train.head(VALIDATION_SIZE),
      test=split(arrays['test_images'], arrays['test_labels']))
