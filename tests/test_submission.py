"""Submitted .npy files are untrusted: every kind of invalid file is rejected before scoring."""
import io
import pickle
import tracemalloc

import numpy as np
import pytest

from common import submission
from common import errors
from common.errors import InvalidSubmission

EPS = 0.3
RNG = np.random.default_rng(5)
X_NAT = RNG.uniform(0, 1, (50, 784)).astype(np.float32)
X_NAT[:, :20] = 0.0
X_NAT[:, 20:40] = 1.0


def valid():
  return np.clip(X_NAT + RNG.uniform(-EPS, EPS, X_NAT.shape), 0, 1).astype(np.float32)


def save(tmp_path, array, name='sub.npy'):
  path = str(tmp_path / name)
  np.save(path, array)
  return path


def check(path):
  return submission.load(path, X_NAT, EPS, 1.0)


def test_a_valid_submission_is_accepted_as_float32(tmp_path):
  x = valid()
  np.testing.assert_array_equal(check(save(tmp_path, x)), x)


@pytest.mark.parametrize('dtype', [np.float64, np.float16])
def test_other_float_widths_are_cast(tmp_path, dtype):
  # The original pgd_attack.py saved float64. float16 rounding may move a value by up
  # to ~5e-4, so use exact values (multiples of 1/64) here.
  x = np.round(X_NAT * 64) / 64
  nat = x.astype(np.float32)
  out = submission.load(save(tmp_path, x.astype(dtype)), nat, EPS, 1.0)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, nat)


def test_tolerance_edges(tmp_path):
  x = X_NAT.copy()
  x[0, 0] = -0.5e-4  # just inside the pixel range tolerance (ε-ball too: |Δ| = 5e-5)
  x[0, 20] = 1.0 + 0.5e-4
  x[1, 50] = X_NAT[1, 50] + EPS + 0.5e-4 if X_NAT[1, 50] < 0.6 else X_NAT[1, 50] - EPS - 0.5e-4
  check(save(tmp_path, x))
  x[0, 0] = -2e-4
  with pytest.raises(InvalidSubmission, match=r'Invalid pixel range. Expected \[0, 1\]'):
    check(save(tmp_path, x))


def test_negative_zero_and_subnormals_are_fine(tmp_path):
  x = X_NAT.copy()
  x[:, :20] = -0.0
  x[0, :5] = np.float32(1e-40)
  check(save(tmp_path, x))


@pytest.mark.parametrize('make,message', [
    (lambda: valid().reshape(50, 28, 28), r'Invalid shape: expected \(50,784\), found \(50, 28, 28\)'),
    (lambda: valid()[:49], r'Invalid shape: expected \(50,784\), found \(49, 784\)'),
    (lambda: valid().ravel(), 'Invalid shape'),
    (lambda: np.float32(0.5), 'Invalid shape'),
    (lambda: valid().astype(np.complex64), 'Invalid dtype'),
    (lambda: valid() > 0.5, 'Invalid dtype'),
    (lambda: valid().astype('U3'), 'Invalid dtype'),
    (lambda: np.zeros(50, dtype=[('a', 'f4', 784)]), 'Invalid dtype'),
    (lambda: np.array([None] * 50, dtype=object), 'Invalid dtype'),
])
def test_wrong_shapes_and_dtypes(tmp_path, make, message):
  with pytest.raises(InvalidSubmission, match=message):
    check(save(tmp_path, make()))


