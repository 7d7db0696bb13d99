"""Shared fixtures. Data is generated in the real on-disk formats; nothing touches the network.

Tests run alike on any host: in-process tests run on the CPU devices they mean (a host's
GPUs serve only tests marked `gpu`), TF_CONFIG is cleared unless a test sets it, ports for
worker processes are reserved without a race, and the real-data tests skip unless every file
they read is there.
"""
import contextlib
import fcntl
import json
import os
import random
import socket
import sys
import tempfile

import numpy as np
import pytest

from common import cli  # noqa: F401  (first: TensorFlow starts as in every command)
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import config as tf_config  # disable_op_determinism

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(REPO, '..', 'shared', 'data', 'mnist')
SHARED_CIFAR = os.path.join(REPO, '..', 'shared', 'data', 'cifar10')

# Two logical CPU devices, so that MirroredStrategy runs on any machine; on a GPU host, the
# first GPU as two logical GPUs too (tests marked `gpu`: MirroredStrategy on one physical
# GPU), each given a share of its memory so that the scripts that gpu tests start find room
# beside this process. Strict float32 (TF32 off), as every command. This must happen before
# TensorFlow initialises its devices, hence at import.
_cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
GPUS = tf.config.list_physical_devices('GPU')
if GPUS:
  tf.config.set_logical_device_configuration(
      GPUS[0], [tf.config.LogicalDeviceConfiguration(memory_limit=8192)] * 2)
tf.config.experimental.enable_tensor_float_32_execution(False)

from cifar10_challenge import data as cifar_data  # noqa: E402
from cifar10_challenge.challenge import CIFAR10  # noqa: E402
from common import checkpoints, distribute  # noqa: E402
from common.config import Config  # noqa: E402
from mnist_challenge import data as mnist_data  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402

TINY_TRAIN = mnist_data.VALIDATION_SIZE + 200  # 200 training images after the held-out 5000
TINY_TEST = 60
CIFAR_BATCH = 40  # images per data_batch_i: 200 training images
CIFAR_TEST = 50
NON_WIDE = [16, 16, 32, 64]


def pytest_collection_modifyitems(config, items):
  """Tests marked `gpu` skip, saying why, on a machine without one."""
  if not GPUS:
    skip = pytest.mark.skip(reason='needs a GPU (this machine has none)')
    for item in items:
      if item.get_closest_marker('gpu'):
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def host_independent(request, monkeypatch):
  """No test inherits the host's cluster (TF_CONFIG), and in-process tests not marked `gpu`
  run on the CPU: strategies see no GPU and ops are placed on /CPU:0, so "one device"
  means the CPU here on any host. (Subprocesses get CUDA_VISIBLE_DEVICES='' instead.) A
  test that turns on op determinism or TF32 (process-wide switches) leaves them off."""
  monkeypatch.delenv('TF_CONFIG', raising=False)
  if request.node.get_closest_marker('gpu'):
    yield
  else:
    monkeypatch.setattr(distribute, 'physical_gpus', lambda: 0)
    with tf.device('/CPU:0'):
      yield
  tf_config.disable_op_determinism()
  tf.config.experimental.enable_tensor_float_32_execution(False)


