"""Submitted .npy files are untrusted: every kind of invalid file is rejected before scoring."""
import io
import mmap
import os
import pickle
import tracemalloc

import numpy as np
import pytest

from common import commands, submission, training
from common import errors
from common.errors import InvalidSubmission
from conftest import quiet, tiny_config
from mnist_challenge.challenge import MNIST

EPS = 0.3
RNG_SEED = 5  # conftest reseeds RNG with it before each test
RNG = np.random.default_rng(RNG_SEED)
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
  # 10,000 MNIST-sized examples (31 MB as float32): the file is read once into an array of
  # its own (1x, which is also the float32 result) and checked in chunks, so the peak of
  # Python-visible allocations stays within 2x the file's size (measured: 1.23x).
  x_nat = np.random.default_rng(0).uniform(0, 1, (10000, 784)).astype(np.float32)
  path = save(tmp_path, x_nat)
  tracemalloc.start()
  try:
    result = submission.load(path, x_nat, EPS, 1.0)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert result.shape == x_nat.shape
  ratio = peak / os.path.getsize(path)
  # At least 1x: the result is in memory of its own, not a view of the file.
  assert 1.0 <= ratio < 2.0, f'peak {peak / 2**20:.1f} MiB, {ratio:.2f}x the file'


@pytest.mark.parametrize('dtype', [np.uint8, np.int16, np.int64])
def test_integer_arrays_are_accepted_after_a_cast(tmp_path, dtype):
  x_nat = np.random.default_rng(1).integers(0, 256, (10, 32, 32, 3)).astype(np.float32)
  submitted = np.clip(x_nat + 3, 0, 255).astype(dtype)  # within ε = 8 of pixel values
  result = submission.load(save(tmp_path, submitted), x_nat, 8.0, 255.0)
  assert result.dtype == np.float32
  np.testing.assert_array_equal(result, submitted.astype(np.float32))


def test_a_header_with_a_nul_byte_is_a_format_error(tmp_path):
  # Regression (found by the fuzz test): numpy's header parser raised tokenize.TokenError,
  # not a ValueError, on a stray NUL byte, and that escaped as a traceback.
  data = bytearray(open(save(tmp_path, valid()), 'rb').read())
  data[data.index(b'{')] = 0
  path = tmp_path / 'nul.npy'
  path.write_bytes(bytes(data))
  with pytest.raises(Exception):  # numpy itself cannot read it either
    np.load(str(path), allow_pickle=False)
  with pytest.raises(errors.SubmissionFormatError, match='not a valid .npy file'):
    check(str(path))


def file_mappings(array):
  """The memory maps found along array's .base chain."""
  found = []
  while array is not None:
    if isinstance(array, (np.memmap, mmap.mmap)):
      found.append(array)
    array = getattr(array, 'base', None)
  return found


@pytest.mark.parametrize('make', [valid, lambda: np.asfortranarray(valid()),
                                  lambda: valid().astype(np.float64)],
                         ids=['float32', 'fortran', 'float64'])
def test_the_result_is_memory_of_its_own_not_a_view_of_the_file(tmp_path, make):
  x = make()
  path = save(tmp_path, x)
  result = check(path)
  assert not isinstance(result, np.memmap) and file_mappings(result) == []
  owner = result
  while owner.base is not None:
    owner = owner.base
  assert isinstance(owner, np.ndarray) and owner.flags.owndata
  assert not np.shares_memory(result, np.load(path, mmap_mode='r'))
  # Writable (a read-only map of the file would not be), and writing stays in memory.
  before = open(path, 'rb').read()
  result[0, 0] = 0.5
  assert open(path, 'rb').read() == before


@pytest.mark.parametrize('change', ['rewrite', 'truncate'])
def test_changing_the_file_after_load_changes_nothing(tmp_path, change):
  x = valid()
  path = save(tmp_path, x)
  result = check(path)
  if change == 'rewrite':  # in place, same inode: what a mapping of the file would see
    with open(path, 'r+b') as f:
      f.seek(-x.nbytes, os.SEEK_END)
      f.write(np.full(x.shape, 7.0, np.float32).tobytes())
  else:  # touching a truncated mapping would crash the process (SIGBUS)
    os.truncate(path, 128)
  np.testing.assert_array_equal(result, x)


