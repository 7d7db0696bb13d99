"""The commands of a challenge (train, eval, pgd_attack, run_attack, convert_checkpoint,
evaluate (the paper's table), landscape, autoattack, attack (any attack by name),
export_model) as importable functions
of (challenge, config). Each challenge's scripts are thin absl mains over these. The
evaluation commands take their model from model_dir's checkpoint or, with `model_path`,
from a model file (common/model_files.py)."""
import contextlib
import dataclasses
import datetime
import json
import math
import os
import sys
import time

import numpy as np
import tensorflow as tf

from common import (checkpoints, defences, distribute, files, landscape, model_files,
                    paper_table, precision, runtime, submission, tf1_checkpoints, training)
from common.attacks import autoattack, pgd, registry
from common.attacks.threat import ThreatModel
from common.data import Split
from common.errors import ChallengeError, UnreadableCheckpoint, require_finite_logits
from common.evaluation import Evaluator, attack_by_name


def _norm_note(params) -> str:
  """' (ℓ2)' after an ε of another norm than the original's ℓ∞ (whose lines stay as they were)."""
  return '' if params.norm == 'linf' else ' (ℓ2)'


# --- what a command reads and writes -----------------------------------------------------

def _model_inputs(where: str):
  """(what, path) of what reading a model takes: a model file, or a model_dir with the files
  its checkpoints are read from (the index, config.json, checkpoint-<step>.*)."""
  if model_files.is_model_file(where):
    return [('the model file', where)]
  found = [('the model_dir', where)]
  if os.path.isdir(where):
    found += [(f'model_dir\'s {name}', os.path.join(where, name))
              for name in sorted(os.listdir(where))
              if name in (checkpoints.CHECKPOINT_NAME, 'config.json')
              or name.startswith(checkpoints.CHECKPOINT_NAME + '-')]
  return found


def _check_outputs(challenge, config, outputs, models=(), inputs=()):
  """Before any work: each output (what, path, is_directory) can be written, and none is one
  of the command's inputs (the config file, the data files, the models, `inputs`)."""
  for what, path, is_directory in outputs:
    files.check_output(path, what, directory=is_directory)
  read = [('the config file', config.source)]
  read += [('a data file', path) for path in challenge.data_files(config)]
  for model in models:
    read += _model_inputs(model)
  files.check_distinct([(what, path) for what, path, _ in outputs], read + list(inputs))


# Options of train.py beyond the config: how this machine (or cluster) trains, not what.
TRAIN_OPTIONS = {
    'strategy': ('auto', 'how training is distributed: ' + '; '.join(
        f'{name}: {what}' for name, what in distribute.STRATEGIES.items())),
    'cluster_resolver': ('', 'where the cluster of hosts is described: ' + '; '.join(
        f'{name}: {what}' for name, what in distribute.CLUSTER_RESOLVERS.items())
        + '; empty: TF_CONFIG if it names several workers'),
    'slurm_port': (distribute.SLURM_PORT, 'with --cluster_resolver slurm: the port of the '
                   'first task on each host (the next tasks take the next ports)'),
}


def train(challenge, config, strategy='auto', cluster_resolver='',
          slurm_port=distribute.SLURM_PORT):
  return training.train(challenge, config,
                        distribute.get_strategy(strategy, cluster_resolver, slurm_port),
                        announce=True)


def _evaluation_setup(challenge, config):
  """(strategy, device scope) for evaluation: eval_on_cpu pins it to the CPU."""
  if config.eval_on_cpu:
    return tf.distribute.get_strategy(), tf.device('/cpu:0')
  return distribute.local_strategy(), contextlib.nullcontext()


# The evaluation commands' options for a model file instead of model_dir's checkpoint.
MODEL_FILE_OPTIONS = {
    'model_path': ('', "a model file to evaluate instead of model_dir's checkpoint: a Keras "
                       '.keras file or a SavedModel directory taking the challenge\'s inputs '
                       'and returning logits (docs/models.md)'),
    'unsafe_model': (False, 'with --model_path: let a .keras file run the Python code it '
                            'carries (Lambda layers); only for a file you trust like a program'),
}


def _check_model_file_options(model_path, unsafe_model):
  if unsafe_model and not model_path:
    raise ChallengeError('--unsafe_model applies to a model file: give --model_path too')
  if model_path:
    model_files.require_model_file(model_path)  # not a model_dir taken for one


def _model_to_evaluate(challenge, config, strategy, model_path, unsafe_model, log):
  """(network, build) under `strategy`: the file at model_path, checked against the
  challenge's contract (build None: no twin in another precision), or model_dir's network
  (model_files.architecture_config) for its checkpoints (not yet restored). The config's
  defence is checked here; `_defended` puts it in front."""
  expected = defences.network_input_shape(config, challenge)
  with strategy.scope():
    if model_path:
      return model_files.load_checked(challenge, model_path, unsafe_model, log,
                                      expected), None
    network = model_files.architecture_config(challenge, config, config.model_dir)
    return challenge.build_model(network), lambda: challenge.build_model(network)


