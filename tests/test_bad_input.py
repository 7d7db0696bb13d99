"""Bad input and a hostile environment get one clear error, before any work, and lose
nothing (docs/robustness.md): paths that are directories, FIFOs, devices, in read-only or
full places, or one of the command's own inputs; numbers that are not finite or out of
range; a second writer on a model_dir; a resumed run with other settings; a model whose
logits are NaN; partial files of killed runs. Every probe runs under a deadline, so that a
check that stops working fails the test instead of hanging it."""
import contextlib
import dataclasses
import json
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from common import checkpoints, cli, commands, files, model_files, training
from common import config as config_module
from common.attacks import autoattack
from common.errors import ChallengeError, InvalidSubmission
from conftest import REPO, TINY_TEST, quiet, run_script, tiny_config, write_mnist
from cifar10_challenge import data as cifar_data
from cifar10_challenge.challenge import CIFAR10
from mnist_challenge import data as mnist_data
from mnist_challenge.challenge import MNIST


@contextlib.contextmanager
def deadline(seconds=30):
  """Fails instead of hanging: a FIFO opened blocking waits for ever, /dev/zero never ends."""
  def expired(signum, frame):
    raise TimeoutError(f'still running after {seconds} s: it blocks or reads without end')
  previous = signal.signal(signal.SIGALRM, expired)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def refused(call, match):
  """call() raises a ChallengeError matching `match`, in time; returns the message."""
  with deadline(), pytest.raises(ChallengeError, match=match) as error:
    call()
  return str(error.value)


def bad_paths(tmp_path):
  """{kind: path}: things that are not what a command expects, under tmp_path."""
  bad = tmp_path / 'bad'
  bad.mkdir(exist_ok=True)
  (bad / 'directory').mkdir(exist_ok=True)
  (bad / 'directory' / 'something').write_text('x')
  fifo = bad / 'fifo'
  if not fifo.exists():
    os.mkfifo(fifo)
  zero = bad / 'zero'
  if not zero.is_symlink():
    zero.symlink_to('/dev/zero')
  return {'directory': str(bad / 'directory'), 'FIFO': str(fifo), '/dev/zero': str(zero)}


KIND_WORDS = {'directory': 'a directory', 'FIFO': r'a FIFO \(named pipe\)',
              '/dev/zero': 'a character device'}


@pytest.fixture(scope='module')
def trained(tmp_path_factory, mnist_dir):
  """A tiny MNIST config whose model_dir holds a checkpoint (two steps of training)."""
  config = tiny_config(tmp_path_factory.mktemp('trained'), mnist_dir, max_num_training_steps=2,
                       num_checkpoint_steps=2, k=2, num_eval_examples=20)
  training.train(MNIST, config, log=quiet)
  return config


def _work_started(config):
  raise AssertionError('the work started before the bad path was refused')


# A challenge whose data cannot be loaded: a check that comes after the work fails the test.
MNIST_NO_WORK = dataclasses.replace(MNIST, load_data=_work_started)


@contextlib.contextmanager
def mounted_tmpfs(path, size='4m', read_only=False):
  """A small tmpfs at `path` (a full disk, or a read-only place), or a skip saying why."""
  if os.geteuid() != 0:
    pytest.skip('mounting a tmpfs needs root')
  os.makedirs(path, exist_ok=True)
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                           capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
  try:
    yield ReadOnly(path) if read_only else path
  finally:
    subprocess.run(['umount', '-l', str(path)], capture_output=True)


class ReadOnly:
  """A mounted tmpfs to fill, then make read-only."""

  def __init__(self, path):
    self.path = path

  def seal(self):
    subprocess.run(['mount', '-o', 'remount,ro', str(self.path)], check=True)
    return self.path


# --- numbers -----------------------------------------------------------------------------

@pytest.mark.parametrize('challenge', [MNIST, CIFAR10], ids=['mnist', 'cifar10'])
def test_every_float_key_refuses_nan_and_infinities_from_flags_and_files(challenge, tmp_path):
  float_keys = [key.name for key in challenge.config_keys if key.type is float]
  assert 'epsilon' in float_keys and len(float_keys) >= 10
  for name in float_keys:
    for value in (math.nan, math.inf, -math.inf):
      refused(lambda: challenge.load_config(overrides={name: value}),
              f'config key "{name}" must be a finite number, found {value}')
  # Python's json reads NaN and Infinity in a file: the same rule refuses them there.
  for literal in ('NaN', 'Infinity', '-Infinity'):
    path = tmp_path / 'config.json'
    path.write_text(f'{{"epsilon": {literal}}}')
    refused(lambda: challenge.load_config(str(path)), 'config key "epsilon" must be a finite')


