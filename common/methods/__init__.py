"""The training methods of the shared trainer (common.training), registered by name: how one
replica's step turns its batch into weight gradients. One config key names the method,
`training_method`; each method is a module of this package, whose docstring is its
specification, and which defines

  NAME         the value of `training_method`
  SUMMARY      one line for --help and the docs
  keys(challenge_name) -> its own config keys, defaulting to its authors' settings for the
               data set ('mnist', 'cifar10')
  build(challenge, config, params) -> a base.Method, its attack at `params`' ε (or
               `training_epsilon`), pixel range and loss (the configured PGD's)
  OWN_SEARCH   (optional) what it searches with: it runs no training attack of its own, so
               `training_attack` must stay "pgd"
  check(config) (optional) refuses settings it would silently ignore

The modules are found here, not listed: a new method is its module, its recipe files and
its docs. The interface the trainer calls is common.methods.base.

The old keys still load as they did: `training_loss` (madry, trades, bilateral, mma) and
`training_attack: "yopo"` name the method where `training_method` is not given (its default,
"", means: the old keys' method, else madry); a `training_method` that names another method
than they do is an error.
"""
import dataclasses
import importlib
import pkgutil

from common.attacks import pgd
from common.config import Key
from common.errors import ChallengeError
from common.methods.base import Method, Result, Step, descend  # noqa: F401  (the interface)

DEFAULT = 'madry'
UNSET = ''  # training_method's default: the method the old keys name, else DEFAULT
OLD_TRAINING_LOSSES = ('madry', 'trades', 'bilateral', 'mma')  # `training_loss`'s values


def _discover():
  found = {}
  for info in pkgutil.iter_modules(__path__):
    if info.name == 'base':
      continue
    module = importlib.import_module(f'{__name__}.{info.name}')
    found[module.NAME] = module
  # The original's first, then by name (the order of --help and of config.json's keys).
  return {name: found[name] for name in sorted(found, key=lambda n: (n != DEFAULT, n))}


METHODS = _discover()


def config_keys(challenge_name: str):
  """`training_method`, the old `training_loss`, and every method's own keys with the
  defaults of its authors for the data set."""
  return (
      Key('training_method', str, UNSET, choices=(UNSET,) + tuple(METHODS),
          help='the training method: ' + '; '.join(
              f'"{name}": {module.SUMMARY}' for name, module in METHODS.items())
          + '; "" (the default): the one the old keys name (training_loss, training_attack '
          'yopo), else madry; new'),
      Key('training_loss', str, DEFAULT, choices=OLD_TRAINING_LOSSES,
          help='the old name of training_method (madry, trades, bilateral, mma), read as it '
               'where training_method is not given; new'),
  ) + tuple(key for module in METHODS.values() for key in module.keys(challenge_name))


def resolve(config):
  """`config` with `training_method` naming the method its keys choose: the new key, or
  where it is not given, the old spellings (`training_loss`, `training_attack: "yopo"`),
  else madry. The old keys stay as given (a run's config.json keeps them, beside the
  resolved training_method)."""
  old = [(key, value) for key, value in (('training_loss', config.training_loss),
                                          ('training_attack', config.training_attack))
         if value in METHODS and value != DEFAULT]
  if len(old) == 2:  # training_loss trades, bilateral or mma, and training_attack yopo
    name = config.training_loss
    raise ChallengeError(
        f'training_loss "{name}" runs its own search ({METHODS[name].OWN_SEARCH}), so '
        'training_attack "yopo" would be ignored; set training_attack to "pgd" (the default)')
  if not old:
    return (config.replace(training_method=DEFAULT) if config.training_method == UNSET
            else config)
  (key, name), = old
  if config.training_method not in (UNSET, name):
    raise ChallengeError(
        f'training_method "{config.training_method}" and the old key {key} "{name}" name two '
        f'methods; keep training_method alone (and {key} at its default)')
  return config.replace(training_method=name)


def check(config) -> None:
  """Combinations that would silently ignore a setting are errors."""
  method = METHODS[config.training_method]
  own_search = getattr(method, 'OWN_SEARCH', None)
  if own_search and config.training_attack not in ('pgd', method.NAME):
    raise ChallengeError(
        f'training_method "{method.NAME}" runs its own search ({own_search}), so '
        f'training_attack "{config.training_attack}" would be ignored; set training_attack '
        'to "pgd" (the default)')
  if hasattr(method, 'check'):
    method.check(config)


def build(challenge, config, params: pgd.PGDParams) -> Method:
  """The method `config` chooses, with its attack at `params`' ε (or `training_epsilon`: the
  defaults scaled by ε follow it)."""
  config = resolve(config)
  check(config)
  if config.training_epsilon:
    params = dataclasses.replace(params, epsilon=config.training_epsilon)
  return METHODS[config.training_method].build(challenge, config, params)
