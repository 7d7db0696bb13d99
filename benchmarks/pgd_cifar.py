"""CIFAR-10, wide network: PGD-10 and one training step against plain forward+backward passes.

The reference is the unavoidable work, measured in the same process on the same batch and
weights: one compiled forward+backward pass (for the attack: inference mode, gradient of
the summed xent w.r.t. the input; for training: train mode, gradient w.r.t. the weights).
PGD-k does k such passes and one training step k attack passes plus one weight pass, so we
report time / ((k+1) × reference) (target ≤ 1.1) and, stricter, time / (k × input pass) for
PGD and time / (k × train-mode input pass + weight pass) for the training step (its attack
uses batch statistics, which cost more than inference mode). Variants are interleaved;
medians are printed.
Run: python benchmarks/pgd_cifar.py [--repeats 8] [--batch 100] [--filters 16,160,320,640]
"""
import argparse
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from common import cli  # noqa: E402,F401  (TensorFlow starts as in the commands)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cifar10_challenge.challenge import CIFAR10  # noqa: E402
from common import losses  # noqa: E402
from common.attacks import pgd  # noqa: E402
from common.training import Trainer  # noqa: E402
from timing import interleaved, machine  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=8)
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--filters', default='16,160,320,640')
  args = parser.parse_args()
  print(machine())
  config = CIFAR10.load_config(overrides={
      'model_dir': '/nonexistent', 'training_batch_size': args.batch,
      'filters': [int(f) for f in args.filters.split(',')]})
  params = CIFAR10.attack_params(config)  # ε 8, 10 steps of 2, random start
  k = params.num_steps
  trainer = Trainer(CIFAR10, config, log=lambda *a, **kw: None)
  model = trainer.model
  rng = np.random.default_rng(0)
  x = tf.constant(rng.integers(0, 256, (args.batch, 32, 32, 3)).astype(np.float32))
  y = tf.constant(rng.integers(0, 10, args.batch).astype(np.int64))

  @tf.function
  def input_pass(x):  # one attack step's work, without the sign step and projection
    return pgd.input_gradient(lambda v: model(v, training=False), x, y, losses.xent)

  @tf.function
  def train_mode_input_pass(x):  # the same with batch statistics, as the training attack
    return pgd.input_gradient(lambda v: model(v, training=True), x, y, losses.xent)

  @tf.function
  def weight_pass(x):  # a natural training step's work, without the update
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(losses.xent(y, model(x, training=True)))
    return tape.gradient(loss, model.trainable_variables)

  attack = pgd.make_pgd(lambda v: model(v, training=False), params)
  x_adv = attack(x, y).numpy()
  print(f'PGD-{k} output: max |x_adv - x| = {np.abs(x_adv - x.numpy()).max():.4f} '
        f'(ε {params.epsilon}), range [{x_adv.min():.1f}, {x_adv.max():.1f}]')
  medians = interleaved({'input pass': lambda: input_pass(x), 'pgd': lambda: attack(x, y),
                         'train-mode input pass': lambda: train_mode_input_pass(x),
                         'weight pass': lambda: weight_pass(x),
                         'training step': lambda: trainer.train_step((x, y))}, args.repeats)
  b, name = args.batch, f'filters {config.filters}, batch {args.batch}'
  print(f'{name}; medians of {args.repeats} interleaved runs')
  print(f'  forward+backward: w.r.t. the input {medians["input pass"]:.2f} s, the same in '
        f'train mode {medians["train-mode input pass"]:.2f} s, w.r.t. the weights in train '
        f'mode {medians["weight pass"]:.2f} s')
  print(f'  PGD-{k}: {b / medians["pgd"]:.1f} examples/s; time / ((k+1) x fwd+bwd) = '
        f'{medians["pgd"] / ((k + 1) * medians["input pass"]):.3f}; '
        f'time / (k x fwd+bwd) = {medians["pgd"] / (k * medians["input pass"]):.3f}')
  reference = k * medians['train-mode input pass'] + medians['weight pass']
  print(f'  training step (PGD-{k} + momentum update, BN batch statistics in the attack): '
        f'{b / medians["training step"]:.1f} examples/s; '
        f'time / ((k+1) x fwd+bwd) = '
        f'{medians["training step"] / ((k + 1) * medians["weight pass"]):.3f}; '
        f'time / (k x train-mode input pass + weight pass) = '
        f'{medians["training step"] / reference:.3f}')


if __name__ == '__main__':
  main()