@pytest.mark.parametrize('challenge', [MNIST, CIFAR10], ids=['mnist', 'cifar10'])
def test_every_integer_key_is_bounded(challenge):
  for key in challenge.config_keys:
    if key.type is not int:
      continue
    limit = int(key.maximum if key.maximum is not None else config_module.INT_MAXIMUM)
    # (EOT averages over a randomised defence: without one, eot_samples > 1 is refused.)
    beside = {'defence': 'random_resize_pad'} if key.name == 'eot_samples' else {}
    assert challenge.load_config(overrides={key.name: limit, **beside})[key.name] == limit
    for value in (limit + 1, 10**23):
      refused(lambda: challenge.load_config(overrides={key.name: value}),
              f'config key "{key.name}" must be at most {limit}, found {value}')
  seeds = [key for key in challenge.config_keys if 'seed' in key.name]
  assert seeds and all(key.minimum == 0 and key.maximum == 2**32 - 1 for key in seeds)
  refused(lambda: challenge.load_config(overrides={seeds[0].name: -1}), 'must be at least 0')


def test_numbers_inside_lists_and_fractions_are_checked():
  refused(lambda: CIFAR10.load_config(overrides={'step_size_schedule': [[0, math.nan]]}),
          '"step_size_schedule" holds nan')
  refused(lambda: CIFAR10.load_config(overrides={'filters': [16, 16, 32, 10**12]}),
          '"filters" holds 1000000000000')
  refused(lambda: MNIST.load_config(overrides={'mma_clean_weight': 1.5}), 'at most 1, found 1.5')


def test_a_commands_own_numeric_flags_follow_the_same_rule():
  defaults = {name: default for name, (default, _) in commands.EVAL_OPTIONS.items()}
  assert cli.check_options(commands.EVAL_OPTIONS, defaults) == defaults
  for value, message in ((math.nan, '--poll_seconds must be a finite number, found nan'),
                         (math.inf, '--poll_seconds must be a finite number, found inf'),
                         (-1.0, '--poll_seconds must be at least 0')):
    refused(lambda: cli.check_options(commands.EVAL_OPTIONS,
                                      {**defaults, 'poll_seconds': value}), message)
  aa_defaults = {name: default for name, (default, _) in commands.AUTOATTACK_OPTIONS.items()}
  refused(lambda: cli.check_options(commands.AUTOATTACK_OPTIONS, {**aa_defaults, 'seed': 2**40}),
          '--seed must be at most 2147483647')
  refused(lambda: autoattack.AutoAttack(lambda x: x, 0.3, 0, 1, (28, 28, 1),
                                        batch_size=config_module.INT_MAXIMUM),
          'the batch size must be between 1 and 65536')


@pytest.mark.slow
def test_the_scripts_report_bad_numbers_and_config_files_in_one_line(tmp_path, mnist_dir):
  zeros = tmp_path / 'zeros.npy'
  np.save(zeros, np.zeros((TINY_TEST, 784), np.float32))
  pred = tmp_path / 'pred.npy'
  cases = [
      (['mnist_challenge/run_attack.py', '--epsilon', 'nan', '--store_adv_path', str(zeros),
        '--pred_path', str(pred)], 'error: config key "epsilon" must be a finite number, '
       'found nan'),
      (['mnist_challenge/pgd_attack.py', '--eval_batch_size', '1e20'],
       "error: flag --eval_batch_size=1e20: invalid literal for int() with base 10: '1e20'; "
       '--helpfull lists the flags'),
  ]
  for args, line in cases:
    result = run_script(args + ['--data_dir', mnist_dir], timeout=120)
    assert result.returncode == 1, (args, result.stderr)
    assert result.stderr.startswith(line) and result.stderr.count('\n') == 1, result.stderr
  assert not pred.exists()


# --- what a command reads ----------------------------------------------------------------

