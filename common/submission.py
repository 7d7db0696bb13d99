"""Validation of a submitted adversarial test set (.npy), which is untrusted input.

Nothing is unpickled: the header is parsed and checked before any data is read, and the
data is memory-mapped and checked in chunks. Accepted dtypes: float16/32/64 and integer
types (cast to float32 for the model; the original's own pgd_attack.py saved float64).
Rejected: object, bool, complex, string, structured and other dtypes.
"""
import os

import numpy as np

from common.errors import (SubmissionDtypeError, SubmissionFormatError,
                           SubmissionPerturbationError, SubmissionRangeError,
                           SubmissionShapeError)

TOLERANCE = 1e-4  # on the pixel range and on ε, as the original
_CHUNK = 1000  # examples per chunk: memory stays a small multiple of one chunk


def _read_header(path):
  try:
    with open(path, 'rb') as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
      elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
      else:
        raise ValueError(f'unsupported .npy version {version}')
      return shape, fortran, dtype, f.tell()
  except Exception as e:  # numpy's header parser raises many types on hostile input
    # (found by the fuzz test: tokenize.TokenError on a header with a stray NUL byte).
    raise SubmissionFormatError(f'{path} is not a valid .npy file ({type(e).__name__}: {e}); '
                                'save the array with numpy.save') from None


def load(path: str, x_nat: np.ndarray, epsilon: float, pixel_max: float) -> np.ndarray:
  """Returns the submission as float32 if it is valid against x_nat, else raises
  InvalidSubmission with the original's message where it had one."""
  if not os.path.isfile(path):
    raise SubmissionFormatError(f'submission {path} does not exist; set store_adv_path '
                            '(or --store_adv_path) to the .npy file to score')
  shape, _, dtype, data_offset = _read_header(path)
  if dtype.hasobject or dtype.fields is not None or dtype.kind not in 'fiu' or (
      dtype.kind == 'f' and dtype.itemsize > 8):
    raise SubmissionDtypeError(f'Invalid dtype: expected floating point (float32), found '
                            f'{dtype}; object, boolean, complex and string arrays are '
                            'not accepted')
  expected = tuple(x_nat.shape)
  if tuple(shape) != expected:
    raise SubmissionShapeError('Invalid shape: expected ({}), found {}'.format(
        ','.join(str(d) for d in expected), tuple(shape)))
  size = data_offset + int(np.prod(shape)) * dtype.itemsize
  actual = os.path.getsize(path)
  if actual != size:
    raise SubmissionFormatError(
        f'{path} is {"truncated" if actual < size else "longer than its header says"}: '
        f'{actual} bytes, expected {size} for shape {tuple(shape)} and dtype {dtype}')
  array = np.load(path, mmap_mode='r', allow_pickle=False)

  low, high, l_inf, finite = np.inf, -np.inf, 0.0, True
  for start in range(0, len(array), _CHUNK):
    chunk = np.asarray(array[start:start + _CHUNK], dtype=np.float64)
    finite &= bool(np.isfinite(chunk).all())
    low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    diff = np.abs(chunk - x_nat[start:start + _CHUNK].astype(np.float64))
    l_inf = max(l_inf, float(np.nan_to_num(diff, nan=np.inf).max()))
  if not finite or low < -TOLERANCE or high > pixel_max + TOLERANCE:
    raise SubmissionRangeError(
        f'Invalid pixel range. Expected [0, {pixel_max:g}], found [{low}, {high}]'
        + ('' if finite else ' (the submission holds NaN or infinite values)'))
  if l_inf > epsilon + TOLERANCE:
    raise SubmissionPerturbationError(f'maximum perturbation found: {l_inf}\n'
                            f'maximum perturbation allowed: {epsilon}')
  return np.asarray(array, dtype=np.float32)
