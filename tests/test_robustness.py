"""Robustness of the tooling: corrupt checkpoints, training killed at random moments, eval.py
beside train.py while checkpoints rotate, SIGTERM."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from cifar10_challenge.challenge import CIFAR10
from common import checkpoints, commands, training
from common.errors import ChallengeError
from conftest import CIFAR_TEST, NON_WIDE, REPO, quiet, tiny_config
from mnist_challenge.challenge import MNIST


def truncate_data(path):
  for name in os.listdir(os.path.dirname(path)):
    if name.startswith(os.path.basename(path) + '.data-'):
      with open(os.path.join(os.path.dirname(path), name), 'r+b') as f:
        f.truncate(100)


def test_a_corrupt_latest_checkpoint_falls_back_to_an_older_one_with_a_warning(
    tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir)  # checkpoints 0, 2, 4
  training.train(MNIST, config, log=quiet)
  truncate_data(os.path.join(config.model_dir, 'checkpoint-4'))

  lines = []
  log = lambda *a, **k: lines.append(a[0])
  results = commands.evaluate(MNIST, config, once=True, log=log)
  assert any('warning: checkpoint' in line and 'checkpoint-4 cannot be read' in line
             for line in lines)
  assert results.num_examples > 0
  lines.clear()
  commands.pgd_attack(MNIST, config, log=log)
  assert any('Falling back to an older checkpoint' in line for line in lines)

  lines.clear()
  assert training.train(MNIST, config.replace(max_num_training_steps=6), log=log) == 6
  assert 'checkpoint-4 cannot be read' in lines[0]
  assert lines[1] == f'Resuming from {os.path.join(config.model_dir, "checkpoint-2")} at step 2'


def test_when_no_checkpoint_can_be_read_training_does_not_start_from_scratch(
    tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir)
  training.train(MNIST, config, log=quiet)
  for path in checkpoints.candidates(config.model_dir):
    truncate_data(path)
  with pytest.raises(ChallengeError, match='no checkpoint in .* can be read'):
    training.train(MNIST, config.replace(max_num_training_steps=6), log=quiet)
  with pytest.raises(ChallengeError, match='can be read'):
    commands.evaluate(MNIST, config, once=True, log=quiet)


def cifar_flags(tmp_path, cifar_dir, **changes):
  settings = dict(data_path=cifar_dir, model_dir=str(tmp_path / 'model'),
                  filters=json.dumps(NON_WIDE), max_num_training_steps=200,
                  num_checkpoint_steps=1, num_output_steps=1000, num_summary_steps=1000,
                  training_batch_size=8, num_steps=1, eval_batch_size=25,
                  num_eval_examples=CIFAR_TEST, step_size_schedule='[[0, 0.01]]')
  settings.update(changes)
  return [f'--{key}={value}' for key, value in settings.items()]


def start(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='', PYTHONUNBUFFERED='1')
  return subprocess.Popen([sys.executable] + args, cwd=REPO, env=env, stdout=stdout,
                          stderr=stderr, text=True)


def step_of(path):
  return int(path.rsplit('-', 1)[1]) if path else None


def newest_on_disk(model_dir):
  """The step of the checkpoint model_dir's index file names, read from the files directly
  (not with the code under test), after checking that its files are complete on disk: the
  .index and every data shard its name announces. None if there is no index yet."""
  try:
    with open(os.path.join(model_dir, 'checkpoint')) as f:
      named = re.search(r'^model_checkpoint_path: "([^"]+)"', f.read(), re.MULTILINE)
  except FileNotFoundError:
    return None
  prefix = os.path.join(model_dir, os.path.basename(named.group(1)))
  assert os.path.getsize(prefix + '.index') > 0
  shards = [n for n in os.listdir(model_dir) if n.startswith(os.path.basename(prefix) + '.data-')]
  total = int(shards[0].rsplit('-of-', 1)[1])
  assert len(shards) == total and all(os.path.getsize(os.path.join(model_dir, n)) > 0
                                      for n in shards)
  return step_of(prefix)


class Lines:
  """A child's stdout, read by a thread as it comes, so that a test can wait for a line."""

  def __init__(self, stream):
    self.text, self.closed = '', False
    self.changed = threading.Condition()
    threading.Thread(target=self._read, args=(stream,), daemon=True).start()

  def _read(self, stream):
    for line in stream:
      with self.changed:
        self.text += line
        self.changed.notify_all()
    with self.changed:
      self.closed = True
      self.changed.notify_all()

  def wait_for(self, pattern, timeout):
    """Whether a line matching `pattern` came within `timeout` seconds."""
    found = lambda: re.search(pattern, self.text, re.MULTILINE)
    with self.changed:
      self.changed.wait_for(lambda: found() or self.closed, timeout)
      return bool(found())

  def wait_closed(self, timeout):
    with self.changed:
      return self.changed.wait_for(lambda: self.closed, timeout)


