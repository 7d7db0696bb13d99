"""Speed report: float32 against mixed precision, TF32 (on GPUs) and XLA, and float32 against
a raw-TF-ops reference, for the attacks and the adversarial training steps of both
challenges, in one process.

Sections (each: variants interleaved --repeats times after a warm-up, medians):
  MNIST, PGD-40 on a batch of 200 and the training step (PGD-40 + Adam) on 50;
  CIFAR-10 non-wide, PGD-10 and the training step (PGD-10 + momentum) on 128;
  CIFAR-10 wide, the same on --wide_batch (default: 128 on a GPU, 16 on a CPU).
Variants: float32, mixed_bfloat16, each also with XLA (jit_compile); on a GPU tf32 and tf32
with XLA too; float32 and float32 with XLA also under op determinism (what `deterministic`
costs: traced under it, so with the ops it replaces, e.g. MNIST's max pooling).
TF32 and determinism are process-wide switches: each variant sets them before it runs.
Every variant starts from the same weights and inputs; random starts are off so that the
reference does the same work. Also: the input pipeline alone (CIFAR-10 with augmentation),
against the fastest training step. Run: python benchmarks/speed.py [--repeats 8]
"""
import argparse
import dataclasses
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from common import cli  # noqa: E402,F401  (TensorFlow starts as in the commands)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import config as tf_config  # noqa: E402  (determinism off)

from cifar10_challenge.challenge import CIFAR10  # noqa: E402
from common import data, losses, precision, runtime  # noqa: E402
from common.attacks import pgd  # noqa: E402
from common.training import Trainer  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402
from raw_reference import RawCIFAR, RawMNIST  # noqa: E402
from timing import interleaved, machine  # noqa: E402

MIXED = 'mixed_bfloat16'
NON_WIDE = [16, 16, 32, 64]


def silent(*args, **kwargs):
  pass


def report(title, batch, medians, repeats):
  """Prints examples/s per variant and each one's speed against float32; returns medians."""
  print(f'\n{title} (medians of {repeats} interleaved runs)')
  for name, seconds in medians.items():
    ratio = (f'  {medians["float32"] / seconds:5.2f}x float32' if name != 'float32' else '')
    print(f'  {name:<28} {seconds:8.3f} s  {batch / seconds:8.1f} examples/s{ratio}')
  if 'raw reference' in medians:
    print(f'  time float32 / raw reference: '
          f'{medians["float32"] / medians["raw reference"]:.3f} (target <= 1.05)')
  if 'float32, tf.while_loop' in medians:
    print(f'  time tf.while_loop / unrolled (float32): '
          f'{medians["float32, tf.while_loop"] / medians["float32"]:.2f}')
  return medians


def variants(gpu):
  """{name: (precision, XLA)} of the trainers and attacks to compare."""
  chosen = {'float32': ('float32', False), MIXED: (MIXED, False),
            'float32, XLA': ('float32', True), f'{MIXED}, XLA': (MIXED, True)}
  if gpu:  # TF32 changes nothing on a CPU
    chosen.update({'tf32': ('tf32', False), 'tf32, XLA': ('tf32', True)})
  return chosen


def in_precision(name, fn, deterministic=False):
  """fn, run with the process-wide switches of precision `name` (and determinism)."""
  def run():
    precision.use(name)
    if deterministic:
      tf_config.enable_op_determinism()
    try:
      return fn()
    finally:
      if deterministic:
        tf_config.disable_op_determinism()
  return run


def while_loop_pgd(model_fn, params):
  """PGD without random start with its k steps in a `tf.range` loop (a tf.while_loop in the
  graph) instead of unrolled as `pgd.pgd` does: the design `pgd.py` rejected."""
  loss_fn = losses.attack_loss(params.loss_func)

  @tf.function
  def run(x_nat, labels):
    x = tf.identity(x_nat)
    for _ in tf.range(params.num_steps):
      grad = pgd.input_gradient(model_fn, x, labels, loss_fn)
      x = pgd.project(pgd.sign_step(x, grad, params.step_size), x_nat, params.epsilon,
                         params.clip_min, params.clip_max)
    return x
  return run


def trainers(challenge, overrides, chosen):
  """A trainer per variant ({name: (precision, XLA)}), all from the same initial weights."""
  built = {}
  for name, (precision_name, jit) in chosen.items():
    config = challenge.load_config(overrides={
        **overrides, 'model_dir': '/nonexistent', 'random_start': False,
        'precision': precision_name, 'jit_compile': 'true' if jit else 'false'})
    built[name] = Trainer(challenge, config, log=silent)
  precision.use('float32')  # each trainer set the switch for itself; variants set it per run
  return built


