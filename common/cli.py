"""Command-line plumbing shared by every script: absl flags from the config keys, errors as
one line and an exit code instead of a traceback, and TensorFlow started quietly.

oneDNN's kernels are used on every x86 CPU, not only where TensorFlow turns them on itself.
TensorFlow's own start-up lines (oneDNN and CPU-feature notes, "could not find cuda drivers",
and on a machine without a GPU driver `failed call to cuInit: ... (303)`, which reads like a
failure and is not one) stay out of the output, unless TF_CPP_MIN_LOG_LEVEL asks for them
(0 or 1); its Python INFO lines too, unless --verbosity asks. That is why this module
imports TensorFlow itself, before the scripts' other imports do.
"""
import contextlib
import json
import logging as python_logging
import os
import platform
import re
import signal
import sys
import tempfile

from absl import app, flags, logging

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # read when TensorFlow is imported
# oneDNN's CPU kernels on every x86 CPU: TensorFlow turns them on itself only where the CPU
# has AVX-512 VNNI/BF16 or AMX; on an AVX2-only CPU they made MNIST's training step 1.8x
# faster (docs/speed.md). TF_ENABLE_ONEDNN_OPTS=0 keeps TensorFlow's own kernels.
ON_X86 = platform.machine().lower() in ('x86_64', 'amd64')
if ON_X86:
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

# TensorFlow's C++ log lines in either of its formats (I/W; the cuInit error of a machine
# without a GPU driver; TensorFlow 2.18's "Unable to register cuDNN factory" lines, which
# every process prints), the notice absl prints before its log is set up, and the
# CPU-feature note's second line.
_TF_NOISE = re.compile(
    r'^((?:[IW]\d{4} |\d{4}-\d\d-\d\d [\d:.]+: [IW] )'
    r'|(?:E\d{4} |\d{4}-\d\d-\d\d [\d:.]+: E ).*(?:failed call to cuInit|Unable to register '
    r'cu\w+ factory)'
    r'|WARNING: All log messages before absl::InitializeLog|To enable the following instructions)')


@contextlib.contextmanager
def _tensorflow_noise_filtered():
  """What is written to stderr (file descriptor 2, where TensorFlow's C++ logs go) inside,
  replayed afterwards without TensorFlow's start-up noise."""
  if os.environ['TF_CPP_MIN_LOG_LEVEL'] in ('0', '1'):  # asked for
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors='replace').splitlines():
        if not _TF_NOISE.match(line):
          print(line, file=sys.stderr)


with _tensorflow_noise_filtered():
  import tensorflow  # noqa: E402  (its import logs)

from common import versions  # noqa: E402

# Before the project's other modules use TensorFlow's and Keras' APIs: outside the tested
# versions, one line and exit 1.
versions.require()

from common import files, runtime  # noqa: E402
from common.config import Config, Key, check_value  # noqa: E402
from common.errors import ChallengeError  # noqa: E402

FLAGS = flags.FLAGS

_DEFINE = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string, list: flags.DEFINE_string}


def define_config_flags(challenge) -> None:
  """--config, and one flag per config key (default: the config's value)."""
  flags.DEFINE_string('config', None, 'config.json to read; default: the config.json next '
                      'to the script. Relative paths in it are relative to its directory.')
  for key in challenge.config_keys:
    help_text = (key.help or key.name) + ' (overrides the config'
    help_text += '; JSON)' if key.type is list else ')'
    _DEFINE[key.type](key.name, None, help_text)


def check_options(options, values):
  """A command's own numeric flags under the rule of the config's numbers (finite, in range:
  every one is a count, a size, a seed or a time, so at least 0); returns the values."""
  for name, (default, _) in options.items():
    if isinstance(default, (int, float)) and not isinstance(default, bool):
      check_value(Key(name, type(default), default, minimum=0), values[name], what='flag')
  return values


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag (--k forty, --eval_batch_size 1e20, an unknown
  flag) as one `error:` line and exit code 1."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e}; --helpfull lists the flags', file=sys.stderr)
    sys.exit(1)