def _defended(challenge, config, network, seed, what):
  """network behind the config's defence (itself without one); a randomised defence's
  draws from `seed`."""
  return defences.defend(network, config, challenge, seed, what)


def _model_and_evaluator(challenge, config, strategy, log, attack=True, model_path='',
                         unsafe_model=False):
  """The float32 model (built for model_dir's checkpoints, or loaded from model_path) and
  its evaluator; with `attack`, the attack runs in eval_precision (float32 unless the user
  opts in, which is printed). The random starts are stateless draws from the config's seed
  and each example's index: every run attacks from the same points (the original drew new
  ones), which op determinism requires."""
  _check_model_file_options(model_path, unsafe_model)
  attack_precision = precision.check(config.eval_precision if attack else 'float32',
                                     'eval_precision')
  defences.require_float32(config, attack_precision)
  model, build = _model_to_evaluate(challenge, config, strategy, model_path, unsafe_model,
                                    log)
  name = model_path or f'the model of {config.model_dir}'
  defended = _defended(challenge, config, model, challenge.seed(config), name)
  twin = model_files.twin(model, build, attack_precision) if defended is model else (
      precision.Twin(defended, None, 'float32'))
  precision.announce_attack_precision(attack_precision, log)
  jit = runtime.set_up(strategy, attack_precision, config.jit_compile, config.deterministic,
                       log if attack else None)  # run_attack's output stays the original's
  return model, Evaluator(defended, challenge.attack_params(config), strategy, twin,
                          seed=challenge.seed(config), jit_compile=jit, name=name)


# Options of eval.py beyond the config: {name: (default, help)}; cli.run makes them flags.
EVAL_OPTIONS = {
    'once': (False, 'evaluate the latest checkpoint once and exit'),
    'poll_seconds': (10.0, 'how often to look for a new checkpoint'),
    **MODEL_FILE_OPTIONS,
}


def _print_results(results, config, log):
  log('natural: {:.2f}%'.format(100 * results.nat_accuracy))
  log('adversarial: {:.2f}%'.format(100 * results.adv_accuracy))
  log('avg nat loss: {:.4f}'.format(results.avg_nat_xent))
  log('avg adv loss: {:.4f}'.format(results.avg_adv_xent))
  if config.eval_precision != 'float32':
    log(f'(attack in {config.eval_precision})')


def evaluate(challenge, config, once=False, poll_seconds=10.0, model_path='',
             unsafe_model=False, log=print, max_polls=None):
  """Evaluates each new checkpoint of model_dir (the latest, as it appears) until
  interrupted; with `once`, the latest one, then returns its Results. With `model_path`
  (and `once`): that model file, without TensorBoard summaries (it has no step)."""
  if model_path and not once:
    raise ChallengeError('--model_path needs --once: eval.py watches model_dir for new '
                         'checkpoints, and a model file is evaluated once')
  strategy, device = _evaluation_setup(challenge, config)
  eval_dir = os.path.join(config.model_dir, 'eval')
  if not model_path:  # its summaries: writable, before the first evaluation
    files.require_directory(config.model_dir, 'model_dir')
    _check_outputs(challenge, config, [('the summaries\' directory', eval_dir, True)])
  with device:
    model, evaluator = _model_and_evaluator(challenge, config, strategy, log,
                                            model_path=model_path, unsafe_model=unsafe_model)
    test = challenge.load_data(config).test.head(config.num_eval_examples)
    if model_path:
      log(f'\nModel {model_path}, evaluating ...   ({datetime.datetime.now()})')
      results = evaluator.attack(test, config.eval_batch_size)
      _print_results(results, config, log)
      return results
    if not once:  # as the original: eval may start before training
      files.make_directory(eval_dir, 'the summaries\' directory')
    writer = None
    last_path, waiting, polls = None, False, 0
    while True:
      path = checkpoints.latest(config.model_dir)
      if path is None and once:
        raise ChallengeError(f'nothing to evaluate: no checkpoint in {config.model_dir}')
      if path is not None and path != last_path:
        log(f'\nCheckpoint {path}, evaluating ...   ({datetime.datetime.now()})')
        last_path, waiting = path, False
        restore = lambda p: checkpoints.restore_model(model, p, challenge.tf1_variables)
        try:
          if once:  # the newest readable one, with a warning about any passed over
            path, step = checkpoints.restore_newest_readable(config.model_dir, restore, log)
          else:
            step = restore(path)
          evaluator.name = path
        except tf.errors.NotFoundError as e:
          log(f'Checkpoint {path} could not be read ({type(e).__name__}); it was probably '
              'rotated out by train.py. Skipping it.')
          continue
        except UnreadableCheckpoint as e:
          log(f'warning: {e}. Skipping it.')
          continue
        results = evaluator.attack(test, config.eval_batch_size)
        writer = writer or tf.summary.create_file_writer(eval_dir)
        with writer.as_default(step=step):
          for tag, value in (('xent adv eval', results.avg_adv_xent),
                             ('xent adv', results.avg_adv_xent),
                             ('xent nat', results.avg_nat_xent),
                             ('accuracy adv eval', results.adv_accuracy),
                             ('accuracy adv', results.adv_accuracy),
                             ('accuracy nat', results.nat_accuracy)):
            tf.summary.scalar(tag, value)
        writer.flush()
        _print_results(results, config, log)
        if once:
          return results
        continue
      if max_polls is not None and polls >= max_polls:
        return None
      polls += 1
      if not waiting:
        log('No checkpoint yet, waiting ...' if path is None else
            f'Waiting for the next checkpoint ...   ({datetime.datetime.now()})   ', end='')
        waiting = True
      else:
        log('.', end='')
      sys.stdout.flush()
      time.sleep(poll_seconds)


