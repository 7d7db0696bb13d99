"""What a second host buys: train.py on two worker processes (MultiWorkerMirroredStrategy)
against one, on this machine, with each process pinned to its own core to stand for a host.

Variants, interleaved --repeats times (a fresh set of processes each time):
  one host   : one process on core 0, the global batch B (the reference);
  two hosts  : two processes on cores 0 and 1 (TF_CONFIG, gRPC over 127.0.0.1), the same
               global batch B, B/2 per worker;
  one host, B/2 : one process on core 0 with the per-worker share alone, i.e. the two-host
               step without the exchange of gradients.
Each run trains --steps steps; its rate is read from the chief's own "examples per second"
lines, leaving out the first (it includes tracing). Printed: medians, the speed-up of two
hosts over one, and how much of the two-host step is spent beyond its own share of the work
(the all-reduce of the gradients and waiting for the slower worker).

Run: python benchmarks/multiworker.py [--challenge mnist|cifar] [--repeats 8]
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from cifar10_challenge import data as cifar_data  # noqa: E402
from mnist_challenge import data as mnist_data  # noqa: E402
from timing import machine  # noqa: E402

# --challenge: (directory, global batch of the recipe, what one step is).
CHALLENGES = {
    'mnist': ('mnist_challenge', 50, 'MNIST recipe step (PGD-40 + Adam)'),
    'cifar': ('cifar10_challenge', 128, 'CIFAR-10 non-wide recipe step (PGD-10 + momentum)'),
}


def write_data(challenge, directory):
  """Random images in the challenge's on-disk format (speed does not depend on them)."""
  rng = np.random.default_rng(0)
  if challenge == 'mnist':
    n = mnist_data.VALIDATION_SIZE + 2000
    for name, array in (('train_images', rng.integers(0, 256, (n, 28, 28), np.uint8)),
                        ('train_labels', rng.integers(0, 10, n).astype(np.uint8)),
                        ('test_images', rng.integers(0, 256, (100, 28, 28), np.uint8)),
                        ('test_labels', rng.integers(0, 10, 100).astype(np.uint8))):
      mnist_data.write_idx(os.path.join(directory, mnist_data.FILES[name]), array)
    return ['--data_dir', directory]
  for name in cifar_data.TRAIN_FILES + (cifar_data.TEST_FILE,):
    cifar_data.write_batch(os.path.join(directory, name),
                           rng.integers(0, 256, (500, 32, 32, 3), np.uint8),
                           rng.integers(0, 10, 500))
  cifar_data.write_meta(os.path.join(directory, cifar_data.META_FILE))
  return ['--data_path', directory, '--filters', '[16, 16, 32, 64]']


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def run(script, args, cores, workdir, timeout=1800):
  """Runs one train.py per core (a cluster if several); returns the chief's median rate."""
  environs = [{}]
  if len(cores) > 1:
    cluster = {'worker': [f'127.0.0.1:{p}' for p in free_ports(len(cores))]}
    environs = [{'TF_CONFIG': json.dumps({'cluster': cluster,
                                          'task': {'type': 'worker', 'index': i}})}
                for i in range(len(cores))]
  model_dir = tempfile.mkdtemp(dir=workdir)
  processes = []
  try:
    for core, environ in zip(cores, environs):
      env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='', **environ)
      processes.append(subprocess.Popen(
          [sys.executable, script, '--model_dir', model_dir] + args, cwd=REPO, env=env,
          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
          preexec_fn=lambda core=core: os.sched_setaffinity(0, {core})))
    chief_out = processes[0].communicate(timeout=timeout)[0]
    for process in processes[1:]:
      process.wait(timeout=timeout)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  if any(p.returncode for p in processes):
    raise SystemExit(f'a worker failed (exit codes {[p.returncode for p in processes]})')
  rates = [float(r) for r in re.findall(r'([0-9.]+) examples per second', chief_out)]
  return statistics.median(rates[1:])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--challenge', choices=tuple(CHALLENGES), default='mnist')
  parser.add_argument('--repeats', type=int, default=8)
  parser.add_argument('--steps', type=int, default=15, help='training steps per run')
  options = parser.parse_args()
  if len(os.sched_getaffinity(0)) < 2:
    raise SystemExit('needs two cores')
  directory, batch, what = CHALLENGES[options.challenge]
  script = os.path.join(directory, 'train.py')
  every = options.steps // 3
  with tempfile.TemporaryDirectory() as workdir:
    common = write_data(options.challenge, workdir) + [
        '--max_num_training_steps', str(options.steps), '--num_output_steps', str(every),
        '--num_checkpoint_steps', str(10 * options.steps),
        '--num_summary_steps', str(10 * options.steps)]
    variants = {
        f'one host, batch {batch}': ([0], batch),
        f'two hosts, batch {batch} ({batch // 2} each)': ([0, 1], batch),
        f'one host, batch {batch // 2}': ([0], batch // 2),
    }
    rates = {name: [] for name in variants}
    for repeat in range(options.repeats):
      for name, (cores, size) in variants.items():
        rates[name].append(run(script, common + ['--training_batch_size', str(size)], cores,
                               workdir))
      print(f'repeat {repeat + 1}/{options.repeats} done', file=sys.stderr, flush=True)
  print(machine())
  print(f'{what}, {options.steps} steps per run, medians of {options.repeats} interleaved '
        'runs; one core per "host"')
  medians = {name: statistics.median(r) for name, r in rates.items()}
  for name, rate in medians.items():
    print(f'  {name:<32} {rate:8.1f} examples/s')
  one, two, half = medians.values()
  step_two, step_half = batch / two, (batch // 2) / half
  print(f'  speed-up of two hosts over one: {two / one:.2f}x (ideal 2x)')
  # Relative to the share alone (what one worker's work costs without synchronising).
  print(f'  the two-host step takes {step_two:.3f} s, its share alone {step_half:.3f} s: '
        f'{step_two / step_half - 1:.0%} longer')


if __name__ == '__main__':
  main()
