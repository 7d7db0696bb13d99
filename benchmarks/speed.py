"""Speed report: float32 vs mixed precision, and float32 vs a raw-TF-ops reference, for the
attacks and the adversarial training steps of both challenges, in one process.

Sections (each: variants interleaved --repeats times after a warm-up, medians):
  MNIST, PGD-40 on a batch of 200 and the training step (PGD-40 + Adam) on 50;
  CIFAR-10 non-wide, PGD-10 and the training step (PGD-10 + momentum) on 128;
  CIFAR-10 wide, the same on --wide_batch (the wide net is slow on a CPU).
Every variant starts from the same weights and inputs; random starts are off so that the
reference does the same work. Also: the input pipeline alone (CIFAR-10 with augmentation),
against the fastest training step. Run: python benchmarks/speed.py [--repeats 8]
"""
import argparse
import dataclasses
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cifar10_challenge.challenge import CIFAR10  # noqa: E402
from common import attack, data, losses  # noqa: E402
from common.training import Trainer  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402
from raw_reference import RawCIFAR, RawMNIST  # noqa: E402
from timing import interleaved, machine  # noqa: E402

MIXED = 'mixed_bfloat16'
NON_WIDE = [16, 16, 32, 64]


def silent(*args, **kwargs):
  pass


def report(title, batch, medians, repeats):
  """Prints examples/s per variant and the ratios the issue asks for; returns medians."""
  print(f'\n{title} (medians of {repeats} interleaved runs)')
  for name, seconds in medians.items():
    print(f'  {name:<28} {seconds:8.3f} s  {batch / seconds:8.1f} examples/s')
  if MIXED in medians:
    print(f'  speed-up {MIXED} over float32: {medians["float32"] / medians[MIXED]:.2f}x')
  if 'raw reference' in medians:
    print(f'  time float32 / raw reference: '
          f'{medians["float32"] / medians["raw reference"]:.3f} (target <= 1.05)')
  if 'float32, XLA' in medians:
    print(f'  time XLA / float32: {medians["float32, XLA"] / medians["float32"]:.2f}')
  if 'float32, tf.while_loop' in medians:
    print(f'  time tf.while_loop / unrolled (float32): '
          f'{medians["float32, tf.while_loop"] / medians["float32"]:.2f}')
  return medians


def while_loop_pgd(model_fn, params):
  """PGD without random start with its k steps in a `tf.range` loop (a tf.while_loop in the
  graph) instead of unrolled as `attack.pgd` does: the design `attack.py` rejected."""
  loss_fn = losses.attack_loss(params.loss_func)

  @tf.function
  def run(x_nat, labels):
    x = tf.identity(x_nat)
    for _ in tf.range(params.num_steps):
      grad = attack.input_gradient(model_fn, x, labels, loss_fn)
      x = attack.project(attack.sign_step(x, grad, params.step_size), x_nat, params.epsilon,
                         params.clip_min, params.clip_max)
    return x
  return run


def trainers(challenge, overrides):
  """float32 and mixed-precision trainers from the same initial weights."""
  built = {}
  for precision in ('float32', MIXED):
    config = challenge.load_config(overrides={
        **overrides, 'model_dir': '/nonexistent', 'random_start': False,
        'precision': precision})
    built[precision] = Trainer(challenge, config, log=silent)
  return built


