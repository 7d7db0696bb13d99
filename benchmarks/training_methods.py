"""The training methods on MNIST at equal wall time: the PGD-3 recipe
(mnist_challenge/configs/fast.json) is trained first and timed; each other method's recipe
(configs/<method>.json) is then trained for as many steps as fit that time (its seconds per
step measured by a short run first; `--time_fraction` scales the budget, e.g. 0.6 for YOPO's
goal), and every model is evaluated alike: natural, FGSM (one step of ε from the image, as
the regularisers' and neural ODEs' authors report) and PGD-40 on all 10,000 test images,
PGD-100 with 10 restarts and AutoAttack (APGD-CE, APGD-T, then Square, whose gains beyond the
gradient attacks, the Square margin in points, are the masking warning) on the first 1,000;
ε 0.3, float32.

  python benchmarks/training_methods.py --data_dir ../shared/data/mnist
  python benchmarks/training_methods.py ... --methods yopo --time_fraction 0.6
  python benchmarks/training_methods.py ... --model small_cnn --methods pgd40,yopo --seconds 1800

--model small_cnn trains the Small CNN of TRADES and YOPO instead (the slides' table:
`pgd40` is PGD-40 training, `yopo` YOPO-5-10) and adds the CW column (PGD-40 on the CW loss);
--seconds fixes the budget instead of timing the PGD-3 recipe. The final model of each run is
evaluated (the guard's best is reported beside it).
"""
import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from common import cli  # noqa: E402,F401  (TensorFlow starts quietly)
from common import checkpoints, guard, runtime, training  # noqa: E402
from common.attacks import autoattack  # noqa: E402
from common.evaluation import Evaluator  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402
from timing import machine  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'mnist_challenge', 'configs')
# {name: (recipe, changes)}: our PGD-3 recipe, the methods' recipes, and PGD-40 training.
METHODS = {
    'pgd3': ('fast.json', {}),
    'trades': ('trades.json', {}),
    'yopo': ('yopo.json', {}),
    'bilateral': ('bilateral.json', {}),
    'mma': ('mma.json', {}),
    'jacobian': ('jacobian.json', {}),
    'cross_lipschitz': ('cross_lipschitz.json', {}),
    'ode': ('ode.json', {}),
    'tisode': ('tisode.json', {}),
    'pgd40': ('fast.json', {'training_num_steps': 40, 'training_step_size': 0.01}),
}
CALIBRATION_STEPS = 30


def config_for(method, options, work, **changes):
  recipe, own = METHODS[method]
  return MNIST.load_config(os.path.join(CONFIGS, recipe), {
      **own, 'data_dir': options.data_dir,
      **({'model': options.model} if options.model else {}),
      'model_dir': os.path.join(work, method), **changes})


def seconds_per_step(config, work):
  """Seconds per training step of `config` (no guard): after its first steps (tracing), the
  time of a run of 2k more steps less that of a run of k more, so that a run's fixed costs
  (restoring, starting the data pipeline, the last checkpoint) cancel; they had made the
  fastest methods' steps look 25% slower."""
  timing_dir = os.path.join(work, 'calibration')
  shutil.rmtree(timing_dir, ignore_errors=True)
  short = config.replace(model_dir=timing_dir, robustness_check_steps=0,
                         max_num_training_steps=CALIBRATION_STEPS, lr_schedule='piecewise')
  trainer = training.Trainer(MNIST, short, log=lambda *a, **k: None)
  trainer.run()  # traces the step

  def run_until(steps):  # resumes with the traced step
    trainer.config = short.replace(max_num_training_steps=steps)
    began = time.time()
    trainer.run()
    return time.time() - began
  k_more = run_until(2 * CALIBRATION_STEPS)
  two_k_more = run_until(4 * CALIBRATION_STEPS)
  shutil.rmtree(timing_dir, ignore_errors=True)
  return (two_k_more - k_more) / CALIBRATION_STEPS


