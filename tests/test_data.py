"""MNIST IDX files, the original split, and the training pipeline."""

import numpy as np
import pytest
import tensorflow as tf

from common import data
from common.errors import ChallengeError
from conftest import TINY_TEST, TINY_TRAIN, make_mnist_arrays, require_shared_mnist, write_mnist
from mnist_challenge import data as mnist_data


@pytest.mark.parametrize('suffix', ['', '.gz'])
@pytest.mark.parametrize('dtype', [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
  array = (np.random.default_rng(0).uniform(0, 200, (5, 3, 4))).astype(dtype)
  path = str(tmp_path / ('a.idx' + suffix))
  mnist_data.write_idx(path, array)
  back = mnist_data.read_idx(path)
  assert back.dtype == array.dtype
  np.testing.assert_array_equal(back, array)


def test_real_format_header(tmp_path):
  path = str(tmp_path / 'labels')
  mnist_data.write_idx(path, np.arange(3, dtype=np.uint8))
  assert open(path, 'rb').read() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 0, 1, 2])


def test_truncated_and_foreign_files_are_named(tmp_path):
  path = str(tmp_path / 'train-images-idx3-ubyte')
  mnist_data.write_idx(path, np.zeros((4, 28, 28), np.uint8))
  with open(path, 'r+b') as f:
    f.truncate(100)
  with pytest.raises(ChallengeError, match='train-images-idx3-ubyte is truncated'):
    mnist_data.read_idx(path)
  with open(path, 'wb') as f:
    f.write(b'PK\x03\x04 not idx')
  with pytest.raises(ChallengeError, match='not an IDX file'):
    mnist_data.read_idx(path)


def test_load_holds_out_the_first_5000_training_images(mnist_dir):
  (train_x, train_y), (test_x, test_y) = make_mnist_arrays(TINY_TRAIN, TINY_TEST)
  datasets = mnist_data.load(mnist_dir)
  assert len(datasets.validation) == 5000 and len(datasets.train) == TINY_TRAIN - 5000
  scale = np.float32(1.0 / 255.0)  # the TF1 tutorial loader's arithmetic, bit for bit
  np.testing.assert_array_equal(datasets.train.images,
                                train_x[5000:].reshape(-1, 784).astype(np.float32) * scale)
  np.testing.assert_array_equal(datasets.validation.labels, train_y[:5000])
  np.testing.assert_array_equal(datasets.test.images,
                                test_x.reshape(-1, 784).astype(np.float32) * scale)
  np.testing.assert_array_equal(datasets.test.labels, test_y)  # original order
  assert datasets.test.images.dtype == np.float32 and datasets.test.labels.dtype == np.int64


def test_uncompressed_files_load_too(tmp_path):
  directory = write_mnist(str(tmp_path), gz=False)
  assert len(mnist_data.load(directory).test) == TINY_TEST


@pytest.mark.versions
def test_missing_data_names_directory_files_and_the_download_error(tmp_path, monkeypatch):
  def offline(data_dir):
    raise ConnectionError('network is unreachable')
  monkeypatch.setattr(mnist_data, 'download_with_tfds', offline)
  with pytest.raises(ChallengeError) as error:
    mnist_data.load(str(tmp_path))
  message = str(error.value)
  assert str(tmp_path) in message
  for name in mnist_data.FILES.values():
    assert name in message
  assert 'ConnectionError: network is unreachable' in message and '--data_dir' in message


def test_training_batches_cover_each_epoch_once_and_resume_exactly():
  split = data.Split(np.arange(10, dtype=np.float32)[:, None], np.arange(10, dtype=np.int64))
  stream = [y.numpy().tolist() for _, y in data.training_batches(split, 4, seed=7).take(10)]
  flat = sum(stream, [])
  for epoch in range(4):  # each epoch is a permutation: no example repeated or dropped
    assert sorted(flat[10 * epoch:10 * epoch + 10]) == list(range(10))
  assert flat[:10] != flat[10:20]  # reshuffled every epoch
  resumed = [y.numpy().tolist() for _, y in
             data.training_batches(split, 4, seed=7, start_step=3).take(7)]
  assert resumed == stream[3:]
  other_seed = [y.numpy().tolist() for _, y in data.training_batches(split, 4, seed=8).take(3)]
  assert other_seed != stream[:3]


@pytest.mark.parametrize('workers, local_replicas', [(1, 2), (2, 1), (2, 2), (4, 1)])
def test_workers_shares_are_the_global_batches_rows_without_duplicates(workers,
                                                                       local_replicas):
  split = data.Split(np.arange(12, dtype=np.float32)[:, None], np.arange(12, dtype=np.int64))
  global_batch, steps = 8, 6  # 4 epochs' worth; batches span epochs
  replica_batch = global_batch // (workers * local_replicas)
  expected = [y.numpy().tolist() for _, y in
              data.training_batches(split, global_batch, seed=5).take(steps)]
  shares = []
  for worker in range(workers):
    rows = replica_batch * local_replicas
    stream = data.replica_batches(data.training_batches(split, global_batch, seed=5),
                                  worker * rows, rows, replica_batch)
    batches = [(x.numpy(), y.numpy()) for x, y in stream.take(steps * local_replicas)]
    assert all(x.shape == (replica_batch, 1) and y.shape == (replica_batch,)
               for x, y in batches)
    assert all(np.array_equal(x[:, 0], y) for x, y in batches)  # images stay with labels
    shares.append([[y.tolist() for _, y in batches[s * local_replicas:(s + 1) * local_replicas]]
                   for s in range(steps)])
  for step in range(steps):
    # Replica r of worker w holds rows (w·L + r)·b ..: in order, they are the global batch.
    joined = sum((sum(share[step], []) for share in shares), [])
    assert joined == expected[step]
  flat = sum(expected, [])
  for epoch in range(len(flat) // 12):  # no example repeated or dropped within an epoch
    assert sorted(flat[12 * epoch:12 * (epoch + 1)]) == list(range(12))


@pytest.mark.realdata
def test_real_mnist_matches_its_published_statistics():
  datasets = mnist_data.load(require_shared_mnist())
  assert len(datasets.train) == 55000 and len(datasets.test) == 10000
  assert np.bincount(datasets.test.labels).tolist() == [
      980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  all_train = np.concatenate([datasets.validation.labels, datasets.train.labels])
  assert np.bincount(all_train).tolist() == [
      5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  assert datasets.test.images.min() == 0.0 and datasets.test.images.max() == 1.0


def test_augmentation_runs_per_batch_with_a_reproducible_seed():
  split = data.Split(np.zeros((6, 1), np.float32), np.arange(6, dtype=np.int64))
  noise = lambda x, seed: x + tf.random.stateless_uniform(tf.shape(x), seed)
  first = [x.numpy() for x, _ in data.training_batches(split, 3, 1, augment=noise).take(4)]
  again = [x.numpy() for x, _ in data.training_batches(split, 3, 1, augment=noise).take(4)]
  np.testing.assert_array_equal(first, again)
  assert len({float(x[0, 0]) for x in first}) == 4  # a different draw for every batch
  resumed = [x.numpy() for x, _ in
             data.training_batches(split, 3, 1, start_step=2, augment=noise).take(2)]
  np.testing.assert_array_equal(resumed, first[2:])
