"""Is robustness bought with speed? The same short MNIST adversarial training in float32 and
in mixed_bfloat16, each evaluated in float32.

Trains the MNIST recipe (PGD-40, ε 0.3, step 0.01, random start, batch 50, Adam 1e-4)
for --steps steps on the real data, once per precision, then evaluates both models with
float32 attacks only: natural accuracy and PGD-40 on the whole test set, and PGD-100 with
--restarts random restarts (worst case per example) on the first --subset test images.
Prints a Markdown table (and writes it, with the figures as JSON, to --out_dir).

  python benchmarks/precision_robustness.py --data_dir ../shared/data/mnist [--steps 2000]
"""
import argparse
import dataclasses
import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from common import cli  # noqa: E402,F401  (TensorFlow starts as in the commands)
from common import checkpoints, training  # noqa: E402
from common.evaluation import Evaluator  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402
from timing import machine  # noqa: E402

PRECISIONS = ('float32', 'mixed_bfloat16')


def train(precision, args):
  config = MNIST.load_config(overrides=dict(
      model_dir=os.path.join(args.out_dir, precision), data_dir=args.data_dir,
      max_num_training_steps=args.steps, num_checkpoint_steps=args.steps,
      num_output_steps=max(args.steps // 10, 1), num_summary_steps=args.steps,
      precision=precision))
  if checkpoints.latest(config.model_dir):
    raise SystemExit(f'{config.model_dir} already holds a checkpoint; use a new --out_dir')
  began = time.perf_counter()
  training.train(MNIST, config, log=lambda *a, **k: print(f'[{precision}]', *a, flush=True))
  return config, time.perf_counter() - began


def evaluate(config, args):
  """Float32 evaluation of the model in config.model_dir: {column: accuracy %}."""
  config = config.replace(precision='float32', eval_precision='float32')
  model = MNIST.build_model(config)
  checkpoints.restore_model(model, checkpoints.latest(config.model_dir))
  test = MNIST.load_data(config).test
  params = MNIST.attack_params(config)  # PGD-40, ε 0.3, step 0.01, random start
  pgd40 = Evaluator(model, params, seed=1).attack(test, config.eval_batch_size)
  pgd100 = Evaluator(model, dataclasses.replace(params, num_steps=100),
                     restarts=args.restarts, seed=2).attack(
                         test.head(args.subset), config.eval_batch_size)
  return {'natural': 100 * pgd40.nat_accuracy, 'PGD-40': 100 * pgd40.adv_accuracy,
          f'PGD-100 × {args.restarts} restarts': 100 * pgd100.adv_accuracy}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default=os.path.join('..', 'shared', 'data', 'mnist'))
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--subset', type=int, default=1000)
  parser.add_argument('--restarts', type=int, default=10)
  parser.add_argument('--out_dir', default='precision_robustness')
  args = parser.parse_args()
  print(machine())
  rows = {}
  for precision in PRECISIONS:
    config, seconds = train(precision, args)
    rows[precision] = {'training wall time (min)': seconds / 60, **evaluate(config, args)}
    print(precision, rows[precision], flush=True)
  columns = list(rows[PRECISIONS[0]])
  table = [f'MNIST, {args.steps} steps of PGD-40 adversarial training (batch 50); accuracy '
           f'in % on the 10,000 test images (PGD-100 on the first {args.subset}); all '
           'evaluations in float32', '',
           '| precision | ' + ' | '.join(columns) + ' |',
           '|---' * (len(columns) + 1) + '|']
  for precision, row in rows.items():
    table.append(f'| {precision} | ' + ' | '.join(f'{v:.2f}' for v in row.values()) + ' |')
  gap = rows['float32']['PGD-40'] - rows['mixed_bfloat16']['PGD-40']
  speedup = (rows['float32']['training wall time (min)']
             / rows['mixed_bfloat16']['training wall time (min)'])
  table += ['', f'PGD-40 accuracy, float32 minus mixed_bfloat16: {gap:+.2f} points '
            '(target: at most 1.5); training wall time ratio float32/mixed_bfloat16: '
            f'{speedup:.2f}', machine()]
  print('\n'.join(table))
  os.makedirs(args.out_dir, exist_ok=True)
  with open(os.path.join(args.out_dir, 'table.md'), 'w') as f:
    f.write('\n'.join(table) + '\n')
  with open(os.path.join(args.out_dir, 'results.json'), 'w') as f:
    json.dump(rows, f, indent=2)


if __name__ == '__main__':
  main()