def evaluate(config, model_dir, test, first, with_cw, restarts_first=None):
  """{'natural', 'fgsm', 'pgd40', 'pgd100x10', 'apgd-ce', 'apgd-t', 'square', 'cw40'
  (with_cw), 'square margin' (points), 'masking warning'} (%) of the model in model_dir."""
  model = MNIST.build_model(config)
  checkpoints.restore_model(model, checkpoints.latest(model_dir))
  params = dataclasses.replace(MNIST.attack_params(config), epsilon=0.3, num_steps=40,
                               step_size=0.01, random_start=True, loss_func='xent')
  pgd40 = Evaluator(model, params, seed=0).attack(test, 500)
  figures = {'natural': 100 * pgd40.nat_accuracy, 'pgd40': 100 * pgd40.adv_accuracy}
  fgsm = dataclasses.replace(params, num_steps=1, step_size=0.3, random_start=False)
  figures['fgsm'] = 100 * Evaluator(model, fgsm, seed=0).attack(test, 500).adv_accuracy
  head = test.head(first)
  restarts_first = first if restarts_first is None else restarts_first
  figures['pgd100x10'] = (100 * Evaluator(
      model, dataclasses.replace(params, num_steps=100), restarts=10, seed=0).attack(
          test.head(restarts_first), 500).adv_accuracy if restarts_first else float('nan'))
  if with_cw:
    figures['cw40'] = 100 * Evaluator(model, dataclasses.replace(params, loss_func='cw'),
                                      seed=0).attack(test, 500).adv_accuracy
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    report = autoattack.evaluate(model, head.images, head.labels, 0.3,
                                 attacks=('apgd-ce', 'apgd-t', 'square'),
                                 log=lambda *a, **k: None)
  for outcome in report.outcomes:
    figures[outcome.attack] = 100 * outcome.robust_accuracy
  figures['square margin'] = min(figures['apgd-ce'], figures['apgd-t']) - figures['square']
  figures['masking warning'] = any('Square' in str(w.message) for w in caught)
  return figures


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--methods', default='pgd3,yopo,bilateral,mma,trades',
                      help='comma-separated, from: ' + ', '.join(METHODS))
  parser.add_argument('--model', default='', help='the network of every recipe (madry, '
                      'small_cnn, ...); default: each recipe\'s own')
  parser.add_argument('--seconds', type=float, default=0,
                      help='the budget; 0: the PGD-3 recipe\'s training time')
  parser.add_argument('--time_fraction', type=float, default=1.0)
  parser.add_argument('--first', type=int, default=1000,
                      help='test images for PGD-100 x 10 and AutoAttack')
  parser.add_argument('--steps', type=int, default=0,
                      help='train each method this many steps instead of a time budget')
  parser.add_argument('--eval_examples', type=int, default=10000,
                      help='test images for natural, FGSM and PGD-40 (the first N)')
  parser.add_argument('--restarts_examples', type=int, default=None,
                      help='test images for PGD-100 x 10 (default: --first; 0: not run)')
  parser.add_argument('--work_dir', default='')
  options = parser.parse_args()
  methods = options.methods.split(',')
  if not (options.seconds or options.steps):  # the PGD-3 recipe first: its time is the budget
    methods = ['pgd3'] + [m for m in methods if m != 'pgd3']
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise SystemExit(f'unknown method(s) {", ".join(unknown)}; use: {", ".join(METHODS)}')
  runtime.start()
  print(machine())
  work = options.work_dir or tempfile.mkdtemp(prefix='methods-mnist-')
  budget = options.seconds
  rows = []
  for method in methods:
    config = config_for(method, options, work)
    if options.steps:
      steps = options.steps
      checks = max(1, steps // 5)
      config = config.replace(max_num_training_steps=steps, num_checkpoint_steps=checks,
                              robustness_check_steps=checks if config.robustness_check_steps
                              else 0)
    elif method == 'pgd3' and not budget:
      steps = config.max_num_training_steps
    else:
      per_step = seconds_per_step(config, work)
      steps = max(1, int(budget * options.time_fraction / per_step))
      checks = max(1, steps // 5)
      config = config.replace(max_num_training_steps=steps, num_checkpoint_steps=checks,
                              robustness_check_steps=checks if config.robustness_check_steps
                              else 0)
    began = time.time()
    try:
      training.train(MNIST, config, log=lambda *a, **k: None)
      outcome = 'finished'
    except guard.CatastrophicOverfitting as stopped:
      outcome = (f'stopped by the guard at step {stopped.step} of {steps}, '
                 f'step {stopped.best_step} put back')
      steps = stopped.step  # the steps it trained
    seconds = time.time() - began
    if method == 'pgd3' and not budget:
      budget = seconds
    test = MNIST.load_data(config).test.head(options.eval_examples)
    figures = evaluate(config, config.model_dir, test, options.first,
                       with_cw=options.model == 'small_cnn',
                       restarts_first=options.restarts_examples)
    best_path = os.path.join(config.model_dir, guard.BEST_DIR, 'best.json')
    best = {'accuracy': float('nan'), 'step': None}  # no guard (robustness_check_steps 0)
    if os.path.exists(best_path):
      with open(best_path) as f:
        best = json.load(f)
    rows.append((method, steps, seconds, outcome, best, figures))
    print(f'{method}: {steps} steps in {seconds:.0f} s ({outcome}; the guard\'s best '
          f'{100 * best["accuracy"]:.2f}% at step {best["step"]}): ' + ', '.join(
              f'{k} {v:.2f}%' if not isinstance(v, bool) else f'{k} {v}'
              for k, v in figures.items()))
    sys.stdout.flush()
  length = (f'{options.steps} steps each' if options.steps else
            f'budget {budget:.0f} s x {options.time_fraction:g}')
  network = options.model or "each recipe's"
  print(f'\nMNIST, model {network}, {length}; natural, FGSM, '
        f'PGD-40{", CW-40" if options.model == "small_cnn" else ""} on the first '
        f'{options.eval_examples}; the rest on the first {options.first}')
  columns = ['natural', 'fgsm', 'pgd40'] + (['cw40'] if options.model == 'small_cnn' else []) + [
      'pgd100x10', 'apgd-ce', 'apgd-t', 'square', 'square margin']
  print('| method | steps | seconds | ' + ' | '.join(columns) + ' | masking warning |')
  print('| --- ' * (len(columns) + 4) + '|')
  for method, steps, seconds, outcome, _, figures in rows:
    print(f'| {method}{"" if outcome == "finished" else " (" + outcome + ")"} | {steps} | '
          f'{seconds:.0f} | ' + ' | '.join(f'{figures[c]:.2f}' for c in columns)
          + f' | {"yes" if figures["masking warning"] else "no"} |')
  if not options.work_dir:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()
