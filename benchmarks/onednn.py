"""oneDNN's CPU kernels against TensorFlow's own, on MNIST's training steps.

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it is imported, so each setting needs its
own process: this script starts a child per setting, --repeats times interleaved (off, on,
off, on, ...); each child builds the steps, warms them up and times --calls calls of each.
Printed: the medians over the children, and on against off. The commands turn oneDNN on for
every x86 CPU (common/cli.py); TensorFlow alone does so only on CPUs with AVX-512 VNNI/BF16
or AMX.

Steps: PGD-2 + Adam at batch 100 (the fast recipe's step before it became PGD-3) and the
original recipe's, PGD-40 + Adam at batch 50.

  python benchmarks/onednn.py [--repeats 8]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

SETTINGS = ('0', '1')  # TF_ENABLE_ONEDNN_OPTS: off, on
SECTIONS = ('PGD-2 training step (+ Adam), batch 100',
            'original training step (PGD-40 + Adam), batch 50')
BATCHES = (100, 50)


def child(calls):
  """Times each section's step in this process; prints {section: median seconds}."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from common import cli  # noqa: F401  (TensorFlow starts as the commands start it)
  import numpy as np
  import tensorflow as tf
  from common.training import Trainer
  from mnist_challenge.challenge import MNIST
  from timing import timed

  rng = np.random.default_rng(0)
  x = tf.constant(rng.uniform(0, 1, (max(BATCHES), 784)).astype(np.float32))
  y = tf.constant(rng.integers(0, 10, max(BATCHES)))
  steps = {}
  for section, batch, changes in zip(SECTIONS, BATCHES, (
      {'training_num_steps': 2, 'training_step_size': 0.2}, {})):
    trainer = Trainer(MNIST, MNIST.load_config(overrides={
        **changes, 'model_dir': '/nonexistent', 'training_batch_size': batch}),
        log=lambda *a, **k: None)
    steps[section] = lambda t=trainer, b=batch: t.train_step((x[:b], y[:b]))
  medians = {}
  for section, step in steps.items():
    step()  # tracing
    step()
    medians[section] = statistics.median(timed(step) for _ in range(calls))
  print(json.dumps(medians))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--repeats', type=int, default=8)
  parser.add_argument('--calls', type=int, default=3, help='timed calls per step per child')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  options = parser.parse_args()
  if options.child:
    child(options.calls)
    return
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path.insert(0, here)
  from timing import machine  # noqa: E402  (imports TensorFlow: the parent's setting is moot)
  print(machine())
  repo = os.path.dirname(here)
  times = {setting: {section: [] for section in SECTIONS} for setting in SETTINGS}
  for _ in range(options.repeats):
    for setting in SETTINGS:
      env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL='2',
                 CUDA_VISIBLE_DEVICES='', PYTHONPATH=os.pathsep.join([repo, here]))
      out = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', '--calls',
                            str(options.calls)], env=env, capture_output=True, text=True,
                           check=True).stdout
      for section, seconds in json.loads(out.strip().splitlines()[-1]).items():
        times[setting][section].append(seconds)
  print(f'\nMNIST, float32 (medians of {options.repeats} interleaved processes per setting, '
        f'each the median of {options.calls} calls)')
  for section, batch in zip(SECTIONS, BATCHES):
    off, on = (statistics.median(times[setting][section]) for setting in SETTINGS)
    print(f'  {section}\n    oneDNN off {batch / off:8.1f} examples/s   oneDNN on '
          f'{batch / on:8.1f} examples/s   on: {off / on:.2f}x')


if __name__ == '__main__':
  main()