def _restored_evaluator(challenge, config, strategy, log, attack=True, model_path='',
                        unsafe_model=False):
  """An evaluator of the newest readable checkpoint of model_dir (or of model_path)."""
  model, evaluator = _model_and_evaluator(challenge, config, strategy, log, attack,
                                          model_path, unsafe_model)
  if not model_path:
    evaluator.name, _ = checkpoints.restore_newest_model(model, config.model_dir,
                                                         challenge.tf1_variables, log)
  return evaluator


def pgd_attack(challenge, config, model_path='', unsafe_model=False, log=print):
  """Attacks the latest checkpoint (or model_path) on the first num_eval_examples test
  images and saves them (float32, the model's input layout) to store_adv_path."""
  _check_outputs(challenge, config, [('store_adv_path', config.store_adv_path, False)],
                 [model_path or config.model_dir])
  if not model_path:
    checkpoints.require_latest(config.model_dir)
  evaluator = _restored_evaluator(challenge, config, distribute.local_strategy(), log,
                                  model_path=model_path, unsafe_model=unsafe_model)
  test = challenge.load_data(config).test.head(config.num_eval_examples)
  batch_size = config.eval_batch_size
  log('Iterating over {} batches'.format(math.ceil(len(test) / batch_size)))
  results = evaluator.attack(test, batch_size, keep_adversarial=True, log=lambda i: log(
      'batch size: {}'.format(min(batch_size, len(test) - i * batch_size))))
  log('Storing examples')
  files.save_npy(config.store_adv_path, results.adversarial.astype(np.float32),
                 'store_adv_path')
  log('Examples stored in {}'.format(config.store_adv_path))
  log('natural accuracy {:.2f}%, adversarial accuracy {:.2f}% (attack in {})'.format(
      100 * results.nat_accuracy, 100 * results.adv_accuracy, config.eval_precision))
  return results


def run_attack(challenge, config, model_path='', unsafe_model=False, log=print):
  """Validates the submission at store_adv_path against the whole test set, then scores it
  with the latest checkpoint (or model_path) and saves the predictions (int64) to
  pred_path."""
  def scorer():
    return _restored_evaluator(challenge, config, distribute.local_strategy(), log,
                               attack=False,  # scoring: float32 always
                               model_path=model_path, unsafe_model=unsafe_model)

  # Where the predictions go is checked first: never over the submission or another input.
  _check_outputs(challenge, config, [('pred_path', config.pred_path, False)],
                 [model_path or config.model_dir],
                 [('the submission (store_adv_path)', config.store_adv_path)])
  # A missing checkpoint, or a missing or wrong model file, fails before the submission is
  # read (a checkpoint is restored after it, as the original did).
  evaluator = None
  if model_path:
    evaluator = scorer()
  else:
    checkpoints.require_latest(config.model_dir)
  test = challenge.load_data(config).test
  params = challenge.attack_params(config)
  x_adv = submission.load(config.store_adv_path, test.images, params.epsilon,
                          challenge.pixel_max, params.norm)
  evaluator = evaluator or scorer()
  predictions = evaluator.predict(Split(x_adv, test.labels), config.eval_batch_size)
  accuracy = float(np.mean(predictions == test.labels))
  log('Accuracy: {:.2f}%'.format(100.0 * accuracy))
  files.save_npy(config.pred_path, predictions, 'pred_path')
  log('Output saved at {}'.format(config.pred_path))
  return accuracy


