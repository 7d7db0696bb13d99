"""How the commands run TensorFlow: XLA (jit_compile) agreeing with the uncompiled steps,
seeded evaluations independent of batch size and replicas, op determinism, strict float32
(TF32 off), the line that says what runs where, a quiet start, oneDNN on x86 CPUs, failing
fast offline, and (on a GPU host, marked `gpu`) train.py and eval.py sharing one GPU."""
import dataclasses
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from cifar10_challenge import data as cifar_data
from cifar10_challenge.challenge import CIFAR10
from common import checkpoints, cli, commands, distribute, precision, runtime, training
from common.errors import ChallengeError
from common.evaluation import Evaluator
from conftest import (REPO, TINY_TEST, make_cifar_arrays, quiet, tiny_cifar_config, tiny_config,
                      write_mnist)
from mnist_challenge import data as mnist_data
from mnist_challenge.challenge import MNIST


def flat(variables):
  return np.concatenate([np.ravel(v.numpy()) for v in variables])


def two_cpus():
  return distribute.local_strategy(['/cpu:0', '/cpu:1'])


# --- the keys ------------------------------------------------------------------------------

def test_jit_compile_and_deterministic_keys(tmp_path):
  for challenge in (MNIST, CIFAR10):
    config = challenge.load_config()
    assert (config.jit_compile, config.deterministic) == ('auto', False)
  assert MNIST.load_config(overrides={'jit_compile': True}).jit_compile == 'true'
  assert MNIST.load_config(overrides={'jit_compile': False}).jit_compile == 'false'
  path = tmp_path / 'config.json'
  path.write_text('{"jit_compile": true}')
  assert MNIST.load_config(str(path)).jit_compile == 'true'
  with pytest.raises(ChallengeError, match='"jit_compile" must be one of auto, true, false, '
                                           'found "always"'):
    MNIST.load_config(overrides={'jit_compile': 'always'})
  # auto: on where the devices are GPUs (here, pinned to the CPU: off).
  default = tf.distribute.get_strategy()
  assert runtime.device_kind(default) == 'CPU' and runtime.device_kind(two_cpus()) == 'CPU'
  assert not runtime.jit_compile('auto', default)
  assert runtime.jit_compile('true', default) and not runtime.jit_compile('false', default)


def test_the_line_that_says_what_runs_where():
  assert runtime.describe(tf.distribute.get_strategy(), 'float32', False, False) == (
      'strategy: one device, 1 worker, 1 replica, CPU; precision float32, XLA off, '
      'deterministic off')
  assert runtime.describe(two_cpus(), 'mixed_bfloat16', True, True) == (
      'strategy: MirroredStrategy, 1 worker, 2 replicas, CPU; precision mixed_bfloat16, '
      'XLA on, deterministic on')


# --- XLA agrees with the uncompiled steps --------------------------------------------------

def trained(challenge, config, jit, strategy=None):
  trainer = training.Trainer(challenge, config.replace(
      model_dir=os.path.join(config.model_dir, f'{jit}-{strategy is not None}'),
      jit_compile=jit), strategy=strategy, log=quiet)
  initial = flat(trainer.model.weights)
  trainer.run()
  return trainer, initial


@pytest.mark.versions
def test_xla_training_equals_the_uncompiled_steps_mnist(tmp_path, mnist_dir):
  # Random starts on: they are drawn outside XLA (whose generators differ), so both runs
  # attack from the same points. Measured: 0.006% of the change after 2 steps.
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=2)
  plain, initial = trained(MNIST, config, 'false')
  compiled, _ = trained(MNIST, config, 'true')
  assert compiled.jit_compile and not plain.jit_compile
  assert compiled.train_step.experimental_get_tracing_count() == 1
  change = np.linalg.norm(flat(plain.model.weights) - initial)
  assert np.linalg.norm(flat(compiled.model.weights) - flat(plain.model.weights)) < 1e-3 * change
  # Under MirroredStrategy (the update and the replicas' exchange stay outside XLA).
  mirrored, _ = trained(MNIST, config, 'true', two_cpus())
  assert np.linalg.norm(flat(mirrored.model.weights) - flat(plain.model.weights)) < 1e-3 * change