def _first_ephemeral_port():
  try:
    with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
      return int(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return 32768  # Linux's default


@pytest.fixture
def reserve_ports():
  """reserve(count, consecutive=False) -> ports for servers that processes of the test will
  open. No race with the system or other runs of this suite: the ports lie below the
  ephemeral range (where the kernel picks ports for bind(0) and outgoing connections), each
  is checked free, and a lock file per port, held until the test ends, keeps concurrent
  runs off it (a socket held open would keep TF's gRPC server, which refuses to share a
  port, off it too)."""
  lock_dir = os.path.join(tempfile.gettempdir(), 'madry-tf2-ports')
  os.makedirs(lock_dir, exist_ok=True)
  low = _first_ephemeral_port()
  first, last = (20000, low - 1) if low > 21000 else (10000, 19999)
  held = contextlib.ExitStack()

  def lock(port):
    fd = os.open(os.path.join(lock_dir, f'{port}.lock'), os.O_CREAT | os.O_RDWR)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(fd)
      return False
    held.callback(os.close, fd)
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', port))
      except OSError:
        return False
    return True

  def reserve(count, consecutive=False):
    rng = random.SystemRandom()
    ports = []
    for _ in range(1000):
      if consecutive:
        start = rng.randint(first, last - count)
        if all(lock(start + i) for i in range(count)):
          return list(range(start, start + count))
      else:
        port = rng.randint(first, last)
        if port not in ports and lock(port):
          ports.append(port)
          if len(ports) == count:
            return ports
    raise RuntimeError(f'no {count} free ports between {first} and {last}')

  with held:
    yield reserve


def require_shared_mnist():
  """../shared/data/mnist, or a skip naming what is missing (never a download)."""
  missing = [name for name in mnist_data.FILES.values()
             if not any(os.path.isfile(os.path.join(SHARED_MNIST, name + suffix))
                        for suffix in ('', '.gz'))]
  if missing:
    pytest.skip(f'real MNIST not complete in {SHARED_MNIST} (missing {", ".join(missing)})')
  return SHARED_MNIST


def require_shared_cifar():
  """../shared/data/cifar10 (its npz files), or a skip naming what is missing."""
  missing = [name for name in ('train.npz', 'test.npz')
             if not os.path.isfile(os.path.join(SHARED_CIFAR, name))]
  if missing:
    pytest.skip(f'real CIFAR-10 not complete in {SHARED_CIFAR} (missing {", ".join(missing)})')
  return SHARED_CIFAR


@pytest.fixture(autouse=True)
def fresh_module_rng(request):
  """A module's shared generator RNG is reseeded (RNG_SEED) before each of its tests: a
  test's data then do not depend on which tests ran before it, or whether any did."""
  module = request.module
  if hasattr(module, 'RNG_SEED'):
    module.RNG = np.random.default_rng(module.RNG_SEED)


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


def as_flags(settings):
  """{config key: value} as the scripts' flags (lists as JSON)."""
  return [arg for key, value in settings.items()
          for arg in (f'--{key}', json.dumps(value) if isinstance(value, list) else str(value))]


def check_attack_and_scores(challenge, config, attacked_stdout, scored_stdout):
  """pgd_attack.py's attack.npy and printed accuracies, and run_attack.py's printed accuracy
  and pred.npy, against the latest checkpoint of model_dir run here, in this process.
  `config`: the scripts' effective config (the shipped config.json and their flags)."""
  test = challenge.load_data(config).test.head(config.num_eval_examples)
  params = challenge.attack_params(config)
  adversarial = np.load(config.store_adv_path)
  assert adversarial.shape == test.images.shape and adversarial.dtype == np.float32
  assert adversarial.min() >= 0 and adversarial.max() <= challenge.pixel_max
  distance = np.abs(np.float64(adversarial) - test.images).reshape(len(test), -1).max(axis=1)
  # The ε-ball, up to the float32 rounding of its bounds (an ulp of the largest pixels).
  assert distance.max() <= params.epsilon + 1e-6 * challenge.pixel_max
  # Every example moved (the random start alone takes each far into the ball), so every
  # one the model gets wrong below was perturbed.
  assert params.random_start
  assert distance.min() > params.epsilon / 2

  model = challenge.build_model(config)
  step = checkpoints.restore_model(model, checkpoints.latest(config.model_dir))
  assert step == config.max_num_training_steps  # the final checkpoint

  def predict(images):
    return np.argmax(model(images, training=False).numpy(), axis=1)
  natural_accuracy = np.mean(predict(test.images) == test.labels)
  predictions = predict(adversarial)
  adversarial_accuracy = np.mean(predictions == test.labels)
  assert (f'natural accuracy {100 * natural_accuracy:.2f}%, adversarial accuracy '
          f'{100 * adversarial_accuracy:.2f}% (attack in {config.eval_precision})'
          in attacked_stdout.splitlines())
  assert scored_stdout.splitlines()[0] == f'Accuracy: {100 * adversarial_accuracy:.2f}%'
  saved = np.load(config.pred_path)
  assert saved.dtype == np.int64
  np.testing.assert_array_equal(saved, predictions)


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
