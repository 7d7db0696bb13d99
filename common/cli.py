"""Command-line plumbing shared by every script: absl flags from the config keys, errors as
one line and an exit code instead of a traceback."""
import json
import logging as python_logging
import signal
import sys

from absl import app, flags, logging

from common.config import Config
from common.errors import ChallengeError

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
  FLAGS.set_default('verbosity', logging.WARNING)  # TF's INFO lines drown the output
  options = options or {}
  for name, (default, help_text) in options.items():
    if isinstance(default, tuple):
      flags.DEFINE_multi_string(name, list(default), help_text)
    else:
      _DEFINE[type(default)](name, default, help_text)

  def main(argv):
    # SIGTERM (a scheduler, `kill`) ends a script like Ctrl-C: one line, no traceback.
    signal.signal(signal.SIGTERM, _terminated)
    # TF's own Python logger reports every collective and checkpoint shard at INFO.
    python_logging.getLogger('tensorflow').setLevel(python_logging.WARNING)
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    try:
      command(challenge, config_from_flags(challenge),
              **{name: FLAGS[name].value for name in options})
    except ChallengeError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(e.exit_code)
    except KeyboardInterrupt:  # the usual way to stop eval.py; checkpoints stay intact
      print('\ninterrupted', file=sys.stderr)
      sys.exit(130)
    except _Terminated:
      print('\nterminated', file=sys.stderr)
      sys.exit(143)

  app.run(main)
