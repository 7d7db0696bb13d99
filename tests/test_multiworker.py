"""train.py across hosts: two worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy.

Deselect with `-m "not multiworker"`; CI runs them.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from common import checkpoints, training
from conftest import REPO, quiet, tiny_config
from mnist_challenge.challenge import MNIST

pytestmark = [pytest.mark.multiworker, pytest.mark.slow]

TRAIN = os.path.join('mnist_challenge', 'train.py')
TIMEOUT = 150  # seconds for a whole cluster run; one takes about 10 here
# docs/multihost.md: a dead worker stops the others within 20 seconds (0.7 to 9 s measured).
LOST_WORKER_SECONDS = 20


def tf_config_environs(ports):
  """TF_CONFIG of each of len(ports) workers on 127.0.0.1."""
  cluster = {'worker': [f'127.0.0.1:{port}' for port in ports]}
  return [{'TF_CONFIG': json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': i}})}
          for i in range(len(ports))]


def slurm_environs(count):
  """SLURM's variables for `srun -n <count>` on one node, called localhost."""
  return [{'SLURM_PROCID': str(i), 'SLURM_STEP_NUM_TASKS': str(count),
           'SLURM_STEP_NODELIST': 'localhost', 'SLURM_STEP_TASKS_PER_NODE': str(count)}
          for i in range(count)]


def flags(config):
  """The tiny config as train.py flags."""
  names = ('data_dir', 'model_dir', 'max_num_training_steps', 'num_output_steps',
           'num_summary_steps', 'num_checkpoint_steps', 'training_batch_size', 'k', 'a')
  return [f'--{name}={config[name]}' for name in names]


class Workers:
  """One train.py process per worker, started in their own sessions; always reaped."""

  def __init__(self, tmp_path, per_worker_args, environs):
    self.processes, self.files, self.tmpdirs = [], [], []
    for i, (args, environ) in enumerate(zip(per_worker_args, environs)):
      tmpdir = tmp_path / f'worker{i}-tmp'
      tmpdir.mkdir(exist_ok=True)
      self.tmpdirs.append(tmpdir)
      self.files.append([tmp_path / f'worker{i}.{name}' for name in ('out', 'err')])
      env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='',
                 TMPDIR=str(tmpdir))
      env.pop('TF_CONFIG', None)
      env.update(environ)
      with open(self.files[-1][0], 'w') as out, open(self.files[-1][1], 'w') as err:
        self.processes.append(subprocess.Popen(
            [sys.executable, TRAIN] + args, cwd=REPO, env=env, stdout=out, stderr=err,
            start_new_session=True))

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    for process in self.processes:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

  def wait(self, timeout=TIMEOUT):
    """[(exit code, stdout, stderr)] once all have exited (at most `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    for process in self.processes:
      process.wait(timeout=max(1, deadline - time.monotonic()))
    return [(p.returncode,) + self.output(i) for i, p in enumerate(self.processes)]

  def output(self, i):
    return tuple(path.read_text() for path in self.files[i])


def run_workers(tmp_path, per_worker_args, environs):
  """Runs the workers to the end; returns their results and TMPDIRs."""
  with Workers(tmp_path, per_worker_args, environs) as workers:
    return workers.wait(), workers.tmpdirs


def checkpoint_weights(path):
  model = MNIST.build_model(MNIST.load_config())
  step = checkpoints.restore_model(model, path)
  return step, [w.numpy() for w in model.weights]


def checkpoint_first_moments(path, config):
  """Adam's first-moment slots saved at `path`: a decaying sum of 0.1 × the gradients, so
  they show the gradients' scale (the weights after Adam's first steps hardly do)."""
  trainer = training.Trainer(MNIST, config, log=quiet)
  checkpoints.restore(trainer.checkpoint, path, 'training state')
  return moments(trainer)


def moments(trainer):
  return [m.numpy() for m in trainer.optimizer._momentums]  # pylint: disable=protected-access


def assert_same_gradients(a, b):
  """Per variable within 5%: the summation order differs, and over steps a few attack signs
  flip (measured: at most 0.0003% after 4 steps, 1.7% after 6); gradients averaged over
  the workers instead of summed, or summed over one worker's rows only, are 50% off."""
  worst = max(np.linalg.norm(x - y) / np.linalg.norm(x) for x, y in zip(a, b))
  print(f'first moments differ by at most {100 * worst:.4f}% of a variable\'s')
  assert worst < 0.05


def assert_trained_alike(a, b, initial):
  """a and b agree to within 2% of how far training moved the weights. Gradients are summed
  over two processes instead of over one device's batch, so the float summation order
  differs, and over steps a few attack signs and Adam steps flip (measured: 0.001% of the
  change after 4 steps, 0.3% after 6)."""
  a, b, initial = (np.concatenate([w.ravel() for w in ws]) for ws in (a, b, initial))
  fraction = np.linalg.norm(a - b) / np.linalg.norm(b - initial)
  print(f'weights differ by {100 * fraction:.4f}% of how far training moved them')
  assert fraction < 0.02


