"""CIFAR-10 data: the pickle format, the tfds fallback's ordering, the augmentation."""
import os
import pickle

import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge import data as cifar_data
from common import data
from common.errors import ChallengeError
from conftest import CIFAR_BATCH, CIFAR_TEST, make_cifar_arrays, write_cifar


def test_pickles_round_trip_in_the_original_order(cifar_dir):
  datasets = cifar_data.load(cifar_dir)
  train_x = np.concatenate([make_cifar_arrays(CIFAR_BATCH, seed=1 + i)[0] for i in range(5)])
  train_y = np.concatenate([make_cifar_arrays(CIFAR_BATCH, seed=1 + i)[1] for i in range(5)])
  test_x, test_y = make_cifar_arrays(CIFAR_TEST, seed=0)
  np.testing.assert_array_equal(datasets.train.images, train_x)
  np.testing.assert_array_equal(datasets.train.labels, train_y)
  np.testing.assert_array_equal(datasets.test.images, test_x)
  np.testing.assert_array_equal(datasets.test.labels, test_y)
  assert datasets.test.images.dtype == np.float32 and datasets.test.labels.dtype == np.int64
  assert datasets.label_names == cifar_data.LABEL_NAMES


def test_rows_are_read_as_red_green_blue_planes(tmp_path):
  # The official layout: 1024 red values (row-major), then 1024 green, then 1024 blue.
  row = np.concatenate([np.full(1024, 10), np.arange(1024) % 256, np.full(1024, 200)])
  with open(tmp_path / 'batch', 'wb') as f:
    pickle.dump({b'data': row[None].astype(np.uint8), b'labels': [4]}, f)
  images, labels = cifar_data.read_batch(str(tmp_path / 'batch'))
  assert images.shape == (1, 32, 32, 3) and labels.tolist() == [4]
  assert (images[0, :, :, 0] == 10).all() and (images[0, :, :, 2] == 200).all()
  assert images[0, 0, 5, 1] == 5 and images[0, 1, 0, 1] == 32  # row-major within a plane


def test_label_names_come_from_batches_meta(tmp_path):
  directory = write_cifar(str(tmp_path), per_batch=2, num_test=2)
  names = tuple(f'class {i}' for i in range(10))
  cifar_data.write_meta(os.path.join(directory, cifar_data.META_FILE), names)
  assert cifar_data.load(directory).label_names == names


class _Exploit:
  def __reduce__(self):
    return (os.system, ('touch pwned',))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  directory = write_cifar(str(tmp_path / 'data'), per_batch=2, num_test=2)
  with open(os.path.join(directory, cifar_data.TEST_FILE), 'wb') as f:
    pickle.dump({b'data': _Exploit(), b'labels': [0]}, f)
  with pytest.raises(ChallengeError, match='test_batch.*posix.system is not allowed'):
    cifar_data.load(directory)
  assert not os.path.exists(tmp_path / 'pwned')


@pytest.mark.parametrize('content, message', [
    (b'\x80\x04not a pickle', 'cannot read'),
    (pickle.dumps({b'data': np.zeros((2, 3072), np.float32), b'labels': [0, 1]}),
     'not a CIFAR-10 batch'),
    (pickle.dumps({b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 10]}),
     'not a CIFAR-10 batch'),
    (pickle.dumps({b'images': np.zeros((2, 3072), np.uint8)}), 'b"data" and b"labels"'),
])
def test_a_malformed_batch_is_an_error_naming_the_file(tmp_path, content, message):
  directory = write_cifar(str(tmp_path), per_batch=2, num_test=2)
  path = os.path.join(directory, 'data_batch_3')
  with open(path, 'wb') as f:
    f.write(content)
  with pytest.raises(ChallengeError, match=message) as error:
    cifar_data.load(directory)
  assert path in str(error.value)


@pytest.mark.versions
def test_missing_data_names_directory_files_and_the_tfds_error(tmp_path, monkeypatch):
  def offline(data_path):
    raise ConnectionError('network is unreachable')
  monkeypatch.setattr(cifar_data, 'load_with_tfds', offline)
  (tmp_path / 'data_batch_1').write_bytes(b'')
  with pytest.raises(ChallengeError) as error:
    cifar_data.load(str(tmp_path))
  message = str(error.value)
  assert str(tmp_path) in message and '--data_path' in message
  assert 'missing: data_batch_2, data_batch_3' in message and 'batches.meta' in message
  assert 'ConnectionError: network is unreachable' in message


def test_tfds_examples_are_put_back_in_the_original_order():
  ids = [b'test_00002', b'test_00000', b'test_00001']
  images = np.array([2, 0, 1])
  sorted_images, sorted_labels = cifar_data.in_original_order(ids, images, images * 10, 'test')
  assert sorted_images.tolist() == [0, 1, 2] and sorted_labels.tolist() == [0, 10, 20]
  with pytest.raises(ChallengeError, match='not 0..N-1'):
    cifar_data.in_original_order([b'test_00000', b'test_00002'], images[:2], images[:2], 'test')
  with pytest.raises(ChallengeError, match='unexpected'):
    cifar_data.in_original_order([b'train_00000'], images[:1], images[:1], 'test')


def _augment(images, seed):
  return cifar_data.augment(tf.constant(images), tf.constant(seed, tf.int64)).numpy()


def test_augmentation_is_a_random_crop_of_the_zero_padded_image_maybe_flipped():
  images = np.random.default_rng(0).uniform(1, 255, (64, 32, 32, 3)).astype(np.float32)
  out = _augment(images, [3, 4])
  assert out.shape == images.shape and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 255
  padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
  seen = set()
  for i in range(len(images)):
    matches = [(r, c, flip) for r in range(5) for c in range(5) for flip in (False, True)
               if np.array_equal(out[i], (lambda crop: crop[:, ::-1] if flip else crop)(
                   padded[i, r:r + 32, c:c + 32]))]
    assert len(matches) == 1, f'image {i} is not one crop/flip of its padded original'
    seen.add(matches[0])
  # Offsets and flips vary from image to image (64 images, 50 possibilities).
  assert len(seen) > 20 and {flip for _, _, flip in seen} == {False, True}


def test_augmentation_is_reproducible_and_varies_with_the_seed():
  images = np.random.default_rng(1).uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
  np.testing.assert_array_equal(_augment(images, [1, 2]), _augment(images, [1, 2]))
  assert not np.array_equal(_augment(images, [1, 2]), _augment(images, [1, 3]))


def test_training_batches_apply_the_augmentation(cifar_dir):
  train = cifar_data.load(cifar_dir).train
  x, y = next(iter(data.training_batches(train, 8, seed=5, augment=cifar_data.augment)))
  plain_x, plain_y = next(iter(data.training_batches(train, 8, seed=5)))
  np.testing.assert_array_equal(y, plain_y)  # same order, augmented pixels
  assert x.shape == (8, 32, 32, 3) and not np.array_equal(x, plain_x)