def test_a_config_file_must_be_a_small_regular_utf8_json_file(tmp_path):
  for kind, path in bad_paths(tmp_path).items():
    refused(lambda: MNIST.load_config(path), f'config file {path} is {KIND_WORDS[kind]}')
  refused(lambda: MNIST.load_config(str(tmp_path / 'absent' / 'config.json')), 'does not exist')
  not_utf8 = tmp_path / 'latin1.json'
  not_utf8.write_bytes('{"_comment": "caf\xe9"}'.encode('latin-1'))
  refused(lambda: MNIST.load_config(str(not_utf8)), 'is not UTF-8 text')
  big = tmp_path / 'big.json'
  big.write_text('{"_comment": "' + 'x' * (1 << 20) + '"}')
  refused(lambda: MNIST.load_config(str(big)), 'bytes; at most 1,048,576 are expected')
  deep = tmp_path / 'deep.json'
  deep.write_text('[' * 100000 + ']' * 100000)
  refused(lambda: MNIST.load_config(str(deep)), 'nests lists or objects too deeply')


def test_data_directories_and_files_that_are_not_what_they_should_be(tmp_path):
  bad = bad_paths(tmp_path)
  for kind in ('FIFO', '/dev/zero'):
    refused(lambda: mnist_data.load(bad[kind]), f'data_dir {bad[kind]} is {KIND_WORDS[kind]}')
    refused(lambda: cifar_data.load(bad[kind]), f'data_path {bad[kind]} is {KIND_WORDS[kind]}')
  for i, (kind, target) in enumerate((('FIFO', None), ('/dev/zero', '/dev/zero'),
                                      ('directory', None))):
    mnist = write_mnist(str(tmp_path / f'mnist_{i}'))
    cifar = tmp_path / f'cifar_{i}'
    os.makedirs(cifar)
    for name in cifar_data.FILES:
      (cifar / name).write_bytes(b'')
    # (MNIST's training images load first: the bad file is reached after a good one.)
    victims = (os.path.join(mnist, mnist_data.FILES['test_images'] + '.gz'),
               str(cifar / cifar_data.TRAIN_FILES[0]))
    for victim in victims:
      os.remove(victim)
      if kind == 'FIFO':
        os.mkfifo(victim)
      elif kind == 'directory':
        os.mkdir(victim)
      else:
        os.symlink(target, victim)
    refused(lambda: mnist_data.load(mnist), f'MNIST file {victims[0]} is {KIND_WORDS[kind]}')
    refused(lambda: cifar_data.load(str(cifar)),
            f'CIFAR-10 file {victims[1]} is {KIND_WORDS[kind]}')


def _export_to(path):
  return lambda config: commands.export_model(MNIST, config, output=path, log=quiet)


# Every command that reads model_dir's checkpoints (or a model file with model_path).
READERS = {
    'eval': lambda config, **kw: commands.evaluate(MNIST, config, once=True, log=quiet, **kw),
    'pgd_attack': lambda config, **kw: commands.pgd_attack(MNIST, config, log=quiet, **kw),
    'run_attack': lambda config, **kw: commands.run_attack(MNIST, config, log=quiet, **kw),
    'autoattack': lambda config, **kw: commands.run_autoattack(
        MNIST, config, attacks='apgd-ce', iterations=2, num_examples=4, log=quiet, **kw),
    'evaluate': lambda config, **kw: commands.evaluate_table(
        MNIST, config, method=('natural',), num_examples=4, log=quiet, **kw),
    'landscape': lambda config, **kw: commands.loss_landscape(
        MNIST, config, num_examples=1, restarts=2, log=quiet, **kw),
    'attack': lambda config, **kw: commands.run_named_attack(
        MNIST, config, attack='pgd', iterations=2, num_examples=4, log=quiet, **kw),
}


