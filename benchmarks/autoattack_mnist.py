"""AutoAttack on MNIST: its speed against PGD, and its strength on a model.

1. Speed (no data needed): APGD-CE with 100 iterations against our PGD-100 on the same
   batch and weights (the MNIST network, batch 200), interleaved --repeats times, medians:
   both take one gradient per iteration; APGD also keeps its best point and step sizes.
2. Strength (with --model_dir and --data_dir): on the first --num_examples test images,
   PGD-40 (the original's), PGD-100 with 10 random restarts, APGD-CE alone, APGD-T alone and
   the standard version (APGD-CE, APGD-T, FAB-T, Square), each with its wall time.

  python benchmarks/autoattack_mnist.py
  python benchmarks/autoattack_mnist.py --model_dir checkpoints/mnist/fast_robust \\
      --data_dir ../shared/data/mnist --num_examples 1000
"""
import argparse
import dataclasses
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from common import cli  # noqa: E402,F401  (TensorFlow starts quietly)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import losses, model_files, runtime  # noqa: E402
from common.attacks import apgd, autoattack, pgd  # noqa: E402
from common.attacks.threat import ThreatModel  # noqa: E402
from common.evaluation import Evaluator  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402
from timing import interleaved, machine  # noqa: E402


def speed(repeats, batch=200):
  tf.keras.utils.set_random_seed(0)
  model = MNIST.build_model(None)
  model_fn = lambda x: model(x, training=False)
  rng = np.random.default_rng(0)
  x = tf.constant(rng.uniform(0, 1, (batch, 784)).astype(np.float32))
  y = tf.constant(rng.integers(0, 10, batch))
  params = pgd.PGDParams(0.3, 100, 0.01, random_start=False)
  pgd_100 = pgd.make_pgd(model_fn, params)
  start = apgd.boundary_start(x, ThreatModel('linf', 0.3), tf.constant([0, 0], tf.int64),
                              tf.range(batch, dtype=tf.int64))
  apgd_100 = tf.function(lambda x, y, start: apgd.apgd(
      model_fn, x, y, ThreatModel('linf', 0.3), 100, losses.xent, start))
  medians = interleaved({'PGD-100': lambda: pgd_100(x, y), 'APGD-CE, 100 iterations':
                         lambda: apgd_100(x, y, start)}, repeats)
  print(f'\nMNIST network, batch {batch} (medians of {repeats} interleaved runs)')
  for name, seconds in medians.items():
    print(f'  {name:<26} {seconds:7.3f} s')
  print(f'  time APGD-CE / PGD-100: {medians["APGD-CE, 100 iterations"] / medians["PGD-100"]:.3f}'
        ' (target <= 1.15)')


def strength(model_dir, data_dir, num_examples, batch_size, seed):
  config = MNIST.load_config(overrides={'model_dir': model_dir, 'data_dir': data_dir})
  # The network from the config.json training saved beside the checkpoint, as export reads it.
  model, _, path, _ = model_files.restore(MNIST, config, model_dir, lambda *a, **k: None)
  test = MNIST.load_data(config).test.head(num_examples)
  params = MNIST.attack_params(config)
  print(f'\n{path}, first {num_examples} test images, ε {params.epsilon:g}')
  rows = []

  def timed(name, fn):
    began = time.time()
    accuracy = fn()
    rows.append((name, accuracy, time.time() - began))
    print(f'  {name:<40} {100 * accuracy:6.2f}%   {rows[-1][2]:7.1f} s', flush=True)

  timed('PGD-40 (step 0.01, random start)',
        lambda: Evaluator(model, params, seed=seed).attack(test, batch_size).adv_accuracy)
  timed('PGD-100 x 10 restarts', lambda: Evaluator(
      model, dataclasses.replace(params, num_steps=100), restarts=10, seed=seed).attack(
          test, batch_size).adv_accuracy)
  for name, chain in (('APGD-CE alone', ['apgd-ce']), ('APGD-T alone', ['apgd-t']),
                      ('AutoAttack (standard)', list(autoattack.STANDARD))):
    attacker = autoattack.AutoAttack(lambda x: model(x, training=False), params.epsilon, 0.0,
                                     1.0, MNIST.image_shape, chain, batch_size, seed,
                                     log=lambda *a, **k: None)
    timed(name, lambda attacker=attacker: attacker.run(test.images, test.labels)
          .robust_accuracy)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--repeats', type=int, default=8)
  parser.add_argument('--model_dir', default='')
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--num_examples', type=int, default=1000)
  parser.add_argument('--batch_size', type=int, default=500)
  parser.add_argument('--seed', type=int, default=0)
  options = parser.parse_args()
  runtime.start()
  print(machine())
  speed(options.repeats)
  if options.model_dir:
    strength(options.model_dir, options.data_dir, options.num_examples, options.batch_size,
             options.seed)


if __name__ == '__main__':
  main()