def compare(challenge, reference_class, overrides, attack_batch, step_batch, repeats, title,
            reference=True, xla=False, while_loop=False):
  """The PGD and training-step sections of one challenge/network."""
  built = trainers(challenge, {**overrides, 'training_batch_size': step_batch})
  float32, config = built['float32'], built['float32'].config
  params = dataclasses.replace(challenge.attack_params(config), random_start=False)
  rng = np.random.default_rng(0)
  shape = (attack_batch,) + challenge.input_shape
  x = tf.constant((rng.uniform(0, 1, shape) * challenge.pixel_max).astype(np.float32))
  y = tf.constant(rng.integers(0, 10, attack_batch).astype(np.int64))
  xs, ys = x[:step_batch], y[:step_batch]
  attacks = {precision: attack.make_pgd(lambda v, t=t: t.twin(v, training=False), params)
             for precision, t in built.items()}
  raw = None
  if reference:
    raw = (reference_class(float32.model) if reference_class is RawMNIST
           else reference_class(float32.model, config))
    ours = float32.model(x, training=False).numpy()
    print(f'\n{title}: raw reference logits vs ours: max difference '
          f'{np.abs(raw.logits(x).numpy() - ours).max():.2e} (scale {np.abs(ours).max():.1f})')
    attacks['raw reference'] = lambda x_nat, labels: raw.pgd(x_nat, labels, params)
    a, b = attacks['float32'](x, y).numpy(), attacks['raw reference'](x, y).numpy()
    print(f'  PGD outputs, ours vs reference: max difference {np.abs(a - b).max():.2e}, '
          f'{np.mean(a == b) * 100:.2f}% of pixels identical')
  if xla:
    attacks['float32, XLA'] = tf.function(jit_compile=True)(
        lambda x_nat, labels: attack.pgd(lambda v: float32.model(v, training=False), x_nat,
                                         labels, params))
  if while_loop:
    attacks['float32, tf.while_loop'] = while_loop_pgd(
        lambda v: float32.model(v, training=False), params)
    a, b = attacks['float32'](x, y).numpy(), attacks['float32, tf.while_loop'](x, y).numpy()
    print(f'  PGD outputs, unrolled vs tf.while_loop: {np.mean(a == b) * 100:.2f}% of pixels '
          'identical')
  k = params.num_steps
  results = {'attack': report(
      f'{title}: PGD-{k}, batch {attack_batch}', attack_batch, interleaved(
          {name: (lambda f=f: f(x, y)) for name, f in attacks.items()}, repeats), repeats)}
  steps = {precision: (lambda t=t: t.train_step((xs, ys))) for precision, t in built.items()}
  if raw is not None:
    steps['raw reference'] = lambda: raw.train_step(xs, ys, params)
  results['step'] = report(f'{title}: training step (PGD-{k} + update), batch {step_batch}',
                           step_batch, interleaved(steps, repeats), repeats)
  return results


def pipeline_examples_per_second(batch, num_batches=60):
  """The CIFAR-10 training pipeline alone (gather, augmentation, prefetch) on 4,000
  random images: examples/s."""
  rng = np.random.default_rng(0)
  split = data.Split(rng.uniform(0, 255, (4000, 32, 32, 3)).astype(np.float32),
                     rng.integers(0, 10, 4000).astype(np.int64))
  batches = iter(data.training_batches(split, batch, seed=1, augment=CIFAR10.augment))
  for _ in range(5):
    next(batches)
  began = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  return num_batches * batch / (time.perf_counter() - began)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=8)
  parser.add_argument('--wide_batch', type=int, default=16)
  parser.add_argument('--skip_wide', action='store_true')
  parser.add_argument('--mnist_only', action='store_true', help='the MNIST sections only')
  args = parser.parse_args()
  print(machine())
  # The recipes' training batches: MNIST 50, CIFAR-10 128.
  compare(MNIST, RawMNIST, {}, 200, 50, args.repeats, 'MNIST', xla=True, while_loop=True)
  if args.mnist_only:
    return
  cifar = compare(CIFAR10, RawCIFAR, {'filters': NON_WIDE}, 128, 128, args.repeats,
                  'CIFAR-10 non-wide')
  if not args.skip_wide:
    compare(CIFAR10, RawCIFAR, {}, args.wide_batch, args.wide_batch, args.repeats,
            'CIFAR-10 wide', reference=False)
  fastest = 128 / cifar['step'][MIXED]
  supply = pipeline_examples_per_second(128)
  print(f'\nCIFAR-10 input pipeline alone (batch 128, augmentation): {supply:.0f} examples/s, '
        f'{supply / fastest:.0f}x what the fastest training step above consumes '
        f'({fastest:.0f} examples/s)')


if __name__ == '__main__':
  main()