@pytest.mark.parametrize('command', sorted(READERS))
def test_every_reader_refuses_a_model_path_or_model_dir_of_the_wrong_kind(command, tmp_path,
                                                                          trained):
  bad = bad_paths(tmp_path)
  read = READERS[command]
  for kind in ('FIFO', '/dev/zero'):
    refused(lambda: read(trained, model_path=bad[kind]),
            f'model file {bad[kind]} is {KIND_WORDS[kind]}, not a regular file')
    if command != 'eval':  # (eval.py watches a model_dir that may appear later: below)
      refused(lambda: read(trained.replace(model_dir=bad[kind])),
              f'{bad[kind]} is {KIND_WORDS[kind]}')
  refused(lambda: read(trained, model_path=bad['directory']),
          'is a directory without saved_model.pb')
  saved_model = tmp_path / 'saved_model'
  saved_model.mkdir()
  (saved_model / 'saved_model.pb').write_bytes(b'')
  os.mkfifo(saved_model / 'variables.index')
  refused(lambda: read(trained, model_path=str(saved_model)),
          f'SavedModel {saved_model} holds {saved_model}/variables.index, which is '
          f'{KIND_WORDS["FIFO"]}')


def test_eval_refuses_a_model_dir_that_is_not_a_directory(tmp_path, trained):
  for kind, path in bad_paths(tmp_path).items():
    if kind != 'directory':
      refused(lambda: commands.evaluate(MNIST, trained.replace(model_dir=path), log=quiet,
                                        max_polls=0), f'model_dir {path} is {KIND_WORDS[kind]}')


def test_checkpoint_files_that_are_not_regular_files_are_named(tmp_path, trained):
  import shutil
  model_dir = tmp_path / 'model'
  shutil.copytree(trained.model_dir, model_dir)
  submission = tmp_path / 'submission.npy'
  np.save(submission, MNIST.load_data(trained).test.images)
  config = trained.replace(model_dir=str(model_dir), store_adv_path=str(submission),
                           pred_path=str(tmp_path / 'pred.npy'))
  latest = os.path.basename(checkpoints.latest(str(model_dir)))
  (data_file,) = [p for p in model_dir.iterdir() if p.name.startswith(latest + '.data-')]
  data_file.unlink()
  os.mkfifo(data_file)
  # As any unreadable checkpoint: a warning naming it, and the older one is used.
  logged = []
  with deadline():
    commands.pgd_attack(MNIST, config.replace(store_adv_path=str(tmp_path / 'a.npy')),
                        log=logged.append)
  assert any(f'{data_file} is a FIFO (named pipe), not a regular file' in line and
             line.startswith('warning:') for line in logged), logged
  for older in model_dir.glob('checkpoint-0.*'):
    older.unlink()
  for read in READERS.values():
    refused(lambda: read(config), f'no checkpoint in {model_dir} can be read')
  refused(lambda: commands.export_model(MNIST, config, output=str(tmp_path / 'm.keras'),
                                        log=quiet), 'can be read')
  index = model_dir / 'checkpoint'
  index.unlink()
  os.symlink('/dev/zero', index)
  refused(lambda: READERS['pgd_attack'](config),
          f"model_dir's checkpoint index {index} is a character device")


def test_a_submission_that_is_not_a_regular_file_is_refused(tmp_path, trained):
  for kind, path in bad_paths(tmp_path).items():
    with deadline(), pytest.raises(InvalidSubmission, match=f'is {KIND_WORDS[kind]}'):
      commands.run_attack(MNIST, trained.replace(store_adv_path=path), log=quiet)


def test_a_transfer_source_or_compared_model_of_the_wrong_kind_is_refused(tmp_path, trained):
  bad = bad_paths(tmp_path)
  refused(lambda: commands.evaluate_table(MNIST, trained, source=(f"A'={bad['FIFO']}",),
                                          method=('FGSM',), num_examples=2, log=quiet),
          f'model file {bad["FIFO"]} is a FIFO')
  refused(lambda: commands.loss_landscape(MNIST, trained, compare_model_dir=bad['/dev/zero'],
                                          num_examples=1, restarts=2, log=quiet),
          'is a character device')


# --- what a command writes ---------------------------------------------------------------

