"""Obfuscated gradients, measured (Athalye, Carlini and Wagner, ICML 2018): each input defence
of common/defences on MNIST at ε 0.3, attacked naively and then with the attack adapted to it
(BPDA for the deterministic defences, EOT for the randomised one), beside the undefended
models.

Models, trained here in minutes (the Small CNN; --work_dir keeps them between runs):
* natural: natural training (ε 0), no defence; also the network behind random_resize_pad
  (Xie et al. put their transform in front of a trained network);
* thermometer (natural): natural training behind a 16-level thermometer code;
* bit_depth (natural): natural training behind 1-bit reduction (Xu et al.'s for MNIST);
* thermometer (PGD): configs/thermometer.json, PGD training behind the thermometer code,
  the training attack through the soft code (BPDA);
* robust: the shipped PGD-trained Small CNN (checkpoints/mnist/fast_robust), no defence.

Each row: natural accuracy; PGD-40 (step 0.01, random start) naive; PGD-40 adapted (BPDA "on";
for random_resize_pad EOT over 20 draws); AutoAttack's standard version naive (APGD-CE,
APGD-T, FAB-T, Square) and adapted (standard with BPDA; rand for random_resize_pad); which
warnings AutoAttack's checks gave (zero gradient, randomised, Square beating the gradient
attacks). PGD on the first --num_examples test images, AutoAttack on the first --first.

  python benchmarks/obfuscated_gradients.py --data_dir ../shared/data/mnist \\
      --work_dir /tmp/obfuscated
"""
import argparse
import dataclasses
import json
import os
import sys
import time
import warnings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from common import cli  # noqa: E402,F401  (TensorFlow starts quietly)
import tensorflow as tf  # noqa: E402
from common import checkpoints, defences, runtime, training  # noqa: E402
from common.attacks import autoattack  # noqa: E402
from common.evaluation import Evaluator  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402
from timing import machine  # noqa: E402

CONFIGS = os.path.join(REPO, 'mnist_challenge', 'configs')
NATURAL = {'model': 'small_cnn', 'epsilon': 0.0, 'max_num_training_steps': 1000,
           'training_batch_size': 100, 'lr_schedule': 'one_cycle', 'learning_rate': 0.01,
           'num_checkpoint_steps': 1000, 'num_output_steps': 250, 'num_summary_steps': 250}
# {name: (recipe file or None: the defaults, changes)}
TRAINED = {
    'natural': (None, NATURAL),
    'thermometer_natural': (None, {**NATURAL, 'defence': 'thermometer'}),
    'bit_depth_natural': (None, {**NATURAL, 'defence': 'bit_depth'}),
    'thermometer_pgd': ('thermometer.json', {}),
}
# {row: (its label, model, defence, the adapted attack's changes, AutoAttack's adapted
# version)}
ROWS = {
    'natural': ('undefended, natural', 'natural', 'none', None, None),
    'thermometer': ('thermometer, natural', 'thermometer_natural', 'thermometer',
                    {'bpda': 'on'}, 'standard'),
    'bit_depth': ('bit_depth, natural', 'bit_depth_natural', 'bit_depth', {'bpda': 'on'},
                  'standard'),
    'random_resize_pad': ('random_resize_pad, natural', 'natural', 'random_resize_pad',
                          {'eot_samples': 20}, 'rand'),
    'thermometer_pgd': ('thermometer, PGD-trained', 'thermometer_pgd', 'thermometer',
                        {'bpda': 'on'}, 'standard'),
    'robust': ('undefended, PGD-trained', 'robust', 'none', None, None),
}
# Athalye et al. 2018, Table 1 (their accuracies under BPDA/EOT, CIFAR-10 or ImageNet: the
# paper has no MNIST rows for these defences), for the shape only.
PAPER = {'thermometer': 'thermometer (Buckman et al.): 0% (CIFAR-10, ε 8/255)',
         'thermometer_pgd': 'thermometer + adversarial training: 30% (CIFAR-10)',
         'bit_depth': 'input transformations (Guo et al.): 0% (ImageNet)',
         'random_resize_pad': 'randomisation (Xie et al.): 0% (ImageNet)',
         'robust': 'Madry et al.: 89% (MNIST, ε 0.3; 47% CIFAR-10)'}


def config_of(name, options):
  recipe, changes = TRAINED[name]
  path = os.path.join(CONFIGS, recipe) if recipe else None
  shortened = ({'max_num_training_steps': options.training_steps,
                'robustness_check_steps': 0} if options.training_steps else {})
  return MNIST.load_config(path, {**changes, **shortened, 'data_dir': options.data_dir,
                                  'model_dir': os.path.join(options.work_dir, name)})


def train_if_needed(name, options, log):
  config = config_of(name, options)
  if checkpoints.latest(config.model_dir) and os.path.exists(
      os.path.join(config.model_dir, 'done')):
    log(f'{name}: trained already in {config.model_dir}')
    return
  began = time.perf_counter()
  training.train(MNIST, config, log=lambda *a, **k: None)
  seconds = time.perf_counter() - began
  with open(os.path.join(config.model_dir, 'done'), 'w') as f:
    f.write(f'{seconds:.0f}\n')
  log(f'{name}: trained in {seconds:.0f} s ({config.max_num_training_steps} steps)')


