"""Shared fixtures. Data is generated in the real on-disk formats; nothing touches the network."""
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(REPO, '..', 'shared', 'data', 'mnist')

# Two logical CPU devices, so that MirroredStrategy runs on this GPU-less machine. This must
# happen before TensorFlow initialises its devices, hence at import.
_cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

from common.config import Config  # noqa: E402
from mnist_challenge import data as mnist_data  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402

TINY_TRAIN = mnist_data.VALIDATION_SIZE + 200  # 200 training images after the held-out 5000
TINY_TEST = 60


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