# Every output: (command, the key or option, whether it is a directory).
WRITERS = {
    ('pgd_attack', 'store_adv_path', False): lambda c, p: commands.pgd_attack(
        MNIST_NO_WORK, c.replace(store_adv_path=p), log=quiet),
    ('run_attack', 'pred_path', False): lambda c, p: commands.run_attack(
        MNIST_NO_WORK, c.replace(pred_path=p), log=quiet),
    ('autoattack', 'store_adv_path', False): lambda c, p: commands.run_autoattack(
        MNIST_NO_WORK, c.replace(store_adv_path=p), log=quiet),
    ('autoattack', '--output_dir', True): lambda c, p: commands.run_autoattack(
        MNIST_NO_WORK, c, output_dir=p, log=quiet),
    ('evaluate', '--output_dir', True): lambda c, p: commands.evaluate_table(
        MNIST_NO_WORK, c, output_dir=p, log=quiet),
    ('landscape', '--output_dir', True): lambda c, p: commands.loss_landscape(
        MNIST_NO_WORK, c, output_dir=p, log=quiet),
    ('train', 'model_dir', True): lambda c, p: training.train(
        MNIST_NO_WORK, c.replace(model_dir=p), log=quiet),
    ('eval', 'model_dir', True): lambda c, p: commands.evaluate(
        MNIST_NO_WORK, c.replace(model_dir=p), once=True, log=quiet),
    ('export_model', '--output', False): lambda c, p: commands.export_model(
        MNIST, c, output=p + '.keras', overwrite=True, log=quiet),
}


@pytest.mark.parametrize('writer', sorted(WRITERS), ids=lambda w: f'{w[0]}-{w[1]}')
def test_an_output_of_the_wrong_kind_is_refused_before_any_work(writer, tmp_path, trained):
  command, name, is_directory = writer
  bad = bad_paths(tmp_path)
  regular = tmp_path / 'regular_file'
  regular.write_text('kept')
  kinds = {'FIFO': bad['FIFO'], '/dev/zero': bad['/dev/zero']}
  if is_directory:
    kinds['regular file'] = str(regular)
  else:
    kinds['directory'] = bad['directory']
  for kind, path in kinds.items():
    expected = f'{name} {path} is {KIND_WORDS.get(kind, "a regular file")}' + (
        ', not a directory' if is_directory else '; it must be a file')
    if command == 'export_model':  # its output is named .keras: a link of that name
      os.symlink(path, path + '.keras')
      expected = 'replaces a model file only'
    refused(lambda: WRITERS[writer](trained, path), expected)
  assert regular.read_text() == 'kept' and os.listdir(bad['directory']) == ['something']
  assert os.path.exists('/dev/zero') and stat.S_ISCHR(os.stat('/dev/zero').st_mode)


def test_outputs_in_a_missing_directory_are_created(tmp_path, trained):
  store = tmp_path / 'new' / 'deeper' / 'attack.npy'
  pred = tmp_path / 'another' / 'pred.npy'
  config = trained.replace(store_adv_path=str(store), pred_path=str(pred),
                           num_eval_examples=TINY_TEST)
  commands.pgd_attack(MNIST, config, log=quiet)
  commands.run_attack(MNIST, config, log=quiet)
  assert np.load(store).shape == (TINY_TEST, 784) and np.load(pred).shape == (TINY_TEST,)
  output = tmp_path / 'out' / 'here' / 'model.keras'
  commands.export_model(MNIST, trained, output=str(output), log=quiet)
  assert model_files.is_keras_file(str(output))
  missing = tmp_path / 'missing'
  READERS['autoattack'](trained, output_dir=str(missing / 'aa'))
  READERS['evaluate'](trained, output_dir=str(missing / 'table'))
  READERS['landscape'](trained, output_dir=str(missing / 'landscape'))
  assert sorted(os.listdir(missing / 'aa')) == ['autoattack.json']
  assert sorted(os.listdir(missing / 'table')) == ['table.csv', 'table.md']
  assert 'landscape.npz' in os.listdir(missing / 'landscape')


def test_no_output_is_written_over_one_of_the_commands_inputs(tmp_path, trained, mnist_dir):
  submission = tmp_path / 'attack.npy'
  commands.pgd_attack(MNIST, trained.replace(store_adv_path=str(submission)), log=quiet)
  before = submission.read_bytes()
  for pred in (submission, tmp_path / 'link.npy'):
    if pred != submission:
      os.symlink(submission, pred)  # the same file under another name
    refused(lambda: commands.run_attack(
        MNIST_NO_WORK, trained.replace(store_adv_path=str(submission), pred_path=str(pred)),
        log=quiet), f'pred_path {pred} is the submission \\(store_adv_path\\)')
  assert submission.read_bytes() == before
  index = os.path.join(trained.model_dir, 'checkpoint')
  data_file = os.path.join(mnist_dir, mnist_data.FILES['test_labels'] + '.gz')
  saved_config = os.path.join(trained.model_dir, 'config.json')
  for path, what in ((index, "model_dir's checkpoint"), (data_file, 'a data file'),
                     (trained.source, 'the config file'), (saved_config, "model_dir's config")):
    content = open(path, 'rb').read()
    refused(lambda: commands.pgd_attack(MNIST_NO_WORK, trained.replace(store_adv_path=path),
                                        log=quiet), f'store_adv_path {path} is {what}')
    assert open(path, 'rb').read() == content
  model = tmp_path / 'model.keras'
  commands.export_model(MNIST, trained, output=str(model), log=quiet)
  refused(lambda: commands.run_autoattack(MNIST_NO_WORK, trained.replace(
      store_adv_path=str(model)), model_path=str(model), log=quiet), 'is the model file')
  assert model_files.is_keras_file(str(model))