# Options of convert_checkpoint.py beyond the config.
CONVERT_OPTIONS = {
    'output_dir': ('', 'where to write the converted checkpoint; default: <model_dir>_converted'),
}


def convert_checkpoint(challenge, config, output_dir='', log=print):
  """Writes the original TF1 checkpoint latest in model_dir as a checkpoint of this project
  (weights, step and the optimizer slots that map) in output_dir; returns its path."""
  path = checkpoints.require_latest(config.model_dir)
  if not tf1_checkpoints.is_tf1(path):
    raise ChallengeError(f'{path} is already a checkpoint of this project; nothing to convert')
  output_dir = output_dir or config.model_dir.rstrip(os.sep) + '_converted'
  files.check_output(output_dir, '--output_dir', directory=True)
  if checkpoints.latest(output_dir):
    raise ChallengeError(f'{output_dir} already holds a checkpoint; choose another --output_dir')
  trainer = training.Trainer(challenge, config, log=log)
  step = trainer.restore_tf1(path)
  files.make_directory(output_dir, '--output_dir')
  with files.exclusive_lock(output_dir, '--output_dir', 'convert_checkpoint.py'):
    saved = checkpoints.save(checkpoints.manager(trainer.checkpoint, output_dir), step)
  log(f'Converted {path} to {saved}')
  return saved


# Options of evaluate.py (the paper's table) beyond the config.
TABLE_OPTIONS = {
    'source': ((), "a transfer source as NAME=MODEL_DIR or NAME=MODEL_FILE (repeatable), e.g. "
                   '--source "A\'=dir" --source B=b.keras; rows of a source not given are '
                   'listed as skipped'),
    'num_examples': (0, 'test images to evaluate (default: num_eval_examples)'),
    'target_rule': ('random', 'targeted PGD target: ' + '; '.join(
        f'"{name}": {what}' for name, what in pgd.TARGET_RULES.items())),
    'output_dir': ('', 'where to write table.csv and table.md; default: <model_dir>/paper_table'),
    'method': ((), 'run only the rows of this method (repeatable), e.g. --method PGD --method '
                   'CW; the others are listed as skipped. Methods: '
                   + ', '.join(paper_table.METHODS)),
    'attack': ((), 'a row more, after the paper\'s: NAME or NAME:ITERATIONS, the attack of '
                   'that name, white-box, in the config\'s norm and ε (ITERATIONS: as attack.py\'s '
                   '--iterations; default: the attack\'s), repeatable, e.g. --attack apgd-ce '
                   '--attack cw-linf:100. Names: ' + ', '.join(registry.ATTACKS)),
    **MODEL_FILE_OPTIONS,
}


def _parse_sources(specs):
  sources = {}
  for spec in specs:
    name, sep, model_dir = spec.partition('=')
    if not sep or not name or not model_dir:
      raise ChallengeError(
          f'--source must be NAME=MODEL_DIR or NAME=MODEL_FILE, found "{spec}"')
    if name in sources:
      raise ChallengeError(f'--source {name} is given twice')
    sources[name] = model_dir
  return sources


def evaluate_table(challenge, config, source=(), num_examples=0, target_rule='random',
                   output_dir='', method=(), attack=(), model_path='', unsafe_model=False,
                   log=print):
  """The paper's table for this challenge on model_dir's latest checkpoint (or model_path):
  prints each row (with the paper's figure and the wall time) and writes table.csv and
  table.md; `method`: only the rows of these methods are run (default: all); `attack`: a
  white-box row more per attack name (common/attacks/registry.py)."""
  _check_model_file_options(model_path, unsafe_model)
  sources = _parse_sources(source)
  rows = tuple(challenge.paper_table) + paper_table.named_rows(attack)
  output_dir = output_dir or model_files.results_dir(config.model_dir, model_path,
                                                     'paper_table')
  _check_outputs(challenge, config, [('--output_dir', output_dir, True)] + [
      ('--output_dir\'s ' + name, os.path.join(output_dir, name), False)
      for name in paper_table.OUTPUT_FILES], [model_path or config.model_dir, *sources.values()])
  num_examples = num_examples or config.num_eval_examples
  params = challenge.attack_params(config)
  evaluated = model_path or config.model_dir
  log(f'{challenge.name}: the paper\'s table on {evaluated}, first {num_examples} '
      f'test images, ε {params.epsilon:g}{_norm_note(params)}, step {params.step_size:g}, '
      f'targeted PGD: {target_rule}')
  results = paper_table.run(challenge, config, rows, sources,
                            num_examples, target_rule, log, methods=method or None,
                            model_path=model_path, unsafe_model=unsafe_model)
  what = f'model {model_path}' if model_path else f'model_dir {config.model_dir}'
  paper_table.write(results, params.epsilon, output_dir,
                    f'{challenge.name}, {what}, first {num_examples} '
                    f'test images, step {params.step_size:g}, targeted PGD: {target_rule}')
  log(f'Table written to {os.path.join(output_dir, "table.csv")} and table.md')
  return results


