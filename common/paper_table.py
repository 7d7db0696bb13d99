"""The paper's evaluation tables (Madry et al., Tables 1 and 2) on any checkpoint: each row an
attack (natural, FGSM, PGD with restarts, targeted PGD, PGD on the CW margin loss with κ 0
"CW" or 50 "CW+": the paper's labels; this is PGD on C&W's loss, not the C&W attacks, which
are the named rows cw-l2, cw-linf, cw-l0), white-box from the evaluated model "A" or
transferred from a source model (A′: same architecture, another seed; A_nat: naturally
trained; B: another architecture). Rows beyond the paper's name an attack of
common/attacks/registry.py (white-box, in the config's norm and ε): their accuracy counts an
example broken when the model misclassifies its adversarial example inside the ε-ball.
"""
import csv
import dataclasses
import functools
import io
import os
import time
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from common import defences, evaluation, files, losses, model_files, precision, runtime
from common.attacks import autoattack, pgd, registry
from common.errors import ChallengeError
from common.evaluation import Evaluator

WHITE_BOX = 'A'
# 'AutoAttack': the standard version (common/attacks/autoattack.py), beside the paper's attacks.
METHODS = ('natural', 'FGSM', 'PGD', 'targeted', 'CW', 'CW+', 'AutoAttack')
CW_CONFIDENCE = {'CW': 0.0, 'CW+': 50.0}


@dataclasses.dataclass(frozen=True)
class Row:
  method: str  # one of METHODS
  steps: Optional[int] = None  # PGD-like methods; AutoAttack: APGD's and FAB's iterations
  # (and Square's queries / 50: the standard version is steps 100)
  restarts: int = 1
  source: str = WHITE_BOX
  paper: Optional[float] = None  # the paper's accuracy, %

  @property
  def label(self) -> str:
    steps = '' if self.steps is None else f' {self.steps}'
    restarts = f' x {self.restarts}' if self.restarts > 1 else ''
    return f'{self.method}{steps}{restarts} from {self.source}'


def named_rows(specs: Sequence[str]) -> tuple:
  """A white-box row per attack spec NAME or NAME:ITERATIONS (a name of
  common/attacks/registry.py; its default budget without ITERATIONS)."""
  rows = []
  for spec in specs:
    name, _, iterations = spec.partition(':')
    if name not in registry.ATTACKS:
      raise ChallengeError(f'unknown attack "{name}" in --attack {spec}; names: '
                           + ', '.join(registry.ATTACKS))
    if iterations and not (iterations.isdigit() and int(iterations) > 0):
      raise ChallengeError(f'--attack {spec}: the iterations after ":" must be a positive '
                           'integer, e.g. --attack cw-l2:1000')
    rows.append(Row(name, int(iterations) if iterations else None))
  if len(set(rows)) < len(rows):
    raise ChallengeError('--attack names the same row twice')
  return tuple(rows)


@dataclasses.dataclass
class Result:
  row: Row
  accuracy: Optional[float]  # %, None when skipped
  seconds: float = 0.0
  note: str = ''


def evaluator_for(row: Row, model, attacker, params: pgd.PGDParams, strategy, seed,
                  target_rule, jit_compile=False, name='the model') -> Evaluator:
  """The Evaluator of `row` against `model`, crafting with `attacker` (a Twin)."""
  if row.method == 'FGSM':
    row_params = pgd.fgsm_params(params.epsilon, params.clip_min, params.clip_max,
                                 norm=params.norm)
  else:
    row_params = dataclasses.replace(params, num_steps=row.steps, random_start=True,
                                     loss_func='xent')
  loss_fn = (functools.partial(losses.cw, confidence=CW_CONFIDENCE[row.method])
             if row.method in CW_CONFIDENCE else None)
  return Evaluator(model, row_params, strategy, attacker, restarts=row.restarts, seed=seed,
                   loss_fn=loss_fn,
                   target_rule=target_rule if row.method == 'targeted' else None,
                   jit_compile=jit_compile, name=name)


def load_model(challenge, config, where: str, log, attack_precision='float32',
               unsafe_model=False, defend=False, seed=0):
  """The model in `where` and its Twin in attack_precision: a model file (a .keras file or
  a SavedModel directory, float32 only), or a model_dir whose newest readable checkpoint is
  restored (its architecture from the config.json train.py saved there, else `config`'s).
  With `defend`, behind the config's defence (common/defences; float32, a randomised
  defence's draws from `seed`): the evaluated model, not a transfer source."""
  if defend:
    defences.require_float32(config, attack_precision)
  if model_files.is_model_file(where) or (os.path.lexists(where) and not os.path.isdir(where)):
    model = model_files.load_checked(  # (a FIFO: refused)
        challenge, where, unsafe_model, log,
        defences.network_input_shape(config, challenge) if defend else None)
    twin = model_files.twin(model, None, attack_precision)
  else:
    model, model_config, _, _ = model_files.restore(challenge, config, where, log)
    twin = precision.Twin(model, lambda: challenge.build_model(model_config),
                          attack_precision)
  if not defend:
    return model, twin
  defended = defences.defend(model, config, challenge, seed, where)
  return defended, (twin if defended is model else precision.Twin(defended, None, 'float32'))