def test_overwrite_replaces_a_model_file_and_nothing_else(tmp_path, trained):
  model_dir = trained.model_dir
  kept = sorted(os.listdir(model_dir))
  refused(lambda: commands.export_model(MNIST, trained, output=model_dir, overwrite=True,
                                        log=quiet), f'--output {model_dir} is the model_dir')
  parent = os.path.dirname(model_dir)
  refused(lambda: commands.export_model(MNIST, trained, output=parent, overwrite=True,
                                        log=quiet), f'--output {parent} holds the model_dir')
  other = tmp_path / 'results'
  other.mkdir()
  (other / 'table.csv').write_text('precious')
  not_a_model = tmp_path / 'notes.keras'
  not_a_model.write_text('not a zip')
  for path in (other, not_a_model):
    refused(lambda: commands.export_model(MNIST, trained, output=str(path), overwrite=True,
                                          log=quiet), '--overwrite replaces a model file only')
  assert sorted(os.listdir(model_dir)) == kept
  assert (other / 'table.csv').read_text() == 'precious' and not_a_model.read_text() == 'not a zip'
  inside = os.path.join(model_dir, 'exported.keras')  # beside the checkpoints: allowed
  commands.export_model(MNIST, trained, output=inside, log=quiet)
  commands.export_model(MNIST, trained, output=inside, overwrite=True, log=quiet)
  assert model_files.is_keras_file(inside)
  os.remove(inside)


def test_a_read_only_place_is_refused_before_any_work(tmp_path, trained):
  with mounted_tmpfs(tmp_path / 'ro', read_only=True) as place:
    os.makedirs(place.path / 'model')
    place.seal()
    with pytest.raises(OSError):  # it is read-only, even to root
      (place.path / 'probe').write_text('x')
    for writer, call in WRITERS.items():
      target = str(place.path / 'out')
      if writer[1] == 'model_dir':
        target = str(place.path / 'model')  # exists, read-only
      refused(lambda: call(trained, target), 'read-only file system')


def test_a_full_disk_leaves_nothing_half_written(tmp_path, trained, mnist_dir):
  with mounted_tmpfs(tmp_path / 'full', size='6m') as full:
    # train.py: the madry network's first checkpoint (13 MB of weights) does not fit.
    config = tiny_config(tmp_path, mnist_dir, model_dir=str(full / 'model'))
    message = refused(lambda: training.train(MNIST, config, log=quiet),
                      'cannot write checkpoint 0 in .*No space left on device.*nothing of it was '
                      'left behind')
    assert 'Traceback' not in message
    left = sorted(os.listdir(full / 'model'))
    assert not [name for name in left if name.startswith('checkpoint')], left
    # export: the .keras file (13 MB) does not fit; no staging directory is left.
    refused(lambda: commands.export_model(MNIST, trained, output=str(full / 'm.keras'),
                                          log=quiet), 'cannot write .*m.keras')
    assert not [name for name in os.listdir(full) if name.endswith('.keras') or
                files.PARTIAL in name]
    # An atomic write: nothing under the name, no partial file.
    filler = full / 'filler'
    filler.write_bytes(b'\0' * (os.statvfs(full).f_bavail * os.statvfs(full).f_frsize - 4096))
    refused(lambda: files.save_npy(str(full / 'attack.npy'), np.zeros((100, 784), np.float32),
                                   'store_adv_path'), 'the disk is full')
    assert sorted(os.listdir(full)) == ['filler', 'model']