# Options of landscape.py beyond the config.
LANDSCAPE_OPTIONS = {
    'num_examples': (5, 'test images to study (the first ones)'),
    'restarts': (0, 'random starts per example; default: the paper\'s (MNIST 200, CIFAR-10 100)'),
    'compare_model_dir': ('', 'a second model (e.g. naturally trained) to study alike: a '
                              'model_dir or a model file'),
    'output_dir': ('', 'where to write landscape.npz and TensorBoard logs; default: '
                       '<model_dir>/landscape'),
    **MODEL_FILE_OPTIONS,
}


def loss_landscape(challenge, config, num_examples=5, restarts=0, compare_model_dir='',
                   output_dir='', model_path='', unsafe_model=False, log=print):
  """PGD (the config's attack) from many random starts on the first test images, for
  model_dir's model (or model_path) and optionally another: records the loss after every
  iteration of every restart; prints min/median/max of the final losses and outliers."""
  _check_model_file_options(model_path, unsafe_model)
  model_dirs = {'model': model_path or config.model_dir}
  if compare_model_dir:
    model_dirs['compared'] = compare_model_dir
  output_dir = output_dir or model_files.results_dir(config.model_dir, model_path, 'landscape')
  _check_outputs(challenge, config, [('--output_dir', output_dir, True), (
      '--output_dir\'s landscape.npz', os.path.join(output_dir, landscape.OUTPUT_FILE), False)]
      + [(f'--output_dir\'s {name}/', os.path.join(output_dir, name), True)
         for name in model_dirs], list(model_dirs.values()))
  restarts = restarts or challenge.landscape_restarts
  params = challenge.attack_params(config)
  test = challenge.load_data(config).test.head(num_examples)
  jit = runtime.set_up(tf.distribute.get_strategy(), 'float32', config.jit_compile,
                       config.deterministic, log)
  traces = {}
  for name, model_dir in model_dirs.items():
    model, _ = paper_table.load_model(challenge, config, model_dir, log,
                                      unsafe_model=unsafe_model, defend=True,
                                      seed=challenge.seed(config))
    traces[name] = landscape.trace_losses(model, test, params, restarts,
                                          challenge.seed(config), config.eval_batch_size, jit,
                                          name=model_dir)
    log(f'{name} ({model_dir}): PGD-{params.num_steps}, ε {params.epsilon:g}'
        f'{_norm_note(params)}, {restarts} random starts per example; final xent:')
    summary = landscape.summarise(traces[name][:, :, -1])
    for i in range(len(test)):
      log(f'  example {i} (label {test.labels[i]}): min {summary["min"][i]:.4f}, median '
          f'{summary["median"][i]:.4f}, max {summary["max"][i]:.4f}, '
          f'{summary["outliers"][i]} outlier restart(s)')
  landscape.write(traces, test.labels, output_dir)
  log(f'Written to {output_dir} (landscape.npz; tensorboard --logdir {output_dir})')
  return traces


# Options of autoattack.py beyond the config.
AUTOATTACK_OPTIONS = {
    'version': ('standard', 'standard: APGD-CE, APGD-T, FAB-T, Square, each on the points '
                            'still robust (Croce & Hein 2020); rand (randomised defences): '
                            'APGD-CE and APGD-DLR, each gradient averaged over 20 draws (EOT), '
                            'as the reference\'s version=\'rand\'; --attacks replaces the '
                            'chain'),
    'attacks': ('', 'a comma-separated chain instead, from: ' + ', '.join(autoattack.CHAIN)),
    'num_examples': (0, 'test images to attack (the first ones; default: num_eval_examples)'),
    'batch_size': (0, 'examples per compiled batch (default: eval_batch_size)'),
    'seed': (0, 'the seed of the random starts and squares'),
    'iterations': (autoattack.STANDARD_ITERATIONS,
                   "APGD's and FAB's iterations, and Square's queries / 50 (the standard "
                   f'version: {autoattack.STANDARD_ITERATIONS}; fewer for a quick look, never '
                   'for a reported figure)'),
    'output_dir': ('', 'where to write autoattack.json; default: <model_dir>/autoattack'),
    **MODEL_FILE_OPTIONS,
}


