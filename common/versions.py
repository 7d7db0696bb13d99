"""The TensorFlow and Keras releases this project is tested with, and the check every command
makes at start-up. setup.cfg's install_requires declares the same ranges (a test holds the
two together); CI runs the whole suite on the newest releases and the version-dependent tests
(marker `versions`) on the oldest pair (docs/versions.md)."""
import re
import sys
from typing import Dict, Optional, Tuple

# {distribution: (lowest tested release, first release not tested)}.
# Keras from 3.14.0: the first release with every published fix for loading model files
# (safe mode bypasses, HDF5 weights exhausting memory, archive path traversal; docs/models.md),
# which needs Python 3.11.
SUPPORTED = {'tensorflow': ('2.18.1', '2.22'), 'keras': ('3.14.0', '3.16')}


def release(version: str) -> Optional[Tuple[int, int, int]]:
  """'2.18.1' -> (2, 18, 1); '2.22.0rc1', '3.16.0.dev2026' -> their release numbers; None if
  `version` is not one."""
  found = re.match(r'(\d+)\.(\d+)(?:\.(\d+))?', version)
  return tuple(int(part or 0) for part in found.groups()) if found else None


def requirement(name: str) -> str:
  """The pip requirement of `name`, e.g. 'tensorflow>=2.18.1,<2.22'."""
  lowest, beyond = SUPPORTED[name]
  return f'{name}>={lowest},<{beyond}'


def oldest_pins() -> str:
  """The oldest tested pair as pip arguments: 'tensorflow==2.18.1 keras==3.14.0' (.ci/run)."""
  return ' '.join(f'{name}=={lowest}' for name, (lowest, _) in SUPPORTED.items())


def problem(installed: Dict[str, str]) -> Optional[str]:
  """Why {name: version} is outside the tested ranges (one line), or None."""
  def tested(name):
    found = release(installed[name])
    lowest, beyond = SUPPORTED[name]
    return found is not None and release(lowest) <= found < release(beyond)
  if all(tested(name) for name in SUPPORTED):
    return None
  found = ' and '.join(f'{name} {installed[name]}' for name in SUPPORTED)
  tensorflow, keras = (requirement(name) for name in SUPPORTED)
  return (f'{found} are installed; this project is tested with {tensorflow} and {keras} '
          f'only: pip install "{tensorflow}" "{keras}"')


def installed() -> Dict[str, str]:
  import tensorflow as tf
  try:
    import keras
  except ImportError:
    return {'tensorflow': tf.__version__, 'keras': '(not installed)'}
  return {'tensorflow': tf.__version__, 'keras': keras.__version__}


def require() -> None:
  """Exits with one line (exit code 1) unless the installed TensorFlow and Keras are in the
  tested ranges."""
  reason = problem(installed())
  if reason:
    print(f'error: {reason}', file=sys.stderr)
    sys.exit(1)