def test_partial_checkpoints_of_a_killed_run_are_removed_when_training_resumes(tmp_path,
                                                                                mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=2, num_checkpoint_steps=2,
                       k=1)
  training.train(MNIST, config, log=quiet)
  for stale in ('checkpoint-3_temp', os.path.join('best', 'checkpoint-2_temp')):
    os.makedirs(os.path.join(config.model_dir, stale, 'part'))
  training.train(MNIST, config.replace(max_num_training_steps=4), log=quiet)
  assert not os.path.exists(os.path.join(config.model_dir, 'checkpoint-3_temp'))
  assert not os.path.exists(os.path.join(config.model_dir, 'best', 'checkpoint-2_temp'))
  assert checkpoints.latest(config.model_dir).endswith('checkpoint-4')


# --- killed writers ----------------------------------------------------------------------

def _killed_while_writing(code):
  """Runs `code` (with `files` imported) in a process that kills itself (-9) inside it."""
  program = textwrap.dedent(f'''
      import os, signal, sys
      sys.path.insert(0, {REPO!r})
      from common import files
      def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)
      {code}
  ''')
  result = subprocess.run([sys.executable, '-c', program], capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == -signal.SIGKILL, result.stderr


def test_what_a_killed_writer_left_is_removed_by_the_next_write(tmp_path, trained):
  output = str(tmp_path / 'robust.keras')
  _killed_while_writing(f'''with files.staging_directory({output!r}, 'o'):
        die()''')
  _killed_while_writing(f'''files.atomic_write({str(tmp_path / "pred.npy")!r}, die)''')
  left = sorted(os.listdir(tmp_path))
  assert [name[:len('.robust.keras.partial-')] for name in left if 'robust' in name] == [
      '.robust.keras.partial-'] and any(name.startswith('.pred.npy.partial-') for name in left)
  # A staging directory that a live export holds is not stale: it stays.
  with files.staging_directory(output, 'o') as live:
    commands.export_model(MNIST, trained, output=output, log=quiet)
    files.save_npy(str(tmp_path / 'pred.npy'), np.zeros(3))
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(live), 'pred.npy',
                                                   'robust.keras'])


def test_files_get_the_umasks_mode(tmp_path, trained):
  previous = os.umask(0o002)
  try:
    files.save_text(str(tmp_path / 'a.txt'), 'x')
    commands.export_model(MNIST, trained, output=str(tmp_path / 'm.keras'), log=quiet)
    commands.export_model(MNIST, trained, output=str(tmp_path / 'saved'), log=quiet)
  finally:
    os.umask(previous)
  mode = lambda name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)
  assert (mode('a.txt'), mode('m.keras'), mode('saved')) == (0o664, 0o664, 0o775)


# --- one writer per model_dir ------------------------------------------------------------

def test_a_second_writer_is_refused_while_the_first_holds_the_model_dir(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=1, k=1)
  os.makedirs(config.model_dir)
  with files.exclusive_lock(config.model_dir, 'model_dir', 'train.py'):
    refused(lambda: training.train(MNIST, config, log=quiet),
            f'model_dir {config.model_dir} is in use by train.py \\(pid {os.getpid()} on ')
    assert not checkpoints.latest(config.model_dir)
  training.train(MNIST, config, log=quiet)  # released: trains
  assert checkpoints.latest(config.model_dir)


