"""Outputs are written to a temporary file beside the target and renamed into place, so
an interrupted run never leaves a half-written file under the final name."""
import os
import tempfile

import numpy as np


def atomic_write(path: str, write, mode: str = 'wb') -> None:
  """Calls write(file) on a temporary file, then renames it to `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.')
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def save_text(path: str, text: str) -> None:
  atomic_write(path, lambda f: f.write(text), 'w')


def save_npy(path: str, array: np.ndarray) -> None:
  atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def save_npz(path: str, **arrays: np.ndarray) -> None:
  atomic_write(path, lambda f: np.savez(f, **arrays))