@pytest.mark.versions
def test_xla_training_step_with_batch_norm_follows_the_uncompiled_one(tmp_path, cifar_dir):
  # XLA computes batch norm with other kernels than TF's fused one. Without the attack the
  # step agrees to rounding; with it, PGD's sign steps turn the rounding into a few whole
  # steps (measured: 96.5% of the pixels equal), and a fresh network's batch-norm gradients
  # on 8 images are sensitive to those.
  x, y = make_cifar_arrays(8, seed=3)
  batch = (tf.constant(x.astype(np.float32)), tf.constant(y))
  for num_steps in (0, 2):
    config = tiny_cifar_config(tmp_path, cifar_dir, num_steps=num_steps)
    results = {}
    for jit in ('false', 'true'):
      trainer = training.Trainer(CIFAR10, config.replace(jit_compile=jit), log=quiet)
      _, _, x_adv = trainer.train_step(batch)
      results[jit] = (x_adv.numpy(), flat(trainer.optimizer.accumulators),
                      [v.numpy() for v in trainer.model.non_trainable_variables])
    (a_adv, a_grad, a_state), (b_adv, b_grad, b_state) = results['false'], results['true']
    # BN moving averages, updated once in both (over slightly different examples when
    # the attack ran).
    tolerance = 1e-4 if num_steps == 0 else 1e-3
    for a, b in zip(a_state, b_state):
      np.testing.assert_allclose(b, a, rtol=10 * tolerance, atol=tolerance)
    if num_steps == 0:
      assert a_grad @ b_grad / np.linalg.norm(a_grad) / np.linalg.norm(b_grad) > 0.9999
    else:
      assert np.mean(a_adv == b_adv) > 0.9


@pytest.mark.versions
def test_xla_training_in_float16_keeps_the_loss_scaling(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, precision='mixed_float16', max_num_training_steps=12,
                       num_checkpoint_steps=12, num_output_steps=12, num_summary_steps=12)
  plain, _ = trained(MNIST, config, 'false')
  compiled, _ = trained(MNIST, config, 'true')
  applied = int(plain.optimizer.iterations.numpy())
  assert 0 < applied < 12  # some steps overflowed and were skipped
  assert int(compiled.optimizer.iterations.numpy()) == applied
  assert float(compiled.updater.dynamic_scale.numpy()) == float(plain.updater.dynamic_scale.numpy())
  assert np.isfinite(flat(compiled.model.weights)).all()


@pytest.fixture(scope='module')
def model_and_test(tmp_path_factory, mnist_dir):
  tmp_path = tmp_path_factory.mktemp('runtime')
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=20, training_batch_size=20,
                       epsilon=0.0)
  training.train(MNIST, config, log=quiet)
  model = MNIST.build_model(config)
  checkpoints.restore_model(model, checkpoints.latest(config.model_dir))
  params = dataclasses.replace(MNIST.attack_params(config), epsilon=0.3, num_steps=5,
                               step_size=0.05)
  return model, MNIST.load_data(config).test, params


def test_xla_evaluation_equals_the_uncompiled_one(model_and_test):
  model, test, params = model_and_test
  for options in ({}, {'restarts': 3}, {'target_rule': 'random'}):
    plain = Evaluator(model, params, seed=4, **options).attack(test, 25, keep_adversarial=True)
    evaluator = Evaluator(model, params, seed=4, jit_compile=True, **options)
    compiled = evaluator.attack(test, 25, keep_adversarial=True)
    assert np.mean(plain.adversarial == compiled.adversarial) > 0.99, options
    assert abs(plain.adv_correct - compiled.adv_correct) <= 1, options
    assert plain.nat_correct == compiled.nat_correct
    # 60 examples in batches of 25: two shapes, each traced once, also on a second pass.
    evaluator.attack(test, 25)
    assert evaluator._attack_rows.experimental_get_tracing_count() <= 2


# --- seeded evaluations do not depend on batch size or replicas ----------------------------

