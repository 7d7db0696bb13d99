"""One configuration type for both challenges.

A challenge declares its keys (name, type, default) as a tuple of `Key`s; `load_config`
reads an original-style `config.json` against them. The original files repeat the key
"_comment", so keys starting with "_" are comments and duplicates of them are allowed; any
other duplicate, unknown key or wrongly typed value is an error naming the key.

One rule for every number, whether it comes from a file or a flag: a float is finite (NaN
and ±inf are refused: NaN compares false with everything, so an ε of NaN would switch the
ε check off), and every number lies in its key's range, [minimum, maximum]; an integer
without a maximum of its own is at most INT_MAXIMUM (counts and sizes become int32 tensor
dimensions; seeds are at most SEED_MAXIMUM, numpy's limit).
"""
import dataclasses
import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

from common import files
from common.errors import ChallengeError

INT_MAXIMUM = 2**31 - 1
SEED_MAXIMUM = 2**32 - 1  # numpy.random.seed's (Keras seeds numpy from the config's seed)
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB
# Batches beyond these are no use on any device, and tensors of their size would not fit.
MAX_EVAL_BATCH = 1 << 16
MAX_TRAINING_BATCH = 1 << 20


@dataclasses.dataclass(frozen=True)
class Key:
  name: str
  type: type  # bool, int, float, str or list
  default: Any
  help: str = ''
  # Relative paths in a config file are resolved against the file's directory, so that
  # `cd mnist_challenge && python train.py` and `python mnist_challenge/train.py` agree.
  is_path: bool = False
  minimum: Optional[float] = None  # for numbers
  maximum: Optional[float] = None  # for numbers; integers: INT_MAXIMUM where None
  # For strings: the values allowed. Where they include "true"/"false", a JSON boolean is
  # read as that string (`"jit_compile": true` and `--jit_compile true` agree).
  choices: Optional[Sequence[str]] = None


class Config(Mapping):
  """A read-only mapping of the effective settings, also readable as attributes."""

  def __init__(self, values: Mapping[str, Any], source: Optional[str] = None):
    self._values = dict(values)
    self.source = source

  def __getitem__(self, name):
    return self._values[name]

  def __iter__(self):
    return iter(self._values)

  def __len__(self):
    return len(self._values)

  def __getattr__(self, name):
    try:
      return self._values[name]
    except KeyError:
      raise AttributeError(name) from None

  def replace(self, **changes) -> 'Config':
    unknown = set(changes) - set(self._values)
    if unknown:
      raise ChallengeError(f'unknown config key(s): {", ".join(sorted(unknown))}')
    return Config({**self._values, **changes}, self.source)

  def to_json(self) -> str:
    return json.dumps(self._values, indent=2) + '\n'


def _type_name(t) -> str:
  return {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string',
          list: 'a list'}[t]


def _finite(number) -> bool:
  try:
    return math.isfinite(number)
  except OverflowError:  # an integer too large for a float
    return False


def _number(bound) -> str:
  return str(int(bound)) if float(bound).is_integer() else f'{bound:g}'


def _numbers_in(value):
  """The numbers anywhere in a (nested) list."""
  if isinstance(value, (list, tuple)):
    for item in value:
      yield from _numbers_in(item)
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    yield value


def check_value(key: Key, value: Any, what: str = 'config key') -> Any:
  """Returns `value` as the key's type, or raises naming the key (`what`: 'config key', or
  'flag' for a command's own option)."""
  name = f'config key "{key.name}"' if what == 'config key' else f'--{key.name}'
  if key.choices is not None and isinstance(value, bool) and 'true' in key.choices:
    value = 'true' if value else 'false'
  ok = (isinstance(value, bool) if key.type is bool else
        # bool is an int in Python, but `true` is not a step count.
        isinstance(value, int) and not isinstance(value, bool) if key.type is int else
        isinstance(value, (int, float)) and not isinstance(value, bool) if key.type is float
        else isinstance(value, key.type))
  if not ok:
    raise ChallengeError(
        f'{name} must be {_type_name(key.type)}, '
        f'found {json.dumps(value)} ({type(value).__name__})')
  if key.choices is not None and value not in key.choices:
    raise ChallengeError(f'{name} must be one of {", ".join(key.choices)}, '
                         f'found {json.dumps(value)}')
  if key.type is list:
    for number in _numbers_in(value):
      if not _finite(number) or abs(number) > INT_MAXIMUM:
        raise ChallengeError(f'{name} holds {number}; its numbers must be finite '
                             f'and at most {INT_MAXIMUM} in size')
  if key.type in (int, float):
    if key.type is float and not _finite(value):
      raise ChallengeError(f'{name} must be a finite number, found {value}')
    maximum = key.maximum if key.maximum is not None or key.type is float else INT_MAXIMUM
    if key.minimum is not None and value < key.minimum:
      raise ChallengeError(f'{name} must be at least {_number(key.minimum)}, '
                           f'found {value}')
    if maximum is not None and value > maximum:
      raise ChallengeError(f'{name} must be at most {_number(maximum)}, found {value}')
  return float(value) if key.type is float else value


def _reject_duplicates(pairs):
  values = {}
  for name, value in pairs:
    if name in values and not name.startswith('_'):
      raise ChallengeError(f'config key "{name}" appears twice')
    values[name] = value
  return values


def load_config(path: str, keys: Sequence[Key],
                overrides: Optional[Mapping[str, Any]] = None) -> Config:
  """Reads `path` (may be None: defaults only) and applies `overrides` (already typed).

  Overrides are paths relative to the current directory (they come from flags); the
  file's relative paths are relative to the file.
  """
  by_name = {key.name: key for key in keys}
  from_file = {}
  base_dir = os.getcwd()
  if path is not None:
    if not os.path.lexists(path):
      raise ChallengeError(f'config file {path} does not exist; pass --config with the '
                           'path of a config.json')
    raw = files.read_input(path, 'config file', MAX_CONFIG_BYTES)
    try:  # (NaN and Infinity are read as floats, and refused by check_value naming the key)
      from_file = json.loads(raw.decode('utf-8'), object_pairs_hook=_reject_duplicates)
    except UnicodeDecodeError as e:
      raise ChallengeError(f'config file {path} is not UTF-8 text ({e.reason} at byte '
                           f'{e.start}); a config.json is JSON text') from None
    except json.JSONDecodeError as e:
      raise ChallengeError(f'config file {path} is not valid JSON: {e}') from None
    except RecursionError:
      raise ChallengeError(f'config file {path} nests lists or objects too deeply to be a '
                           'config') from None
    if not isinstance(from_file, dict):
      raise ChallengeError(f'config file {path} must hold a JSON object')
    base_dir = os.path.dirname(os.path.abspath(path))

  values = {}
  for name, value in from_file.items():
    if name.startswith('_'):
      continue
    if name not in by_name:
      raise ChallengeError(f'unknown config key "{name}" in {path}; known keys: '
                           + ', '.join(by_name))
    values[name] = check_value(by_name[name], value)
    if by_name[name].is_path:
      values[name] = os.path.normpath(os.path.join(base_dir, values[name]))
  for name, value in (overrides or {}).items():
    if name not in by_name:
      raise ChallengeError(f'unknown config key "{name}"')
    values[name] = check_value(by_name[name], value)
    if by_name[name].is_path:
      values[name] = os.path.abspath(values[name])
  for key in keys:
    if key.name not in values:
      default = key.default
      if key.is_path:
        default = os.path.normpath(os.path.join(base_dir, default))
      values[key.name] = default
  return Config({key.name: values[key.name] for key in keys}, source=path)
