"""Validation of a submitted adversarial test set (.npy), which is untrusted input.

Nothing is unpickled. The file is opened once: its header is parsed and checked, its size
(fstat on the same descriptor) compared with what the header announces, and only then is the
data read from that same descriptor into memory this process owns. What is checked (in chunks)
and returned is that in-memory array, so a file rewritten, truncated or replaced while or after
it is validated cannot change what is scored. Accepted dtypes: float16/32/64 and integer types
(cast to float32 for the model; the original's own pgd_attack.py saved float64). Rejected:
object, bool, complex, string, structured and other dtypes.
"""
import os

import numpy as np

from common import files
from common.attacks.threat import ThreatModel
from common.errors import (SubmissionDtypeError, SubmissionFormatError,
                           SubmissionPerturbationError, SubmissionRangeError,
                           SubmissionShapeError)

TOLERANCE = 1e-4  # on the pixel range and on ε, as the original
_CHUNK = 1000  # examples per chunk: memory stays a small multiple of one chunk


def _not_npy(path, error):
  return SubmissionFormatError(f'{path} is not a valid .npy file ({type(error).__name__}: '
                               f'{error}); save the array with numpy.save')


def _read_header(f, path):
  """(shape, fortran_order, dtype) from the open file `f`, left at the start of the data."""
  try:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      return np.lib.format.read_array_header_1_0(f)
    if version in ((2, 0), (3, 0)):
      return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f'unsupported .npy version {version}')
  except Exception as e:  # numpy's header parser raises many types on hostile input
    # (found by the fuzz test: tokenize.TokenError on a header with a stray NUL byte).
    raise _not_npy(path, e) from None


def _size_error(path, actual, expected, shape, dtype):
  return SubmissionFormatError(
      f'{path} is {"truncated" if actual < expected else "longer than its header says"}: '
      f'{actual} bytes, expected {expected} for shape {tuple(shape)} and dtype {dtype}')


def _read_data(f, path, shape, fortran, dtype):
  """The data that follows the header in `f`, read into a new array of the file's dtype.

  The size is checked on the descriptor before anything is allocated (a header may announce
  any size), and again after reading: a file that grew or shrank meanwhile is rejected."""
  count = int(np.prod(shape, dtype=np.int64))
  expected = f.tell() + count * dtype.itemsize
  actual = os.fstat(f.fileno()).st_size
  if actual != expected:
    raise _size_error(path, actual, expected, shape, dtype)
  flat = np.empty(count, dtype=dtype)
  buffer = memoryview(flat.view(np.uint8))  # readinto fills it in place: no second copy
  filled = 0
  while filled < len(buffer):
    read = f.readinto(buffer[filled:])
    if not read:
      break
    filled += read
  if filled < len(buffer) or f.read(1):
    now = 'truncated' if filled < len(buffer) else 'longer than its header says'
    raise SubmissionFormatError(f'{path} changed while it was read (it is {now} now); '
                                'submit a file that is no longer being written')
  if fortran:  # as numpy.load does: the data holds the transpose in C order
    return flat.reshape(shape[::-1]).transpose()
  return flat.reshape(shape)


def load(path: str, x_nat: np.ndarray, epsilon: float, pixel_max: float,
         norm: str = 'linf') -> np.ndarray:
  """Returns the submission as float32 if it is valid against x_nat, else raises
  InvalidSubmission with the original's message where it had one. The array returned is
  the one validated, in memory of its own (no view of the file). The distance is the
  threat model's `norm` (ℓ∞, the original's, or ℓ2), each example's within ε + TOLERANCE."""
  threat = ThreatModel(norm, epsilon, 0.0, pixel_max)
  if not os.path.lexists(path):
    raise SubmissionFormatError(f'submission {path} does not exist; set store_adv_path '
                                '(or --store_adv_path) to the .npy file to score')
  # Opened without blocking (a FIFO), checked on the descriptor: a regular file.
  with files.open_input(path, 'submission', SubmissionFormatError) as f:
    shape, fortran, dtype = _read_header(f, path)
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in 'fiu' or (
        dtype.kind == 'f' and dtype.itemsize > 8):
      raise SubmissionDtypeError(f'Invalid dtype: expected floating point (float32), found '
                                 f'{dtype}; object, boolean, complex and string arrays are '
                                 'not accepted')
    expected = tuple(x_nat.shape)
    if tuple(shape) != expected:
      raise SubmissionShapeError('Invalid shape: expected ({}), found {}'.format(
          ','.join(str(d) for d in expected), tuple(shape)))
    try:
      array = _read_data(f, path, shape, fortran, dtype)
    except OSError as e:
      raise SubmissionFormatError(f'submission {path} could not be read ({e})') from None

  low, high, farthest, finite = np.inf, -np.inf, 0.0, True
  # Hostile bytes may hold signalling NaNs or huge values: they are reported, not warned about.
  with np.errstate(invalid='ignore', over='ignore'):
    for start in range(0, len(array), _CHUNK):
      chunk = array[start:start + _CHUNK].astype(np.float64)  # a copy: changed in place below
      finite &= bool(np.isfinite(chunk).all())
      low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
      chunk -= x_nat[start:start + _CHUNK]  # in place: one float64 chunk at a time
      # (NaN/inf need no care here: they fail the range check, which comes first.)
      farthest = max(farthest, float(threat.distance(chunk).max()))
      del chunk  # before the next one is made: one float64 chunk alive at a time
  if not finite or low < -TOLERANCE or high > pixel_max + TOLERANCE:
    raise SubmissionRangeError(
        f'Invalid pixel range. Expected [0, {pixel_max:g}], found [{low}, {high}]'
        + ('' if finite else ' (the submission holds NaN or infinite values)'))
  if farthest > epsilon + TOLERANCE:
    raise SubmissionPerturbationError(
        f'maximum perturbation found: {farthest}\nmaximum perturbation allowed: {epsilon}'
        + ('' if norm == 'linf' else ' (ℓ2 distance)'))
  # float32 in native byte order is returned as is (the buffer read above); others are cast.
  return np.asarray(array, dtype=np.float32)