def _model_to_attack(challenge, config, model_path, unsafe_model, log, seed=0):
  """(model, strategy, jit, the model's path, its step or None) for the attack commands: the
  file at model_path, or model_dir's newest checkpoint restored, behind the config's defence
  (a randomised one's draws from `seed`); float32, on one device."""
  if not model_path:
    checkpoints.require_latest(config.model_dir)
  strategy = distribute.local_strategy()
  model, _ = _model_to_evaluate(challenge, config, strategy, model_path, unsafe_model, log)
  jit = runtime.set_up(strategy, 'float32', config.jit_compile, config.deterministic, log)
  if model_path:
    return (_defended(challenge, config, model, seed, model_path), strategy, jit, model_path,
            None)
  path, step = checkpoints.restore_newest_model(model, config.model_dir,
                                                challenge.tf1_variables, log)
  return _defended(challenge, config, model, seed, path), strategy, jit, path, step


def run_autoattack(challenge, config, version='standard', attacks='', num_examples=0,
                   batch_size=0, seed=0, iterations=autoattack.STANDARD_ITERATIONS,
                   output_dir='', model_path='', unsafe_model=False, log=print):
  """AutoAttack on model_dir's newest checkpoint (or model_path): prints each attack's
  cumulative robust accuracy and time, writes autoattack.json (settings, figures, the attack
  that broke each example) and the adversarial test set to store_adv_path (the submission
  format: the rest of the test set, beyond num_examples, unchanged)."""
  _check_model_file_options(model_path, unsafe_model)
  if version not in autoattack.VERSIONS:
    raise ChallengeError(f'unknown version "{version}"; use one of: '
                         + ', '.join(autoattack.VERSIONS))
  if iterations < 1:
    raise ChallengeError(f'--iterations must be at least 1, found {iterations}')
  chain = [a.strip() for a in attacks.split(',') if a.strip()] if attacks else list(
      autoattack.VERSIONS[version])
  output_dir = output_dir or model_files.results_dir(config.model_dir, model_path, 'autoattack')
  _check_outputs(challenge, config, [
      ('store_adv_path', config.store_adv_path, False), ('--output_dir', output_dir, True),
      ('--output_dir\'s autoattack.json', os.path.join(output_dir, 'autoattack.json'), False)],
      [model_path or config.model_dir])
  model, strategy, jit, path, step = _model_to_attack(challenge, config, model_path,
                                                      unsafe_model, log, seed)
  test = challenge.load_data(config).test
  num_examples = min(num_examples or config.num_eval_examples, len(test))
  params = challenge.attack_params(config)
  standard = autoattack.STANDARD_ITERATIONS
  shortened = ('' if iterations == standard else
               f', {iterations} iterations (the standard: {standard})')
  eot = config.eot_samples if config.eot_samples > 1 else 0  # 0: the version's (1 or 20)
  defended = '' if config.defence == defences.NONE else (
      f', behind {config.defence} (bpda {config.bpda})')
  chain_note = ', '.join(chain) + ('' if version == 'standard' else f'; {version} version')
  log(f'{challenge.name}: AutoAttack ({chain_note}) on {path}{defended}, first {num_examples} '
      f'test images, {"" if params.norm == "linf" else "ℓ2 "}ε {params.epsilon:g}, seed '
      f'{seed}{shortened}')
  attacker = autoattack.AutoAttack(
      lambda x: model(x, training=False), params.epsilon, params.clip_min, params.clip_max,
      challenge.image_shape, chain, batch_size or config.eval_batch_size, seed, strategy, jit,
      **autoattack.budget(iterations), log=log, model_name=path, norm=params.norm,
      version=version, eot_samples=eot)
  head = test.head(num_examples)
  report = attacker.run(head.images, head.labels)
  adversarial = test.images.copy()
  adversarial[:num_examples] = report.adversarial
  files.save_npy(config.store_adv_path, adversarial.astype(np.float32), 'store_adv_path')
  summary = {
      'model': path, 'step': step, 'norm': params.norm, 'epsilon': params.epsilon,
      'num_examples': num_examples,
      'attacks': chain, 'version': version, 'eot samples': attacker.eot_samples,
      'defence': config.defence, 'bpda': config.bpda,
      'seed': seed, 'batch_size': attacker.batch_size,
      'iterations': iterations, 'square queries': attacker.square_queries,
      'clean accuracy %': 100 * report.clean_accuracy,
      'robust accuracy % after each attack': {o.attack: 100 * o.robust_accuracy
                                              for o in report.outcomes},
      'seconds per attack': {o.attack: round(o.seconds, 2) for o in report.outcomes},
      'robust accuracy %': 100 * report.robust_accuracy,
      'broken by': [name or None for name in report.broken_by],
      'adversarial set': config.store_adv_path,
  }
  files.save_text(os.path.join(output_dir, 'autoattack.json'), json.dumps(summary, indent=1),
                  '--output_dir\'s autoattack.json')
  log(f'robust accuracy: {100 * report.robust_accuracy:.2f}%')
  log(f'Adversarial set written to {config.store_adv_path}; figures to '
      f'{os.path.join(output_dir, "autoattack.json")}')
  return report