@pytest.mark.versions
def test_two_workers_train_as_one_process_would_and_resume(tmp_path, mnist_dir, reserve_ports):
  config = tiny_config(tmp_path / 'cluster', mnist_dir, max_num_training_steps=4)
  results, tmpdirs = run_workers(tmp_path, [flags(config)] * 2, tf_config_environs(reserve_ports(2)))
  for code, out, err in results:
    assert code == 0, err[-3000:]
  (_, chief_out, _), (_, other_out, _) = results
  assert chief_out.splitlines()[0] == ('strategy: MultiWorkerMirroredStrategy, 2 workers, '
                                       '2 replicas, CPU; precision float32, XLA off, '
                                       'deterministic off')
  assert 'Step 2:' in chief_out and 'Finished at step 4' in chief_out
  assert other_out.strip() == (f'worker 1: training with the chief, which writes '
                               f'{config.model_dir} and reports progress')
  # Only the chief wrote: its checkpoints, one config, one events file; worker 1's scratch
  # checkpoints are gone.
  written = sorted(os.listdir(config.model_dir))
  assert [n for n in written if n.endswith('.index')] == [
      'checkpoint-0.index', 'checkpoint-2.index', 'checkpoint-4.index']
  assert len([n for n in written if n.startswith('events.out.tfevents')]) == 1
  assert 'config.json' in written
  assert all(not os.listdir(tmpdir) for tmpdir in tmpdirs)

  # The same global batches in one process (one device): the same weights.
  single = tiny_config(tmp_path / 'single', mnist_dir, max_num_training_steps=4)
  reference = training.Trainer(MNIST, single, log=quiet)
  initial = [w.numpy() for w in reference.model.weights]
  reference.run()
  step, trained = checkpoint_weights(os.path.join(config.model_dir, 'checkpoint-4'))
  assert step == 4
  assert all(np.abs(a - b).max() > 1e-5 for a, b in zip(trained, initial))  # it trained
  assert_trained_alike(trained, [w.numpy() for w in reference.model.weights], initial)
  assert_same_gradients(moments(reference),
                        checkpoint_first_moments(os.path.join(config.model_dir, 'checkpoint-4'),
                                                 single))

  # Both restart, this time launched as SLURM tasks, and go on from the saved step.
  port = reserve_ports(2, consecutive=True)[0]
  more = flags(config.replace(max_num_training_steps=6)) + [
      '--cluster_resolver=slurm', f'--slurm_port={port}']
  results, _ = run_workers(tmp_path, [more] * 2, slurm_environs(2))
  for code, out, err in results:
    assert code == 0, err[-3000:]
  assert f'Resuming from {config.model_dir}/checkpoint-4 at step 4' in results[0][1]
  assert 'Step 0:' not in results[0][1] and 'Finished at step 6' in results[0][1]
  reference = training.Trainer(MNIST, single.replace(max_num_training_steps=6), log=quiet)
  reference.run()
  _, resumed = checkpoint_weights(os.path.join(config.model_dir, 'checkpoint-6'))
  _, expected = checkpoint_weights(os.path.join(single.model_dir, 'checkpoint-6'))
  assert_trained_alike(resumed, expected, initial)
  assert_same_gradients(moments(reference),
                        checkpoint_first_moments(os.path.join(config.model_dir, 'checkpoint-6'),
                                                 single))


@pytest.mark.parametrize('change, message', [
    # Worker 1 cannot see the chief's model_dir (no shared storage): it would start afresh.
    ({'model_dir': 'elsewhere'}, r'would resume from different steps \(worker 0: 2, worker 1: 0\)'),
    ({'k': 4}, 'were given different configs'),
])
def test_workers_that_disagree_stop_with_a_clear_error(tmp_path, mnist_dir, reserve_ports, change, message):
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=2)
  training.train(MNIST, config, log=quiet)  # a checkpoint at step 2 to resume from
  if 'model_dir' in change:
    change = {'model_dir': str(tmp_path / change['model_dir'])}
  other = config.replace(max_num_training_steps=4, **change)
  results, _ = run_workers(tmp_path, [flags(config.replace(max_num_training_steps=4)),
                                      flags(other)], tf_config_environs(reserve_ports(2)))
  for code, _, err in results:
    assert code == 1, err[-2000:]
    assert 'Traceback' not in err
    last = err.strip().splitlines()[-1]  # the error, in one line
    assert last.startswith('error: ') and re.search(message, last), err[-2000:]
  assert not os.path.exists(tmp_path / 'elsewhere')  # worker 1 wrote nothing
  assert os.path.basename(checkpoints.latest(config.model_dir)) == 'checkpoint-2'


def test_a_malformed_tf_config_stops_train_py_before_any_work(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir)
  results, _ = run_workers(tmp_path, [flags(config)], [{'TF_CONFIG': '{"cluster": '}])
  code, out, err = results[0]
  assert code == 1 and out == ''
  assert err.strip().splitlines()[-1].startswith('error: TF_CONFIG is not JSON')
  assert not os.path.exists(config.model_dir)


@pytest.mark.versions
def test_when_a_worker_dies_the_others_stop_with_a_clear_error(tmp_path, mnist_dir, reserve_ports):
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=100000,
                       num_output_steps=5, num_checkpoint_steps=5)
  with Workers(tmp_path, [flags(config)] * 2, tf_config_environs(reserve_ports(2))) as workers:
    deadline = time.monotonic() + TIMEOUT
    while 'Step 10:' not in workers.output(0)[0]:
      assert workers.processes[0].poll() is None, workers.output(0)[1][-2000:]
      assert time.monotonic() < deadline
      time.sleep(0.5)
    os.killpg(workers.processes[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    # Timed here, by polling, so that a slow stop is a failure of this assertion rather
    # than of a wait() timeout.
    while workers.processes[0].poll() is None and time.monotonic() - killed < 60:
      time.sleep(0.05)
    waited = time.monotonic() - killed
    print(f'the chief stopped {waited:.1f} s after worker 1 was killed')
    assert waited < LOST_WORKER_SECONDS, f'the chief went on for {waited:.1f} s alone'
    code, _, err = workers.wait()[0]
  assert code == 1 and 'Traceback' not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith('error: worker 0 lost contact with the other workers'), last
  assert 'start every worker again' in last
  # What the chief saved is intact and readable.
  step, _ = checkpoint_weights(checkpoints.latest(config.model_dir))
  assert step >= 10