@pytest.mark.parametrize('options', [{}, {'restarts': 3}, {'target_rule': 'random'}],
                         ids=['pgd', 'restarts', 'targeted'])
def test_a_seeded_evaluation_does_not_depend_on_batch_size_or_replicas(model_and_test, options):
  model, test, params = model_and_test
  reference = Evaluator(model, params, seed=8, **options).attack(test, 25, keep_adversarial=True)
  for strategy, batch_size in ((None, 20), (two_cpus(), 25), (two_cpus(), 16)):
    with (strategy or tf.distribute.get_strategy()).scope():
      other = Evaluator(model, params, strategy, seed=8, **options).attack(
          test, batch_size, keep_adversarial=True)
    np.testing.assert_allclose(other.adversarial, reference.adversarial, rtol=0, atol=1e-6)
    assert other.adv_correct == reference.adv_correct
  different = Evaluator(model, params, seed=9, **options).attack(test, 25, keep_adversarial=True)
  assert not np.array_equal(different.adversarial, reference.adversarial)


# --- strict float32 -----------------------------------------------------------------------

@pytest.mark.versions
def test_float32_is_strict_and_tf32_is_opt_in(tmp_path, mnist_dir):
  tf.config.experimental.enable_tensor_float_32_execution(True)  # TensorFlow's default
  runtime.start()
  assert not tf.config.experimental.tensor_float_32_execution_enabled()
  training.Trainer(MNIST, tiny_config(tmp_path, mnist_dir, precision='tf32'), log=quiet)
  assert tf.config.experimental.tensor_float_32_execution_enabled()
  model = MNIST.build_model(None)
  assert precision.Twin(model, None, 'tf32')._runner is model  # float32 tensors
  training.Trainer(MNIST, tiny_config(tmp_path, mnist_dir), log=quiet)
  assert not tf.config.experimental.tensor_float_32_execution_enabled()
  lines = []
  precision.announce_attack_precision('tf32', lines.append)
  assert 'scoring runs in TF32 too' in lines[0]


# --- the scripts' output -------------------------------------------------------------------

@pytest.mark.versions
@pytest.mark.slow
def test_scripts_say_what_runs_where_and_nothing_of_tensorflows_start(tmp_path, mnist_dir):
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # the scripts' default, not the suite's
  flags = ['--data_dir', mnist_dir, '--model_dir', str(tmp_path / 'model'),
           '--max_num_training_steps', '2', '--num_checkpoint_steps', '1',
           '--training_batch_size', '10', '--k', '2', '--num_eval_examples', '20',
           '--store_adv_path', str(tmp_path / 'attack.npy')]
  for script in ('train.py', 'pgd_attack.py'):
    result = subprocess.run([sys.executable, os.path.join('mnist_challenge', script)] + flags,
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        'strategy: one device, 1 worker, 1 replica, CPU; precision float32, XLA off, '
        'deterministic off'), result.stdout
    # No oneDNN/CPU-feature notes, no cuInit "failure", no "Sharding callback duration".
    assert result.stderr == '', result.stderr


