"""The fast MNIST recipe (mnist_challenge/configs/fast.json) on the real data: trains it with
each seed, times it, and evaluates the final model and the guard's best one (natural on all
10,000 test images, PGD-40 on all 10,000, PGD-100 with 10 random restarts on the first
1,000: ε 0.3, step 0.01, random starts, float32; with --autoattack, those AutoAttack attacks
on the first 1,000 too).

  python benchmarks/fast_training.py --data_dir ../shared/data/mnist [--seeds 3]
  python benchmarks/fast_training.py ... --export /tmp/fast_robust
  python benchmarks/fast_training.py ... --recipe mnist_challenge/configs/fast_small_cnn.json \
      --autoattack apgd-ce,apgd-t,fab-t,square   # the shipped model's (--seeds 1 --export: it)
  python benchmarks/fast_training.py ... --seed 1 --set training_num_steps=20 \
      --set training_step_size=0.02   # a screening run: one seed, keys changed

--export writes the first seed's chosen model (the guard's best) as a weights-only
checkpoint with its config.json and evaluation.json: what checkpoints/mnist/fast_robust holds.
"""
import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from common import cli  # noqa: E402,F401  (TensorFlow starts quietly)
from common import checkpoints, files, guard, runtime, training  # noqa: E402
from common.attacks import autoattack  # noqa: E402
from common.evaluation import Evaluator  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402
from timing import machine  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, 'mnist_challenge', 'configs', 'fast.json')
SEEDS = (4557077, 1, 2)


def evaluate(config, model_dir, test, attacks=(), first=1000):
  """{'natural', 'pgd40', 'pgd100x10', and each AutoAttack attack in `attacks`} (%) of the
  model in model_dir, and the seconds."""
  model = MNIST.build_model(config)
  step = checkpoints.restore_model(model, checkpoints.latest(model_dir))
  params = MNIST.attack_params(config)  # PGD-40, step 0.01, random start
  began = time.time()
  pgd40 = Evaluator(model, params, seed=0).attack(test, 500)
  pgd100 = Evaluator(model, dataclasses.replace(params, num_steps=100), restarts=10,
                     seed=0).attack(test.head(first), 500)
  figures = {'step': step, 'natural': 100 * pgd40.nat_accuracy,
             'pgd40': 100 * pgd40.adv_accuracy, 'pgd100x10': 100 * pgd100.adv_accuracy}
  if attacks:
    head = test.head(first)
    report = autoattack.evaluate(model, head.images, head.labels, params.epsilon,
                                 attacks=attacks, log=lambda *a, **k: None)
    figures.update({o.attack: 100 * o.robust_accuracy for o in report.outcomes})
  return {**figures, 'seconds': time.time() - began}


def export(config, source_dir, figures, target):
  """The model in source_dir as a weights-only checkpoint in target, with the config and
  the figures (evaluation.json); target must not exist."""
  if os.path.exists(target):
    raise SystemExit(f'{target} exists; remove it first')
  model = MNIST.build_model(config)
  step = checkpoints.restore_model(model, checkpoints.latest(source_dir))
  os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
  staging = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(target)))
  os.chmod(staging, 0o755)  # mkdtemp's is private; a shipped model is for everyone to read
  checkpoints.save_model(model, step, staging)
  # Paths relative to the directory, as a config file's are: itself, the default data.
  files.save_text(os.path.join(staging, 'config.json'), config.replace(
      model_dir='.', data_dir='../../../mnist_challenge/MNIST_data',
      store_adv_path='attack.npy', pred_path='pred.npy').to_json())
  files.save_text(os.path.join(staging, 'evaluation.json'),
                  json.dumps(figures, indent=2) + '\n')
  os.replace(staging, target)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--seeds', type=int, default=3, help='the first SEEDS of '
                      + ', '.join(map(str, SEEDS)))
  parser.add_argument('--seed', type=int, action='append', default=[],
                      help='run this seed (repeatable) instead of --seeds\'s')
  parser.add_argument('--recipe', default=RECIPE, help='the config file to train (default: '
                      'mnist_challenge/configs/fast.json); its seed is replaced by each seed\'s')
  parser.add_argument('--export', default='')
  parser.add_argument('--work_dir', default='')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=JSON',
                      help='change a key of the recipe, e.g. --set training_step_size=0.3')
  parser.add_argument('--autoattack', default='', metavar='ATTACKS',
                      help='AutoAttack attacks to run on the first 1,000 too, e.g. apgd-ce,apgd-t '
                      '(as autoattack.py runs them: each on what the ones before left)')
  options = parser.parse_args()
  attacks = tuple(a for a in options.autoattack.split(',') if a)
  unknown = [a for a in attacks if a not in autoattack.STANDARD]
  if unknown:
    parser.error(f'unknown AutoAttack attack(s) {", ".join(unknown)}; use: '
                 + ', '.join(autoattack.STANDARD))
  runtime.start()
  print(machine())
  work = options.work_dir or tempfile.mkdtemp(prefix='fast-mnist-')
  rows = []
  seeds = options.seed or SEEDS[:options.seeds]
  for seed in seeds:
    changes = {key: json.loads(value) for key, value in
               (item.split('=', 1) for item in options.set)}
    config = MNIST.load_config(options.recipe, {**changes, 'data_dir': options.data_dir,
                                        'random_seed': seed,
                                        'model_dir': os.path.join(work, f'seed{seed}')})
    began = time.time()
    try:
      training.train(MNIST, config, log=lambda *a, **k: None)
      outcome = 'finished'
    except guard.CatastrophicOverfitting as e:
      outcome = f'stopped by the guard: {e}'
    seconds = time.time() - began
    test = MNIST.load_data(config).test
    with open(os.path.join(config.model_dir, guard.BEST_DIR, 'best.json')) as f:
      best = json.load(f)
    final = evaluate(config, config.model_dir, test, attacks)
    chosen = (final if best['step'] == final['step'] else
              evaluate(config, os.path.join(config.model_dir, guard.BEST_DIR), test, attacks))
    rows.append((seed, seconds, outcome, best, final, chosen))
    print(f'\nseed {seed}: trained in {seconds:.0f} s ({outcome}); the guard\'s best: '
          f'{100 * best["accuracy"]:.2f}% held-out PGD-10 at step {best["step"]}')
    for name, figures in (('final', final), ('best', chosen)):
      print(f'  {name:<5} step {figures["step"]:>5}: natural {figures["natural"]:.2f}%, '
            f'PGD-40 {figures["pgd40"]:.2f}%, PGD-100 x 10 (first 1,000) '
            f'{figures["pgd100x10"]:.2f}%' + ''.join(
                f', {attack} {figures[attack]:.2f}%' for attack in attacks) +
            f'   ({figures["seconds"]:.0f} s)')
    sys.stdout.flush()
    if options.export and seed == seeds[0]:
      export(config, os.path.join(config.model_dir, guard.BEST_DIR),
             {**chosen, 'training seconds': seconds, 'seed': seed,
              'held-out PGD-10 at the best step': best['accuracy']}, options.export)
      print(f'  exported the best model to {options.export}')
  if not options.work_dir:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()