# What a failed write of TensorFlow's own (checkpoints, summaries, SavedModels) says.
_FILE_SYSTEM_TROUBLE = re.compile(r'No space left on device|Read-only file system|Disk quota '
                                  r'exceeded|File too large|Permission denied|Is a directory|'
                                  r'Not a directory', re.IGNORECASE)


def file_system_error(error: BaseException) -> ChallengeError:
  """An OSError, or a TensorFlow error caused by the file system, as one ChallengeError
  (None for other errors: a bug, whose traceback is wanted)."""
  if isinstance(error, OSError):
    where = f' {error.filename}' if error.filename else ''
    return files.os_error(error, f'cannot use{where}')
  if isinstance(error, tensorflow.errors.OpError):
    found = _FILE_SYSTEM_TROUBLE.search(error.message or '')
    if found:
      line = next(line for line in error.message.splitlines() if found.group(0) in line)
      return ChallengeError(f'{line.strip()} ({type(error).__name__}); free space or write '
                            'elsewhere')
  return None


def config_from_flags(challenge) -> Config:
  overrides = {}
  for key in challenge.config_keys:
    value = FLAGS[key.name].value
    if value is None:
      continue
    if key.type is list:
      try:
        value = json.loads(value)
      except json.JSONDecodeError as e:
        raise ChallengeError(f'--{key.name} must be JSON, e.g. [[0, 0.1]]: {e}') from None
    overrides[key.name] = value
  return challenge.load_config(FLAGS.config, overrides)


class _Terminated(BaseException):
  """Raised in the main thread on SIGTERM."""


def _terminated(signum, frame):
  raise _Terminated()


def run(command, challenge, options=None) -> None:
  """Runs `command(challenge, config, **options)` as an absl program.

  `options`: {name: (default, help)} of the command's settings beyond the config, each
  made a flag of its default's type (a tuple: a repeatable string flag). A ChallengeError
  prints `error: <message>` on stderr and exits with its exit code.
  """
  define_config_flags(challenge)
  options = options or {}
  for name, (default, help_text) in options.items():
    if isinstance(default, tuple):
      flags.DEFINE_multi_string(name, list(default), help_text)
    else:
      _DEFINE[type(default)](name, default, help_text)

  def main(argv):
    # SIGTERM (a scheduler, `kill`) ends a script like Ctrl-C: one line, no traceback.
    signal.signal(signal.SIGTERM, _terminated)
    # TF's Python logs report every collective and checkpoint shard at INFO (e.g. "Sharding
    # callback duration" at every checkpoint); --verbosity 0 shows them.
    if not FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
      python_logging.getLogger('tensorflow').setLevel(python_logging.WARNING)
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    try:
      command(challenge, config_from_flags(challenge),
              **check_options(options, {name: FLAGS[name].value for name in options}))
    except ChallengeError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(e.exit_code)
    except tensorflow.errors.UnimplementedError as e:
      conflict = runtime.determinism_conflict(e)
      if conflict is None:
        raise
      print(f'error: {conflict}', file=sys.stderr)
      sys.exit(1)
    except (OSError, tensorflow.errors.OpError) as e:  # the disk filled up, ... (not a bug)
      problem = file_system_error(e)
      if problem is None:
        raise
      print(f'error: {problem}', file=sys.stderr)
      sys.exit(problem.exit_code)
    except KeyboardInterrupt:  # the usual way to stop eval.py; checkpoints stay intact
      print('\ninterrupted', file=sys.stderr)
      sys.exit(130)
    except _Terminated:
      print('\nterminated', file=sys.stderr)
      sys.exit(143)

  with _tensorflow_noise_filtered():  # TF looks for its devices here (or at app.run's start)
    runtime.start()
  app.run(main, flags_parser=_parse_flags)