@pytest.mark.versions
@pytest.mark.slow
@pytest.mark.skipif(not cli.ON_X86, reason='oneDNN is turned on on x86 CPUs only')
def test_the_commands_use_onednn_on_every_x86_cpu_unless_told_not_to():
  probe = ('from common import cli; import tensorflow; '
           'from tensorflow.python.util import _pywrap_util_port as port; '
           'print(port.IsMklEnabled())')
  for setting, expected in ((None, 'True'), ('0', 'False')):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='3')
    env.pop('TF_ENABLE_ONEDNN_OPTS', None)
    if setting is not None:
      env['TF_ENABLE_ONEDNN_OPTS'] = setting
    result = subprocess.run([sys.executable, '-c', probe], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.split()[-1:] == [expected], (setting, result.stdout, result.stderr)


# --- offline ------------------------------------------------------------------------------

@pytest.mark.versions
def test_an_unreachable_host_fails_fast_with_the_clear_error(tmp_path, monkeypatch,
                                                             reserve_ports):
  for url in ('http://no-such-host.invalid/mnist/',
              f'http://127.0.0.1:{reserve_ports(1)[0]}/mnist/'):
    monkeypatch.setattr(mnist_data, 'download_url', lambda url=url: url)
    began = time.monotonic()
    with pytest.raises(ChallengeError, match=r'MNIST not found in .*downloading them with '
                                             r'tensorflow_datasets failed \(OSError: '):
      mnist_data.load(str(tmp_path / 'mnist'))
    assert time.monotonic() - began < 15
  monkeypatch.setattr(cifar_data, 'TFDS_URL', 'http://no-such-host.invalid/cifar.tar.gz')
  began = time.monotonic()
  with pytest.raises(ChallengeError, match='CIFAR-10 not found .*no-such-host.invalid'):
    cifar_data.load(str(tmp_path / 'cifar'))
  assert time.monotonic() - began < 15


@pytest.mark.versions
def test_a_slow_network_that_answers_still_downloads(tmp_path, monkeypatch):
  served = write_mnist(str(tmp_path / 'served'))

  class Slow(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
      time.sleep(1.5)  # slower to answer than a connection takes
      super().do_GET()

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                           functools.partial(Slow, directory=served))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    monkeypatch.setattr(mnist_data, 'download_url',
                        lambda: f'http://127.0.0.1:{server.server_address[1]}/')
    datasets = mnist_data.load(str(tmp_path / 'downloaded'))
  finally:
    server.shutdown()
  assert len(datasets.test) == TINY_TEST
  np.testing.assert_array_equal(datasets.test.images,
                                mnist_data.load(served).test.images)


# --- on a GPU ------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.slow
def test_train_and_eval_share_one_gpu(tmp_path, cifar_dir):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('CUDA_VISIBLE_DEVICES', None)
  flags = [f'--data_path={cifar_dir}', f'--model_dir={tmp_path / "model"}',
           '--filters=[16, 16, 32, 64]', '--max_num_training_steps=300',
           '--num_checkpoint_steps=50', '--training_batch_size=32', '--num_eval_examples=50',
           '--eval_batch_size=25', '--num_steps=2', '--eval_on_cpu=false']
  evaluator = subprocess.Popen([sys.executable, 'cifar10_challenge/eval.py',
                                '--poll_seconds=0.5'] + flags, cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    trainer = subprocess.run([sys.executable, 'cifar10_challenge/train.py'] + flags, cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=600)
    assert trainer.returncode == 0, trainer.stderr
    assert ', GPU; ' in trainer.stdout.splitlines()[0]
    time.sleep(5)
    evaluator.terminate()
    out, err = evaluator.communicate(timeout=120)
  finally:
    evaluator.kill()
  assert evaluator.returncode == 143, err
  assert 'Out of memory' not in err and 'No algorithm worked' not in err
  assert ', GPU; ' in out.splitlines()[0]
  assert out.count('adversarial: ') >= 2, out


@pytest.mark.gpu
def test_xla_on_a_gpu_equals_the_uncompiled_steps(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=2, deterministic=True)
  with tf.device('/GPU:0'):
    plain, initial = trained(MNIST, config, 'false')
    compiled, _ = trained(MNIST, config, 'true')
  change = np.linalg.norm(flat(plain.model.weights) - initial)
  assert np.linalg.norm(flat(compiled.model.weights) - flat(plain.model.weights)) < 1e-3 * change


@pytest.mark.gpu
def test_mirrored_over_two_logical_gpus_equals_one_device(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=2, deterministic=True,
                       jit_compile='false')
  with tf.device('/GPU:0'):
    one, _ = trained(MNIST, config, 'false')
  gpus = [device.name for device in tf.config.list_logical_devices('GPU')][:2]
  two, _ = trained(MNIST, config, 'false', distribute.local_strategy(gpus))
  assert two.strategy.num_replicas_in_sync == 2
  for a, b in zip(one.optimizer._momentums, two.optimizer._momentums):  # the gradients
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-5 * np.abs(a.numpy()).max())