@pytest.mark.parametrize('value', [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path, value):
  x = valid()
  x[3, 7] = value
  with pytest.raises(InvalidSubmission, match='Invalid pixel range.*NaN or infinite'):
    check(save(tmp_path, x))


def test_perturbation_over_epsilon_prints_the_originals_message(tmp_path):
  x = X_NAT.copy()
  x[2, 100] = min(1.0, X_NAT[2, 100] + 0.31) if X_NAT[2, 100] < 0.5 else X_NAT[2, 100] - 0.31
  with pytest.raises(InvalidSubmission,
                     match='maximum perturbation found: 0.31.*\nmaximum perturbation allowed: 0.3'):
    check(save(tmp_path, x))


def test_pickles_and_archives_are_never_unpickled(tmp_path):
  marker = tmp_path / 'pwned'

  class Evil:
    def __reduce__(self):
      return (open, (str(marker), 'w'))

  path = str(tmp_path / 'evil.npy')
  with open(path, 'wb') as f:
    pickle.dump(Evil(), f)
  with pytest.raises(InvalidSubmission, match='not a valid .npy file'):
    check(path)
  np.savez(str(tmp_path / 'arch.npz'), x=valid())
  with pytest.raises(InvalidSubmission, match='not a valid .npy file'):
    check(str(tmp_path / 'arch.npz'))
  assert not marker.exists()


def test_truncated_and_padded_files(tmp_path):
  path = save(tmp_path, valid())
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:-10])
  with pytest.raises(InvalidSubmission, match='truncated'):
    check(path)
  open(path, 'wb').write(data + b'\0' * 64)
  with pytest.raises(InvalidSubmission, match='longer than its header says'):
    check(path)


def test_a_header_that_lies_about_its_shape(tmp_path):
  buffer = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      buffer, {'descr': '<f4', 'fortran_order': False, 'shape': (50, 784)})
  path = tmp_path / 'liar.npy'
  path.write_bytes(buffer.getvalue() + b'\0' * 16)  # far less data than announced
  with pytest.raises(InvalidSubmission, match='truncated'):
    check(str(path))


def test_missing_file(tmp_path):
  with pytest.raises(InvalidSubmission, match='does not exist'):
    check(str(tmp_path / 'none.npy'))


@pytest.mark.parametrize('make, error', [
    (lambda: 'missing', errors.SubmissionFormatError),
    (lambda: b'\x80\x04not numpy', errors.SubmissionFormatError),
    (lambda: valid().astype(np.complex64), errors.SubmissionDtypeError),
    (lambda: valid().reshape(50, 28, 28), errors.SubmissionShapeError),
    (lambda: np.where(X_NAT > 0.5, np.nan, valid()), errors.SubmissionRangeError),
    (lambda: np.clip(X_NAT + 0.31, 0, 1), errors.SubmissionPerturbationError),
])
def test_each_kind_of_problem_has_its_own_error_type(tmp_path, make, error):
  made = make()
  if isinstance(made, str):
    path = str(tmp_path / 'missing.npy')
  elif isinstance(made, bytes):
    path = str(tmp_path / 'sub.npy')
    (tmp_path / 'sub.npy').write_bytes(made)
  else:
    path = save(tmp_path, made)
  with pytest.raises(error) as raised:
    check(path)
  assert raised.value.exit_code == 2


def test_fortran_order_is_accepted_as_the_same_array(tmp_path):
  array = valid()
  np.testing.assert_array_equal(check(save(tmp_path, np.asfortranarray(array))), array)


def test_validating_a_full_size_submission_needs_little_memory(tmp_path):
  # 10,000 MNIST-sized examples (31 MB as float32): the file is memory-mapped and checked
  # in chunks; the peak of Python-visible allocations stays within 2x the file's size
  # (the float32 result itself is 1x).
  x_nat = np.random.default_rng(0).uniform(0, 1, (10000, 784)).astype(np.float32)
  path = save(tmp_path, x_nat)
  tracemalloc.start()
  try:
    result = submission.load(path, x_nat, EPS, 1.0)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert result.shape == x_nat.shape
  assert peak < 2 * x_nat.nbytes, f'peak {peak / 2**20:.0f} MiB'


@pytest.mark.parametrize('dtype', [np.uint8, np.int16, np.int64])
def test_integer_arrays_are_accepted_after_a_cast(tmp_path, dtype):
  x_nat = np.random.default_rng(1).integers(0, 256, (10, 32, 32, 3)).astype(np.float32)
  submitted = np.clip(x_nat + 3, 0, 255).astype(dtype)  # within ε = 8 of pixel values
  result = submission.load(save(tmp_path, submitted), x_nat, 8.0, 255.0)
  assert result.dtype == np.float32
  np.testing.assert_array_equal(result, submitted.astype(np.float32))