@pytest.mark.slow
def test_a_running_train_script_holds_its_model_dir_and_a_killed_one_leaves_no_stale_lock(
    tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=100000, k=1,
                       num_checkpoint_steps=1000, num_output_steps=1)
  flags = ['--data_dir', mnist_dir, '--model_dir', config.model_dir, '--max_num_training_steps',
           '100000', '--training_batch_size', '8', '--k', '1', '--num_output_steps', '1',
           '--num_checkpoint_steps', '1000']
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  first = subprocess.Popen([sys.executable, 'mnist_challenge/train.py'] + flags, cwd=REPO,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    with deadline(180):
      for line in first.stdout:
        if line.startswith('Step 1:'):
          break
    # (In this process: the lock is the other process's; cli.run prints the error in one line.)
    refused(lambda: training.train(MNIST, config, log=quiet),
            f'model_dir {config.model_dir} is in use by train.py \\(pid {first.pid} on ')
  finally:
    first.kill()
    first.wait()
  # Killed with -9: the kernel dropped its lock; the next run resumes from its checkpoint.
  assert training.train(MNIST, config.replace(max_num_training_steps=2), log=quiet) == 2


# --- a resumed run with other settings ---------------------------------------------------

def test_a_resumed_run_says_what_changed_and_config_json_keeps_the_history(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=2, num_checkpoint_steps=1,
                       k=1)
  saved = os.path.join(config.model_dir, 'config.json')
  training.train(MNIST, config, log=quiet)
  assert open(saved).read() == config.to_json()  # a fresh run: the config, as before
  logged = []
  changed = config.replace(max_num_training_steps=3, epsilon=0.25)
  training.train(MNIST, changed, log=logged.append)
  warnings = [line for line in logged if line.startswith('warning:')]
  assert warnings == [f'warning: resuming {config.model_dir} at step 2 with changed settings: '
                      'max_num_training_steps 2 -> 3, epsilon 0.3 -> 0.25; '
                      f'{saved} keeps the earlier ones under "_history"']
  training.train(MNIST, changed.replace(max_num_training_steps=4, k=2), log=quiet)
  record = json.load(open(saved))
  assert record['_history'] == [
      {'steps': [0, 2], 'settings': {'max_num_training_steps': 2, 'epsilon': 0.3}},
      {'steps': [2, 3], 'settings': {'max_num_training_steps': 3, 'k': 1}}]
  assert MNIST.load_config(saved)['k'] == 2  # still a config: "_history" is a comment
  training.train(MNIST, changed.replace(max_num_training_steps=5, k=2), log=logged.append)
  assert json.load(open(saved))['_history'][:2] == record['_history']


# --- a model whose logits are not finite -------------------------------------------------

def test_nan_logits_are_an_error_naming_the_model_not_a_score(tmp_path, trained):
  inputs = keras.Input((784,))
  outputs = keras.layers.Dense(10)(inputs)
  model = keras.Model(inputs, outputs)
  kernel, bias = model.layers[-1].get_weights()
  bias[3] = np.nan
  model.layers[-1].set_weights([kernel, bias])
  path = str(tmp_path / 'nan.keras')
  model.save(path)
  store, pred = tmp_path / 'attack.npy', tmp_path / 'pred.npy'
  test = MNIST.load_data(trained).test
  np.save(store, test.images)
  config = trained.replace(store_adv_path=str(store), pred_path=str(pred))
  named = f'{path} returned logits that are not finite \\(NaN or infinite\\)'
  for command in ('eval', 'run_attack', 'evaluate', 'landscape', 'autoattack', 'attack'):
    refused(lambda: READERS[command](config, model_path=path), named)
  assert not pred.exists()
  refused(lambda: READERS['pgd_attack'](config.replace(store_adv_path=str(tmp_path / 'a.npy')),
                                        model_path=path), named)
  assert not (tmp_path / 'a.npy').exists()


# --- Keras' safe mode --------------------------------------------------------------------

@pytest.mark.versions
def test_a_lambda_layer_is_refused_in_a_keras_file_and_in_a_legacy_h5_file(tmp_path):
  inputs = keras.Input((784,))
  outputs = keras.layers.Lambda(lambda t: t[:, :10] * 2.0)(inputs)
  model = keras.Model(inputs, outputs)
  for name in ('lambda.keras', 'lambda.h5'):
    path = str(tmp_path / name)
    model.save(path)
    refused(lambda: model_files.load(path), 'holds Python code .a Lambda layer.')
    assert model_files.load(path, unsafe=True) is not None


def test_errors_of_the_file_system_are_one_line(tmp_path):
  import errno
  import tensorflow as tf
  full = cli.file_system_error(OSError(errno.ENOSPC, 'No space left on device', '/x/y'))
  assert str(full) == 'cannot use /x/y: the disk is full: free space or write elsewhere'
  tf_full = cli.file_system_error(tf.errors.ResourceExhaustedError(
      None, None, 'events.out; No space left on device\nmore'))
  assert str(tf_full).startswith('events.out; No space left on device (ResourceExhaustedError)')
  assert cli.file_system_error(tf.errors.ResourceExhaustedError(None, None, 'OOM')) is None
  assert cli.file_system_error(ValueError('a bug')) is None
