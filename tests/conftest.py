"""Shared fixtures. Data is generated in the real on-disk formats; nothing touches the network."""
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(REPO, '..', 'shared', 'data', 'mnist')
SHARED_CIFAR = os.path.join(REPO, '..', 'shared', 'data', 'cifar10')

# Two logical CPU devices, so that MirroredStrategy runs on this GPU-less machine. This must
# happen before TensorFlow initialises its devices, hence at import.
_cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

from cifar10_challenge import data as cifar_data  # noqa: E402
from cifar10_challenge.challenge import CIFAR10  # noqa: E402
from common.config import Config  # noqa: E402
from mnist_challenge import data as mnist_data  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402

TINY_TRAIN = mnist_data.VALIDATION_SIZE + 200  # 200 training images after the held-out 5000
TINY_TEST = 60
CIFAR_BATCH = 40  # images per data_batch_i: 200 training images
CIFAR_TEST = 50
NON_WIDE = [16, 16, 32, 64]


def quiet(*args, **kwargs):
  """A `log` that prints nothing."""


def make_mnist_arrays(num_train, num_test, seed=0):
  """Digits drawn as class-dependent blobs plus noise: learnable, and uint8 like MNIST."""
  rng = np.random.default_rng(seed)

  def draw(n):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.int32)
    for i, label in enumerate(labels):
      row, col = 2 + 2 * label, 4 + label
      images[i, row:row + 6, col:col + 8] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels

  return draw(num_train), draw(num_test)


def write_mnist(directory, num_train=TINY_TRAIN, num_test=TINY_TEST, gz=True, seed=0):
  os.makedirs(directory, exist_ok=True)
  (train_x, train_y), (test_x, test_y) = make_mnist_arrays(num_train, num_test, seed)
  suffix = '.gz' if gz else ''
  for name, array in (('train_images', train_x), ('train_labels', train_y),
                      ('test_images', test_x), ('test_labels', test_y)):
    mnist_data.write_idx(os.path.join(directory, mnist_data.FILES[name] + suffix), array)
  return directory


@pytest.fixture(scope='session')
def mnist_dir(tmp_path_factory):
  return write_mnist(str(tmp_path_factory.mktemp('mnist_idx')))


def tiny_config(tmp_path, data_dir, **changes) -> Config:
  """The MNIST defaults scaled down to seconds on a CPU."""
  settings = dict(model_dir=str(tmp_path / 'model'), data_dir=data_dir,
                  max_num_training_steps=4, num_output_steps=2, num_summary_steps=2,
                  num_checkpoint_steps=2, training_batch_size=8, num_eval_examples=TINY_TEST,
                  eval_batch_size=20, k=3, a=0.05, store_adv_path=str(tmp_path / 'attack.npy'),
                  pred_path=str(tmp_path / 'pred.npy'))
  settings.update(changes)
  return MNIST.load_config(MNIST.default_config_path, settings)


def run_script(args, cwd=REPO, timeout=300):
  """Runs a script in a fresh interpreter; returns the CompletedProcess."""
  import subprocess
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  return subprocess.run([sys.executable] + list(args), cwd=cwd, env=env, timeout=timeout,
                        capture_output=True, text=True)


def make_cifar_arrays(n, seed=0):
  """uint8 (n, 32, 32, 3) images with a class-dependent bright square, and labels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.int64)
  images = rng.integers(0, 100, (n, 32, 32, 3))
  for i, label in enumerate(labels):
    row, col = 2 + 2 * (label % 5), 2 + 12 * (label // 5)
    images[i, row:row + 10, col:col + 10, label % 3] += 150
  return np.clip(images, 0, 255).astype(np.uint8), labels


def write_cifar(directory, per_batch=CIFAR_BATCH, num_test=CIFAR_TEST, seed=0):
  """The five training batches, test_batch and batches.meta, as python pickles."""
  os.makedirs(directory, exist_ok=True)
  for i, name in enumerate(cifar_data.TRAIN_FILES):
    cifar_data.write_batch(os.path.join(directory, name),
                           *make_cifar_arrays(per_batch, seed=seed + 1 + i))
  cifar_data.write_batch(os.path.join(directory, cifar_data.TEST_FILE),
                         *make_cifar_arrays(num_test, seed=seed))
  cifar_data.write_meta(os.path.join(directory, cifar_data.META_FILE))
  return directory


@pytest.fixture(scope='session')
def cifar_dir(tmp_path_factory):
  return write_cifar(str(tmp_path_factory.mktemp('cifar_pickles')))


def tiny_cifar_config(tmp_path, data_path, **changes) -> Config:
  """The CIFAR-10 defaults scaled down to seconds on a CPU: the non-wide model."""
  settings = dict(model_dir=str(tmp_path / 'model'), data_path=data_path, filters=NON_WIDE,
                  max_num_training_steps=3, num_output_steps=2, num_summary_steps=2,
                  num_checkpoint_steps=2, training_batch_size=8,
                  num_eval_examples=CIFAR_TEST, eval_batch_size=25, num_steps=2,
                  store_adv_path=str(tmp_path / 'attack.npy'),
                  pred_path=str(tmp_path / 'pred.npy'))
  settings.update(changes)
  return CIFAR10.load_config(CIFAR10.default_config_path, settings)
