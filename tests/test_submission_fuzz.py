"""Generated submissions (hypothesis): never a crash, never an invalid file accepted, always a
valid one accepted. 600 cases, derandomised so that CI is reproducible."""
import io
import os
import pickle
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from common import submission
from common.errors import InvalidSubmission

EPS, PIXEL_MAX = 8.0, 255.0
X_NAT = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3)).astype(np.float32)
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def verdict(data: bytes):
  """(accepted, result) of submission.load on a file holding `data`; any exception other
  than InvalidSubmission propagates and fails the test."""
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, 'submission.npy')
    with open(path, 'wb') as f:
      f.write(data)
    try:
      return True, submission.load(path, X_NAT, EPS, PIXEL_MAX)
    except InvalidSubmission:
      return False, None


def reference_is_valid(data: bytes) -> bool:
  """An independent judge: numpy's own parser (no pickles), exact file size, then the rules."""
  try:
    array = np.load(io.BytesIO(data), allow_pickle=False)
  except Exception:  # anything numpy cannot read as a plain .npy is invalid
    return False
  header = io.BytesIO(data)
  version = np.lib.format.read_magic(header)
  read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
          else np.lib.format.read_array_header_2_0)
  read(header)
  if len(data) != header.tell() + array.nbytes:
    return False  # trailing bytes: rejected by our rules
  dtype = array.dtype
  if dtype.fields is not None or dtype.kind not in 'fiu' or dtype.kind == 'f' and dtype.itemsize > 8:
    return False
  if array.shape != X_NAT.shape:
    return False
  values = array.astype(np.float64)
  if not np.isfinite(values).all() or values.min() < -1e-4 or values.max() > PIXEL_MAX + 1e-4:
    return False
  return np.abs(values - X_NAT).max() <= EPS + 1e-4


def npy_bytes(array, fortran=False):
  buffer = io.BytesIO()
  np.save(buffer, np.asfortranarray(array) if fortran else array)
  return buffer.getvalue()


def valid_array(seed, scale, dtype):
  rng = np.random.default_rng(seed)
  noise = rng.uniform(-1, 1, X_NAT.shape) * scale * (EPS - 1e-3)
  return np.clip(X_NAT + noise, 0, PIXEL_MAX).astype(dtype)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(0, 1), st.sampled_from([np.float32, np.float64]),
       st.booleans())
def test_valid_submissions_are_accepted(seed, scale, dtype, fortran):
  array = valid_array(seed, scale, dtype)
  accepted, result = verdict(npy_bytes(array, fortran))
  assert accepted
  np.testing.assert_array_equal(result, array.astype(np.float32))


BAD_VALUES = [np.nan, np.inf, -np.inf, -2e-4, PIXEL_MAX + 2e-4, 1e30, -1e30]


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, X_NAT.size - 1),
                                                     st.sampled_from(BAD_VALUES + ['far'])),
                                           min_size=1, max_size=5),
       st.sampled_from([np.float32, np.float64, np.float16]))
def test_invalid_values_are_rejected(seed, changes, dtype):
  array = valid_array(seed, 0.5, np.float64).reshape(-1)
  for index, value in changes:
    # 'far': just outside the ε-ball, in range.
    array[index] = (X_NAT.reshape(-1)[index] + (EPS + 2e-3) * (1 if X_NAT.reshape(-1)[index] < 128
                                                               else -1)
                    if value == 'far' else value)
  data = npy_bytes(array.reshape(X_NAT.shape).astype(dtype))
  accepted, _ = verdict(data)
  assert accepted == reference_is_valid(data)
  assert not accepted or dtype == np.float16  # float16 may round a value back inside


HEADER_LIES = [("'<f4'", "'<f8'"), ('(6, 8, 8, 3)', '(6, 8, 8, 4)'), ('(6, 8, 8, 3)', '(3, 8, 16, 3)'),
               ("'<f4'", "'<c8'"), ("'<f4'", "'|b1'"), ("'<f4'", "'<U1'"), ("'<f4'", "'>f4'"),
               ("'fortran_order': False", "'fortran_order': True ")]


@SETTINGS
@given(st.integers(0, 2**32 - 1),
       st.sampled_from(['flip', 'truncate', 'append', 'pickle', 'object', 'header']),
       st.integers(0, 2**16), st.binary(min_size=1, max_size=16))
def test_mangled_files_are_judged_like_the_reference(seed, kind, position, noise):
  data = bytearray(npy_bytes(valid_array(seed, 0.5, np.float32)))
  if kind == 'flip':  # corrupt the magic or header
    data[position % 128] ^= noise[0] or 1
  elif kind == 'truncate':
    data = data[:position % len(data)]
  elif kind == 'append':
    data += noise
  elif kind == 'pickle':
    data = bytearray(pickle.dumps(np.frombuffer(bytes(data), np.uint8)))
  elif kind == 'object':
    data = bytearray(npy_bytes(np.array([1, 'x', None], dtype=object)))
  else:  # a header that lies about the shape or dtype of the same payload
    old, new = HEADER_LIES[noise[0] % len(HEADER_LIES)]
    data[:128] = data[:128].decode('latin1').replace(old, new).encode('latin1')
  accepted, _ = verdict(bytes(data))
  assert accepted == reference_is_valid(bytes(data))