# Every attack attack.py runs by name: PGD and AutoAttack's four in the config's norm (ε its
# radius), the Carlini–Wagner attacks in their own (minimum-distance: no ε).
CW_ATTACKS = {name: registry.ATTACKS[name].norm for name in registry.MINIMUM_DISTANCE}
NAMED_ATTACKS = tuple(registry.ATTACKS)

ATTACK_OPTIONS = {
    'attack': ('', 'the attack, by name: ' + ', '.join(NAMED_ATTACKS) + ' (pgd and '
                   'AutoAttack\'s in the config\'s norm and ε; the Carlini-Wagner attacks '
                   'in their own norm, minimising the distance)'),
    'targeted': (False, 'the C&W attacks: towards a random other class per example (seeded), '
                        'not away from the true one (apgd-t and fab-t are targeted anyway)'),
    'num_examples': (0, 'test images to attack (the first ones; default: num_eval_examples)'),
    'iterations': (0, 'the attack\'s iterations (0: its default: PGD the config\'s steps, '
                      'AutoAttack\'s 100 (Square 5,000 queries), C&W-ℓ2 10,000 and C&W-ℓ∞ '
                      'and -ℓ0 1,000 per constant)'),
    'seed': (0, 'the seed of random starts, squares and targets'),
    'output_dir': ('', 'where to write attack.json and distances.npy; default: '
                       '<model_dir>/attack-<name>'),
    **MODEL_FILE_OPTIONS,
}


def distortion(norm, x_adv, x, pixel_range, image_shape):
  """Each example's distance in `norm` ('l0': pixels with a channel moved by at least 1e-4 of
  the pixel range, as the C&W authors count them)."""
  if norm != 'l0':
    return ThreatModel(norm, 0.0).distance(np.asarray(x_adv) - x)
  delta = np.abs(np.asarray(x_adv) - x).reshape((len(x),) + tuple(image_shape))
  return np.sum(np.any(delta >= 1e-4 * pixel_range, axis=-1), axis=(1, 2)).astype(np.float64)