def replace_after_header_read(monkeypatch, path, other):
  """Makes the next .npy header read replace `path` by the file `other` (os.replace)."""
  real = np.lib.format.read_array_header_1_0

  def read_then_replace(*args, **kwargs):
    header = real(*args, **kwargs)
    if os.path.exists(other):
      os.replace(other, path)
    return header
  monkeypatch.setattr(np.lib.format, 'read_array_header_1_0', read_then_replace)


@pytest.mark.parametrize('make_other', [
    # Same size and header length: another dtype and shape (never validated), then
    # out-of-range values of the same dtype and shape.
    lambda: np.full((50, 392), 1e30, np.float64),
    lambda: np.full((50, 784), 7.0, np.float32),
], ids=['other-header', 'other-values'])
def test_a_file_replaced_after_its_header_was_read_is_not_what_is_scored(
    tmp_path, monkeypatch, make_other):
  x = valid()
  path = save(tmp_path, x)
  other = make_other()
  other_path = save(tmp_path, other, 'other.npy')
  assert os.path.getsize(other_path) == os.path.getsize(path)  # the size check cannot tell
  replace_after_header_read(monkeypatch, path, other_path)
  result = check(path)
  # Accepted, and exactly what was validated: the data comes from the descriptor whose
  # header was checked (the replaced file), not from the new file at the path.
  np.testing.assert_array_equal(result, x)
  assert result.dtype == np.float32 and result.shape == x.shape
  assert np.load(path).shape == other.shape  # the swap did happen


@pytest.mark.parametrize('when', ['after the header', 'after the size check'])
@pytest.mark.parametrize('change, message', [('grow', 'longer than its header says'),
                                             ('shrink', 'truncated')])
def test_a_file_that_changes_size_while_it_is_read_is_rejected(tmp_path, monkeypatch, when,
                                                               change, message):
  path = save(tmp_path, valid())
  state = {'header read': False, 'changed': False}

  def change_the_file():
    if not state['changed']:
      state['changed'] = True
      if change == 'grow':
        with open(path, 'ab') as f:
          f.write(b'\0' * 64)
      else:
        os.truncate(path, os.path.getsize(path) - 64)

  real_header = np.lib.format.read_array_header_1_0
  real_fstat = os.fstat

  def read_header(*args, **kwargs):
    header = real_header(*args, **kwargs)
    state['header read'] = True
    if when == 'after the header':
      change_the_file()
    return header

  def fstat(*args, **kwargs):  # the size check: the data is read after it
    result = real_fstat(*args, **kwargs)
    if when == 'after the size check' and state['header read']:
      change_the_file()
    return result
  monkeypatch.setattr(np.lib.format, 'read_array_header_1_0', read_header)
  monkeypatch.setattr(os, 'fstat', fstat)
  if when == 'after the size check':  # caught after reading, by what was actually read
    message = f'changed while it was read \\(it is {message} now\\)'
  with pytest.raises(errors.SubmissionFormatError, match=message):
    check(path)
  assert state['changed']


def test_run_attack_scores_the_array_it_validated(tmp_path, mnist_dir, monkeypatch):
  # A tiny model trained in seconds; ε = 1 so that any image in [0, 1] is valid.
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=30, num_checkpoint_steps=30,
                       training_batch_size=20, epsilon=0.0)
  training.train(MNIST, config, log=quiet)
  config = config.replace(epsilon=1.0)
  images = MNIST.load_data(config).test.images
  validated, rewritten = images, np.ascontiguousarray(images[::-1])

  def score(array):
    np.save(config.store_adv_path, array)
    accuracy = commands.run_attack(MNIST, config, log=quiet)
    return accuracy, np.load(config.pred_path)
  _, rewritten_predictions = score(rewritten)
  accuracy, validated_predictions = score(validated)
  assert not np.array_equal(rewritten_predictions, validated_predictions)  # else proves nothing

  real_load = submission.load

  def load_then_rewrite(path, *args):
    result = real_load(path, *args)
    with open(path, 'r+b') as f:  # in place, same inode, between validation and scoring
      f.seek(-rewritten.nbytes, os.SEEK_END)
      f.write(rewritten.tobytes())
    return result
  monkeypatch.setattr(submission, 'load', load_then_rewrite)
  assert commands.run_attack(MNIST, config, log=quiet) == accuracy
  np.testing.assert_array_equal(np.load(config.pred_path), validated_predictions)
  np.testing.assert_array_equal(np.load(config.store_adv_path), rewritten)  # it was rewritten