def compare(challenge, reference_class, overrides, attack_batch, step_batch, repeats, title,
            chosen, reference=True, while_loop=False):
  """The PGD and training-step sections of one challenge/network."""
  built = trainers(challenge, {**overrides, 'training_batch_size': step_batch}, chosen)
  float32, config = built['float32'], built['float32'].config
  params = dataclasses.replace(challenge.attack_params(config), random_start=False)
  rng = np.random.default_rng(0)
  shape = (attack_batch,) + challenge.input_shape
  x = tf.constant((rng.uniform(0, 1, shape) * challenge.pixel_max).astype(np.float32))
  y = tf.constant(rng.integers(0, 10, attack_batch).astype(np.int64))
  xs, ys = x[:step_batch], y[:step_batch]
  attacks = {name: pgd.make_pgd(lambda v, t=t: t.twin(v, training=False), params,
                                   jit_compile=t.jit_compile)
             for name, t in built.items()}
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
  if while_loop:
    attacks['float32, tf.while_loop'] = while_loop_pgd(
        lambda v: float32.model(v, training=False), params)
    a, b = attacks['float32'](x, y).numpy(), attacks['float32, tf.while_loop'](x, y).numpy()
    print(f'  PGD outputs, unrolled vs tf.while_loop: {np.mean(a == b) * 100:.2f}% of pixels '
          'identical')
  # Under op determinism: their own trainers and attacks, traced under it (first call).
  exact = trainers(challenge, {**overrides, 'training_batch_size': step_batch},
                   {'float32, deterministic': ('float32', False),
                    'float32, XLA, deterministic': ('float32', True)})
  precision_of = lambda name: chosen[name][0] if name in chosen else 'float32'
  k = params.num_steps
  timed = {name: in_precision(precision_of(name), lambda f=f: f(x, y))
           for name, f in attacks.items()}
  for name, t in exact.items():
    attack = pgd.make_pgd(lambda v, t=t: t.twin(v, training=False), params,
                          jit_compile=t.jit_compile)
    timed[name] = in_precision('float32', lambda f=attack: f(x, y), deterministic=True)
  results = {'attack': report(f'{title}: PGD-{k}, batch {attack_batch}', attack_batch,
                              interleaved(timed, repeats), repeats)}
  steps = {name: in_precision(precision_of(name), lambda t=t: t.train_step((xs, ys)))
           for name, t in built.items()}
  for name, t in exact.items():
    steps[name] = in_precision('float32', lambda t=t: t.train_step((xs, ys)),
                               deterministic=True)
  if raw is not None:
    steps['raw reference'] = in_precision('float32', lambda: raw.train_step(xs, ys, params))
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
  parser.add_argument('--wide_batch', type=int, default=0,
                      help='default: 128 (the recipe) on a GPU, 16 on a CPU')
  parser.add_argument('--skip_wide', action='store_true')
  parser.add_argument('--mnist_only', action='store_true', help='the MNIST sections only')
  args = parser.parse_args()
  runtime.start()  # as every command: GPU memory growth, TF32 off
  print(machine())
  gpu = bool(tf.config.list_physical_devices('GPU'))
  chosen = variants(gpu)
  # The recipes' training batches: MNIST 50, CIFAR-10 128.
  compare(MNIST, RawMNIST, {}, 200, 50, args.repeats, 'MNIST', chosen, while_loop=True)
  if args.mnist_only:
    return
  cifar = compare(CIFAR10, RawCIFAR, {'filters': NON_WIDE}, 128, 128, args.repeats,
                  'CIFAR-10 non-wide', chosen)
  if not args.skip_wide:
    wide_batch = args.wide_batch or (128 if gpu else 16)
    compare(CIFAR10, RawCIFAR, {}, wide_batch, wide_batch, args.repeats, 'CIFAR-10 wide',
            chosen, reference=False)
  fastest = 128 / min(cifar['step'].values())
  supply = pipeline_examples_per_second(128)
  print(f'\nCIFAR-10 input pipeline alone (batch 128, augmentation): {supply:.0f} examples/s, '
        f'{supply / fastest:.0f}x what the fastest training step above consumes '
        f'({fastest:.0f} examples/s)')


if __name__ == '__main__':
  main()