def run_named_attack(challenge, config, attack='', targeted=False, num_examples=0,
                     iterations=0, seed=0, output_dir='', model_path='', unsafe_model=False,
                     log=print):
  """One attack, by name, on model_dir's newest checkpoint (or model_path): writes the
  adversarial test set to store_adv_path (the rest of the test set unchanged), each
  example's distance in the attack's norm to <output_dir>/distances.npy (NaN where it did not
  succeed) and attack.json; prints the success rate and the mean and median distortion of
  the successes, as the C&W paper's tables, and for ε attacks the robust accuracy."""
  _check_model_file_options(model_path, unsafe_model)
  if attack not in NAMED_ATTACKS:
    raise ChallengeError(f'unknown attack "{attack}"; use --attack with one of: '
                         + ', '.join(NAMED_ATTACKS))
  if targeted and attack not in CW_ATTACKS:
    raise ChallengeError(f'--targeted is for the C&W attacks ({", ".join(CW_ATTACKS)}); '
                         f'{attack} has no targeted form here (apgd-t and fab-t are targeted)')
  if iterations < 0:
    raise ChallengeError(f'--iterations must be 0 (the attack\'s default) or more, found '
                         f'{iterations}')
  output_dir = output_dir or model_files.results_dir(config.model_dir, model_path,
                                                     f'attack-{attack}')
  summary_path = os.path.join(output_dir, 'attack.json')
  distances_path = os.path.join(output_dir, 'distances.npy')
  _check_outputs(challenge, config, [
      ('store_adv_path', config.store_adv_path, False), ('--output_dir', output_dir, True),
      ('--output_dir\'s attack.json', summary_path, False),
      ('--output_dir\'s distances.npy', distances_path, False)], [model_path or config.model_dir])
  model, strategy, jit, path, _ = _model_to_attack(challenge, config, model_path, unsafe_model,
                                                   log, seed)
  test = challenge.load_data(config).test
  head = test.head(min(num_examples or config.num_eval_examples, len(test)))
  params = challenge.attack_params(config)
  norm = CW_ATTACKS.get(attack, params.norm)
  threat = params.threat
  model_fn = lambda x: model(x, training=False)
  batch_size = config.eval_batch_size
  described = (f'{norm} (minimising the distance{", targeted" if targeted else ""})'
               if attack in CW_ATTACKS else threat.describe())
  log(f'{challenge.name}: {attack} on {path}, first {len(head)} test images, {described}')
  logits = lambda images: np.concatenate([
      model_fn(tf.constant(images[i:i + batch_size])).numpy()
      for i in range(0, len(images), batch_size)])
  clean_logits = logits(head.images)
  require_finite_logits(clean_logits, path, 'clean examples')
  classes = clean_logits.shape[-1]
  targets = (head.labels + np.random.default_rng(seed).integers(1, classes, len(head))) % classes
  began = time.perf_counter()
  x_adv = attack_by_name(attack, model_fn, params, head, challenge.image_shape, strategy,
                         batch_size, seed, iterations, targets if targeted else None, jit, path,
                         config.eot_samples)
  seconds = time.perf_counter() - began
  clean = np.argmax(clean_logits, 1) == head.labels
  adversarial_logits = logits(x_adv)
  require_finite_logits(adversarial_logits, path, 'adversarial examples')
  adversarial_predictions = np.argmax(adversarial_logits, 1)
  if targeted:
    fooled = adversarial_predictions == targets
  else:
    fooled = adversarial_predictions != head.labels
  distances = distortion(norm, x_adv, head.images, params.clip_max - params.clip_min,
                         challenge.image_shape)
  succeeded = clean & fooled
  within = succeeded & (distances <= params.epsilon + threat.rounding_tolerance(
      int(np.prod(challenge.image_shape)))) if norm == params.norm else None
  per_example = np.where(succeeded, distances, np.nan)
  adversarial = test.images.copy()
  adversarial[:len(head)] = x_adv
  files.save_npy(config.store_adv_path, adversarial.astype(np.float32), 'store_adv_path')
  files.save_npy(distances_path, per_example, '--output_dir\'s distances.npy')
  attacked = int(clean.sum())
  rate = 100.0 * succeeded.sum() / max(attacked, 1)
  mean = float(np.mean(distances[succeeded])) if succeeded.any() else None
  median = float(np.median(distances[succeeded])) if succeeded.any() else None
  summary = {
      'model': path, 'attack': attack, 'norm': norm, 'targeted': targeted,
      'num_examples': len(head), 'iterations': iterations or 'default', 'seed': seed,
      'clean accuracy %': 100.0 * float(clean.mean()),
      'success rate %': rate, 'mean distortion': mean, 'median distortion': median,
      'seconds': round(seconds, 2), 'adversarial set': config.store_adv_path,
      'distances': distances_path}
  if within is not None:
    summary.update({'epsilon': params.epsilon,
                    'robust accuracy %': 100.0 * float((clean & ~within).mean())})
  files.save_text(summary_path, json.dumps(summary, indent=1), '--output_dir\'s attack.json')
  log(f'success rate {rate:.2f}% of the {attacked} examples classified correctly; '
      + ('distortion: none' if mean is None else
         f'{norm} distortion: mean {mean:.4g}, median {median:.4g}') + f' ({seconds:.1f} s)')
  if within is not None:
    log(f'robust accuracy within ε {params.epsilon:g}: {summary["robust accuracy %"]:.2f}%')
  log(f'Adversarial set written to {config.store_adv_path}; distances to {distances_path}')
  return summary


# Options of export_model.py beyond the config.
EXPORT_OPTIONS = {
    'output': ('', 'where to write the model: NAME.keras (a Keras 3 file) or a directory (a '
                   'SavedModel)'),
    'format': ('', 'keras or saved_model; default: keras for a .keras output, else '
                   'saved_model'),
    'overwrite': (False, 'replace an existing output'),
}


def export_model(challenge, config, output='', format='', overwrite=False, log=print):  # noqa: A002
  """Writes model_dir's newest checkpoint (ours or an original TF1 one) as a model file that
  loads without this project (common/model_files.py): the challenge's inputs, logits out,
  inference mode, the checkpoint's logits bit for bit; returns the output's path."""
  if not output:
    raise ChallengeError('--output is required: NAME.keras (a Keras 3 file) or a directory '
                         '(a SavedModel)')
  fmt = model_files.output_format(output, format)
  model_files.refuse_existing(output, overwrite, config.model_dir)  # before the work
  model, model_config, path, step = model_files.restore(challenge, config, config.model_dir,
                                                        log)
  if model.input_shape[1:] != tuple(challenge.input_shape):
    raise ChallengeError(f'{path} holds a network trained behind {model_config.defence}, '
                         f'which takes inputs of shape {model.input_shape[1:]}, not the '
                         'challenge\'s: a model file holds the network alone, so it is not '
                         'exported; evaluate the checkpoint behind its defence instead')
  portable = model_files.portable_copy(
      model, lambda: challenge.build_portable_model(model_config), challenge.input_shape,
      challenge.pixel_max)
  model_files.export(portable, output, fmt, overwrite, config.model_dir)
  shape = ', '.join(str(d) for d in challenge.input_shape)
  log(f'Exported {path} (step {step}) to {output} ({fmt}: inputs (N, {shape}) in '
      f'[0, {challenge.pixel_max:g}], logits out)')
  return output
