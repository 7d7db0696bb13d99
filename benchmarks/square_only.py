"""Masking or bad luck? The images that only Square broke in an AutoAttack run, attacked
again by PGD with many random restarts and several step sizes.

autoattack.py writes, beside its figures, which attack broke each image ("broken by" in
autoattack.json). If PGD with 100 restarts breaks Square's images, the gradient attacks
only lacked tries; if it does not, the gradients around those images lead attacks astray,
which is what AutoAttack's masking warning means.

  python mnist_challenge/autoattack.py --config checkpoints/mnist/fast_robust/config.json \\
      --num_examples 1000 --seed 4557095 --data_dir ../shared/data/mnist
  python benchmarks/square_only.py --model_dir checkpoints/mnist/fast_robust \\
      --data_dir ../shared/data/mnist
"""
import argparse
import dataclasses
import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from common import cli  # noqa: E402,F401  (TensorFlow starts quietly)
from common import model_files  # noqa: E402
from common.data import Split  # noqa: E402
from common.evaluation import Evaluator  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402
from timing import machine  # noqa: E402

# (steps, step size): the original's step, a finer one over more steps, a coarser one.
SETTINGS = ((100, 0.01), (200, 0.005), (100, 0.03))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model_dir', required=True)
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--report', help='autoattack.json (default: model_dir/autoattack/)')
  parser.add_argument('--restarts', type=int, default=100)
  args = parser.parse_args()
  report = args.report or os.path.join(args.model_dir, 'autoattack', 'autoattack.json')
  if not os.path.exists(report):
    raise SystemExit(f'error: {report} not found: run autoattack.py on the model first')
  with open(report) as f:
    broken_by = json.load(f)['broken by']
  square_only = [i for i, attack in enumerate(broken_by) if attack == 'square']
  if not square_only:
    print(f'{report}: Square broke no image the gradient attacks left; nothing to do')
    return
  config = MNIST.load_config(overrides={'data_dir': args.data_dir})
  model, _, path, _ = model_files.restore(MNIST, config, args.model_dir)
  test = MNIST.load_data(config).test
  images = Split(test.images[square_only], test.labels[square_only])
  print(machine())
  print(f'{path}: the {len(square_only)} images only Square broke: {square_only}')
  params = MNIST.attack_params(config)
  for steps, step_size in SETTINGS:
    began = time.time()
    result = Evaluator(model, dataclasses.replace(params, num_steps=steps, step_size=step_size),
                       restarts=args.restarts, seed=0).attack(images, len(images))
    robust = round(result.adv_accuracy * len(images))
    print(f'PGD-{steps}, step {step_size}, {args.restarts} restarts: {robust} of '
          f'{len(images)} still robust ({time.time() - began:.0f} s)')


if __name__ == '__main__':
  main()