@pytest.mark.slow
def test_training_killed_at_random_moments_resumes_and_finishes(tmp_path, cifar_dir):
  # SIGKILL at random moments after a line the process prints, not after a fixed time from
  # its start (start-up takes 3 s on one machine, over 9 s on another): after the start-up
  # line (kills land while it builds the model, restores, compiles or trains) or after a step's
  # line (while it trains, writing a checkpoint every step: kills land inside writes too).
  # Each restart must resume from exactly the checkpoint the index on disk names when it
  # starts, read independently of the code.
  last = 60
  flags = cifar_flags(tmp_path, cifar_dir, max_num_training_steps=last, num_output_steps=1)
  model_dir = str(tmp_path / 'model')
  rng = random.Random(0)
  resumed_at = []
  for kill in range(5):
    before = newest_on_disk(model_dir)
    # Even runs wait for a step (the first run thus leaves a checkpoint), odd ones for the
    # start-up line.
    landmark = '^strategy: ' if kill % 2 else r'^Step \d+:'
    with open(tmp_path / 'stderr', 'w+') as err_file:
      process = start(['cifar10_challenge/train.py'] + flags, stderr=err_file)
      lines = Lines(process.stdout)
      try:
        assert lines.wait_for(landmark, timeout=300), (landmark, lines.text)
        time.sleep(rng.uniform(0.0, 2.0))
        assert process.poll() is None, 'train.py ended before it was killed'
      finally:
        process.kill()  # SIGKILL: no chance to clean up
        process.wait(timeout=60)
      assert lines.wait_closed(timeout=60)
      err_file.seek(0)
      err = err_file.read()
    assert 'Traceback' not in err, err
    match = re.search(r'Resuming from \S+checkpoint-(\d+) at step (\d+)', lines.text)
    if before is None:
      assert not match, lines.text  # nothing to resume from: it started afresh
    elif match:  # killed once it had restored (else it died earlier: nothing to check)
      assert int(match.group(1)) == int(match.group(2)) == before, lines.text
      resumed_at.append(before)
  before = newest_on_disk(model_dir)
  final = start(['cifar10_challenge/train.py'] + flags)
  out, err = final.communicate(timeout=600)
  assert final.returncode == 0, err
  match = re.search(r'Resuming from \S+checkpoint-(\d+) at step (\d+)', out)
  assert match and int(match.group(1)) == int(match.group(2)) == before, out
  assert f'Finished at step {last}' in out
  assert newest_on_disk(model_dir) == last
  # Non-decreasing, and training went on between kills (not killed before every first step).
  assert resumed_at == sorted(resumed_at) and len(resumed_at) >= 2, resumed_at
  assert resumed_at[-1] > resumed_at[0], resumed_at
  print(f'killed 5 times; resumed at steps {resumed_at}; finished at {last}')
  # Every checkpoint left restores cleanly.
  config = CIFAR10.load_config(os.path.join(model_dir, 'config.json'))  # the effective one
  for path in checkpoints.candidates(model_dir):
    trainer = training.Trainer(CIFAR10, config, log=quiet)
    checkpoints.restore(trainer.checkpoint, path, 'training state')
    assert int(trainer.step.numpy()) == step_of(path)


@pytest.mark.slow
def test_eval_beside_training_under_rotation_then_sigterm(tmp_path, cifar_dir):
  last = 80
  flags = cifar_flags(tmp_path, cifar_dir, max_num_training_steps=last)
  eval_log = tmp_path / 'eval.out'
  with open(eval_log, 'w') as eval_out:
    evaluator = start(['cifar10_challenge/eval.py', '--poll_seconds=0.1'] + flags, eval_out)
    try:
      trainer = start(['cifar10_challenge/train.py'] + flags)
      _, err = trainer.communicate(timeout=600)
      assert trainer.returncode == 0, err
      deadline = time.time() + 300
      while f'checkpoint-{last}, evaluating' not in eval_log.read_text():
        assert time.time() < deadline and evaluator.poll() is None
        time.sleep(0.5)
      time.sleep(1)
      evaluator.send_signal(signal.SIGTERM)
      _, eval_err = evaluator.communicate(timeout=120)
    finally:
      evaluator.kill()
  output = eval_log.read_text()
  assert evaluator.returncode == 143, eval_err
  assert 'Traceback' not in eval_err and 'terminated' in eval_err
  evaluated = [int(s) for s in re.findall(r'Checkpoint \S+checkpoint-(\d+), evaluating', output)]
  assert evaluated == sorted(set(evaluated)), evaluated  # increasing, each at most once
  assert evaluated[-1] == last and len(evaluated) >= 3, evaluated
  completed = output.count('adversarial: ')
  skipped = output.count('rotated out by train.py')
  assert completed + skipped == len(evaluated)
  print(f'eval.py beside train.py: {len(evaluated)} checkpoints seen, {completed} evaluated, '
        f'{skipped} skipped after rotation')