def run(challenge, config, rows: Sequence[Row], sources: Dict[str, str], num_examples: int,
        target_rule: str = 'random', log=print, strategy=None,
        methods: Optional[Sequence[str]] = None, model_path: str = '',
        unsafe_model: bool = False) -> List[Result]:
  """Evaluates every row on the first num_examples test images, white-box on model_dir's
  checkpoint (or on model_path); rows whose source is not in `sources` ({name: model_dir or
  model file}), or whose method is not in `methods` (None: all), are skipped, saying so."""
  pgd.check_target_rule(target_rule)
  if methods is not None:
    table_methods = dict.fromkeys(row.method for row in rows)  # in the table's order
    absent = [m for m in methods if m not in table_methods]
    if absent:
      raise ChallengeError(f'no row of the table uses method(s) {", ".join(absent)}; '
                           'methods: ' + ', '.join(table_methods))
  strategy = strategy or tf.distribute.get_strategy()
  unknown = set(sources) - {row.source for row in rows}
  if unknown:
    raise ChallengeError(f'no row of the table uses source(s) {", ".join(sorted(unknown))}; '
                         'sources: ' + ', '.join(sorted({r.source for r in rows} - {WHITE_BOX})))
  attack_precision = precision.check(config.eval_precision, 'eval_precision')
  precision.announce_attack_precision(attack_precision, log)
  jit = runtime.set_up(strategy, attack_precision, config.jit_compile, config.deterministic,
                       log)
  model, twin = load_model(challenge, config, model_path or config.model_dir, log,
                           attack_precision, unsafe_model, defend=True,
                           seed=challenge.seed(config))
  attackers = {WHITE_BOX: twin}
  for name, where in sources.items():
    attackers[name] = load_model(challenge, config, where, log, attack_precision,
                                 unsafe_model)[1]
  test = challenge.load_data(config).test.head(num_examples)
  params = challenge.attack_params(config)
  results = []
  for index, row in enumerate(rows):
    if methods is not None and row.method not in methods:
      results.append(Result(row, None, note='skipped: method not asked for (--method)'))
      log(f'{row.label:<28} skipped (not asked for: --method)')
      continue
    if row.source not in attackers:
      results.append(Result(row, None, note=f'skipped: no model given for source {row.source}'))
      log(f'{row.label:<28} skipped (no --source {row.source}=<model_dir>)')
      continue
    began = time.perf_counter()
    evaluator = evaluator_for(row, model, attackers[row.source], params, strategy,
                              seed=challenge.seed(config) + index, target_rule=target_rule,
                              jit_compile=jit, name=model_path or config.model_dir)
    if row.method == 'natural':
      predictions = evaluator.predict(test, config.eval_batch_size)
      accuracy = 100.0 * float((predictions == test.labels).mean())
    elif row.method == 'AutoAttack':
      attacker = autoattack.AutoAttack(
          lambda x: model(x, training=False), params.epsilon, params.clip_min,
          params.clip_max, challenge.image_shape, autoattack.STANDARD,
          config.eval_batch_size, challenge.seed(config) + index,
          strategy, jit, **autoattack.budget(row.steps), log=lambda *a, **k: None,
          model_name=model_path or config.model_dir, norm=params.norm)
      accuracy = 100.0 * attacker.run(test.images, test.labels).robust_accuracy
    elif row.method in registry.ATTACKS:
      model_fn = lambda x: model(x, training=False)
      adversarial = evaluation.attack_by_name(
          row.method, model_fn, params, test, challenge.image_shape, strategy,
          config.eval_batch_size, challenge.seed(config) + index, row.steps or 0,
          jit_compile=jit, model_name=model_path or config.model_dir,
          eot_samples=params.eot_samples)
      accuracy = 100.0 * evaluation.robust_accuracy(
          model_fn, params.threat, test, adversarial, config.eval_batch_size, strategy,
          model_path or config.model_dir)
    else:
      accuracy = 100.0 * evaluator.attack(test, config.eval_batch_size).adv_accuracy
    result = Result(row, accuracy, time.perf_counter() - began)
    results.append(result)
    paper = '' if row.paper is None else f'   (paper: {row.paper:.1f}%)'
    log(f'{row.label:<28} {accuracy:6.2f}%   {result.seconds:7.1f} s{paper}')
  return results


OUTPUT_FILES = ('table.csv', 'table.md')  # in output_dir
COLUMNS = ('method', 'epsilon', 'steps', 'restarts', 'source', 'accuracy %', 'paper %',
           'seconds', 'note')


def _cells(result: Result, epsilon: float):
  row = result.row
  return (row.method, f'{epsilon:g}', '' if row.steps is None else str(row.steps),
          str(row.restarts), row.source,
          '' if result.accuracy is None else f'{result.accuracy:.2f}',
          '' if row.paper is None else f'{row.paper:.1f}', f'{result.seconds:.1f}',
          result.note)


def write(results: Sequence[Result], epsilon: float, output_dir: str, header: str) -> None:
  """table.csv and table.md in output_dir (each written atomically)."""
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(COLUMNS)
  for result in results:
    writer.writerow(_cells(result, epsilon))
  markdown = [header, '', '| ' + ' | '.join(COLUMNS) + ' |',
              '|' + '---|' * len(COLUMNS)]
  markdown += ['| ' + ' | '.join(_cells(r, epsilon)) + ' |' for r in results]
  os.makedirs(output_dir, exist_ok=True)
  csv_file, markdown_file = OUTPUT_FILES
  files.save_text(os.path.join(output_dir, csv_file), buffer.getvalue())
  files.save_text(os.path.join(output_dir, markdown_file), '\n'.join(markdown) + '\n')