def network_of(model, options):
  if model == 'robust':
    model_dir = os.path.join(REPO, 'checkpoints', 'mnist', 'fast_robust')
    config = MNIST.load_config(os.path.join(model_dir, 'config.json'),
                               {'model_dir': model_dir, 'data_dir': options.data_dir})
  else:
    config = config_of(model, options)
  network = MNIST.build_model(config)
  checkpoints.restore_model(network, checkpoints.latest(config.model_dir))
  return network, config


def row(key, options, test, log):
  label, model, defence, adapted, version = ROWS[key]
  network, trained = network_of(model, options)
  levels = {'defence': defence, 'bpda': 'off', 'eot_samples': 1}
  naive_config = trained.replace(**levels)
  params = dataclasses.replace(MNIST.attack_params(naive_config), epsilon=0.3, num_steps=40,
                               step_size=0.01, random_start=True, loss_func='xent')
  figures = {}
  began = time.perf_counter()

  def defended(config):
    return defences.defend(network, config, MNIST, seed=0, what=label)

  result = Evaluator(defended(naive_config), params, seed=0).attack(test, 500)
  figures['natural'] = 100 * result.nat_accuracy
  figures['pgd40 naive'] = 100 * result.adv_accuracy
  adapted_config = naive_config.replace(**adapted) if adapted else None
  if adapted_config is not None:
    adapted_params = dataclasses.replace(params, eot_samples=adapted_config.eot_samples)
    figures['pgd40 adapted'] = 100 * Evaluator(defended(adapted_config), adapted_params,
                                               seed=0).attack(test, 500).adv_accuracy
  head = test.head(options.first)
  runs = [('autoattack naive', naive_config, 'standard')]
  if adapted_config is not None:
    runs.append((f'autoattack adapted ({version})', adapted_config, version))
  warned = {}
  for name, config, aa_version in runs:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      report = autoattack.AutoAttack(
          defended(config), 0.3, 0.0, 1.0, (28, 28, 1), (), 500, 0,
          log=lambda *a, **k: None, version=aa_version,
          **autoattack.budget(options.iterations)).run(head.images, head.labels)
    figures[name] = 100 * report.robust_accuracy
    warned[name] = sorted({kind for w in caught for kind, words in (
        ('zero gradient', 'input gradient is zero'), ('randomised', 'gives other logits'),
        ('Square beats gradients', 'Square, which uses no gradients')) if words in str(
            w.message)})
  figures['warnings'] = warned
  figures['seconds'] = round(time.perf_counter() - began, 1)
  log(f'{label:<28} ' + '  '.join(
      f'{k} {v:.1f}' for k, v in figures.items() if isinstance(v, float) and k != 'seconds')
      + f'  warnings {warned}  ({figures["seconds"]:.0f} s)')
  return figures


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--work_dir', default='/tmp/obfuscated_gradients')
  parser.add_argument('--num_examples', type=int, default=1000,
                      help='test images for natural accuracy and PGD-40')
  parser.add_argument('--first', type=int, default=500, help='test images for AutoAttack')
  parser.add_argument('--rows', default=','.join(ROWS))
  parser.add_argument('--training_steps', type=int, default=0,
                      help='train every model this many steps (0: each recipe\'s; for a quick '
                           'look only)')
  parser.add_argument('--iterations', type=int, default=autoattack.STANDARD_ITERATIONS,
                      help='AutoAttack\'s iterations (the standard: 100; fewer for a quick '
                           'look only)')
  options = parser.parse_args()
  log = lambda *a: print(*a, flush=True)
  runtime.start()
  tf.get_logger().setLevel('ERROR')  # each row's evaluators trace anew: no retracing notes
  log(machine())
  labels = options.rows.split(',')
  unknown = [r for r in labels if r not in ROWS]
  if unknown:
    sys.exit(f'error: unknown row(s) {unknown}; use: {", ".join(ROWS)}')
  for name in dict.fromkeys(ROWS[r][1] for r in labels):
    if name != 'robust':
      train_if_needed(name, options, log)
  test = MNIST.load_data(config_of('natural', options)).test.head(options.num_examples)
  log(f'\nMNIST, ε 0.3, PGD-40 on the first {len(test)} test images, AutoAttack on the first '
      f'{options.first}:')
  results = {key: row(key, options, test, log) for key in labels}
  os.makedirs(options.work_dir, exist_ok=True)
  with open(os.path.join(options.work_dir, 'obfuscated_gradients.json'), 'w') as f:
    json.dump({'machine': machine(), 'num_examples': len(test), 'first': options.first,
               'training steps': options.training_steps or 'the recipes\'',
               'autoattack iterations': options.iterations,
               'rows': results, 'paper': PAPER}, f, indent=1)
  log('\n| defence, training | natural | PGD-40 naive | PGD-40 adapted | AutoAttack naive | '
      'AutoAttack adapted | warnings (naive) | Athalye et al. |')
  log('|---|---|---|---|---|---|---|---|')
  for key, figures in results.items():
    adapted_aa = [v for k, v in figures.items() if k.startswith('autoattack adapted')]
    cell = lambda v: '–' if v is None else f'{v:.1f}%'
    log(f'| {ROWS[key][0]} | {cell(figures["natural"])} | {cell(figures["pgd40 naive"])} | '
        f'{cell(figures.get("pgd40 adapted"))} | {cell(figures["autoattack naive"])} | '
        f'{cell(adapted_aa[0] if adapted_aa else None)} | '
        f'{", ".join(figures["warnings"]["autoattack naive"]) or "none"} | '
        f'{PAPER.get(key, "")} |')


if __name__ == '__main__':
  main()
