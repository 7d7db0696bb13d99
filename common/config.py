"""One configuration type for both challenges.

A challenge declares its keys (name, type, default) as a tuple of `Key`s; `load_config`
reads an original-style `config.json` against them. The original files repeat the key
"_comment", so keys starting with "_" are comments and duplicates of them are allowed; any
other duplicate, unknown key or wrongly typed value is an error naming the key.
"""
import dataclasses
import json
import os
from typing import Any, Mapping, Optional, Sequence

from common.errors import ChallengeError


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


def check_value(key: Key, value: Any) -> Any:
  """Returns `value` as the key's type, or raises naming the key."""
  if key.choices is not None and isinstance(value, bool) and 'true' in key.choices:
    value = 'true' if value else 'false'
  ok = (isinstance(value, bool) if key.type is bool else
        # bool is an int in Python, but `true` is not a step count.
        isinstance(value, int) and not isinstance(value, bool) if key.type is int else
        isinstance(value, (int, float)) and not isinstance(value, bool) if key.type is float
        else isinstance(value, key.type))
  if not ok:
    raise ChallengeError(
        f'config key "{key.name}" must be {_type_name(key.type)}, '
        f'found {json.dumps(value)} ({type(value).__name__})')
  if key.choices is not None and value not in key.choices:
    raise ChallengeError(f'config key "{key.name}" must be one of {", ".join(key.choices)}, '
                         f'found {json.dumps(value)}')
  if key.minimum is not None and value < key.minimum:
    raise ChallengeError(f'config key "{key.name}" must be at least {key.minimum:g}, '
                         f'found {value}')
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
    try:
      with open(path) as f:
        from_file = json.load(f, object_pairs_hook=_reject_duplicates)
    except FileNotFoundError:
      raise ChallengeError(f'config file {path} does not exist; pass --config with the '
                           'path of a config.json') from None
    except json.JSONDecodeError as e:
      raise ChallengeError(f'config file {path} is not valid JSON: {e}') from None
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
