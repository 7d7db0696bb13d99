"""Input defences, as wrappers in front of any model (ours, or a model file's), at evaluation
and at training; chosen by the config key `defence` (flag --defence) in both challenges:

  name               module                 what                           random  BPDA "on"
  thermometer        thermometer.py         Buckman et al. 2018, 16 levels  no      soft code
  bit_depth          bit_depth.py           Xu et al. 2018, 2^bits levels   no      identity
  random_resize_pad  random_resize_pad.py   Xie et al. 2018, scaled         yes     itself

The attacks see a defended model as any model: x -> logits. `bpda` (base.BACKWARDS) replaces
the defence's backward pass in every gradient attack at once (PGD, APGD, FAB, C&W), and in
the training-time attack; `eot_samples` (PGD and APGD, common/attacks/eot.py) averages each
gradient over that many draws of a randomised defence. A randomised defence draws from a
generator seeded by the command's seed (`Defended.reseed`): a run repeats with its seed.

The defence is not part of a checkpoint: the network is (for thermometer, a network taking
the codes, C·levels channels: `input_channels`). With no defence (the default) nothing
changes: the model is the network itself.
"""
from typing import Optional

import tensorflow as tf

from common import precision
from common.config import Key
from common.defences.base import BACKWARDS, Defence
from common.defences.bit_depth import BitDepth
from common.defences.random_resize_pad import RandomResizePad
from common.defences.thermometer import Thermometer
from common.errors import ChallengeError

NONE = 'none'
DEFENCES = {d.name: d for d in (Thermometer, BitDepth, RandomResizePad)}


def config_keys(bit_depth: int):
  """The defence's keys (the same in both challenges but bit_depth's default: Xu et al.'s)."""
  return (
      Key('defence', str, NONE, choices=(NONE,) + tuple(DEFENCES),
          help='an input defence in front of the network, at evaluation and training: "none", '
               '"thermometer" (Buckman et al. 2018), "bit_depth" (Xu et al. 2018) or '
               '"random_resize_pad" (Xie et al. 2018; evaluation only); docs/'
               'obfuscated_gradients.md; new'),
      Key('thermometer_levels', int, 16, minimum=2, maximum=256,
          help='thermometer: the levels of the code (Buckman et al.\'s 16); the network takes '
               'channels x levels values per pixel; new'),
      Key('bit_depth', int, bit_depth, minimum=1, maximum=16,
          help=f'bit_depth: the bits each pixel keeps (Xu et al.\'s for this data set: '
               f'{bit_depth}); new'),
      Key('bpda', str, 'off', choices=tuple(BACKWARDS),
          help='how gradients pass the defence, in every attack and the training attack: '
               + '; '.join(f'"{name}": {what}' for name, what in BACKWARDS.items()) + '; new'),
      Key('eot_samples', int, 1, minimum=1, maximum=10000,
          help='PGD and APGD: each gradient the mean over this many draws of a randomised '
               'defence (expectation over transformation); 1: one draw; new'),
  )


def from_config(config, image_shape, pixel_max) -> Optional[Defence]:
  """The config's defence (None for "none"), after checking the combination of keys."""
  name = getattr(config, 'defence', NONE)
  backward = getattr(config, 'bpda', 'off')
  eot = getattr(config, 'eot_samples', 1)
  if name not in DEFENCES and name != NONE:
    raise ChallengeError(f'unknown defence "{name}"; use one of: '
                         + ', '.join((NONE,) + tuple(DEFENCES)))
  if eot < 1:
    raise ChallengeError(f'eot_samples must be at least 1 (1: one draw per gradient), found '
                         f'{eot}')
  if name == NONE:
    if backward != 'off':
      raise ChallengeError(f'bpda "{backward}" replaces a defence\'s backward pass, but no '
                           'defence is set: set defence (thermometer, bit_depth, '
                           'random_resize_pad) or bpda "off"')
    if eot > 1:
      raise ChallengeError(f'eot_samples {eot} averages over a randomised defence\'s draws, '
                           'but no defence is set: nothing to average; set eot_samples 1 or '
                           'defence random_resize_pad')
    return None
  cls = DEFENCES[name]
  if name == 'thermometer':
    defence = cls(image_shape, pixel_max, config.thermometer_levels)
  elif name == 'bit_depth':
    defence = cls(image_shape, pixel_max, config.bit_depth)
  else:
    defence = cls(image_shape, pixel_max)
  if eot > 1 and not defence.randomised:
    raise ChallengeError(f'eot_samples {eot} averages over a randomised defence\'s draws, but '
                         f'{name} is deterministic: nothing to average; set eot_samples 1 '
                         '(for a step function use bpda instead)')
  if backward == 'identity' and not defence.keeps_shape:
    raise ChallengeError(f'bpda "identity" passes the gradient through unchanged, but {name} '
                         'changes the input\'s shape; use bpda "approximation" (or "on")')
  return defence


def backward_of(config, defence: Defence) -> str:
  """The config's bpda resolved ("on": the defence's default)."""
  backward = getattr(config, 'bpda', 'off')
  return defence.default_backward if backward == 'on' else backward


def input_channels(config, image_channels: int) -> int:
  """The channels the network's images have under the config's defence."""
  if getattr(config, 'defence', NONE) == 'thermometer':
    return image_channels * config.thermometer_levels
  return image_channels


class Defended:
  """network behind a defence: x -> network(defence(x)), a callable as the evaluation code
  calls a model (`(x, training=False)`). `reseed(seed)` restarts a randomised defence's
  draws. The network keeps its weights (restored into it, they are seen here)."""

  def __init__(self, network, defence: Defence, backward: str = 'off', seed: int = 0):
    self.network, self.defence, self.backward = network, defence, backward
    self.name = f'{getattr(network, "name", "model")} behind {defence.name}'
    self._generator = (tf.random.Generator.from_seed(seed) if defence.randomised
                       else None)

  def reseed(self, seed: int) -> None:
    if self._generator is not None:
      self._generator.reset_from_seed(seed)

  def transform(self, x):
    """The defence alone (the network's inputs), gradients as `backward`."""
    return self.defence.apply(x, self.backward, self._generator)

  def __call__(self, x, training=False):
    return self.network(self.transform(x), training=training)


def network_input_shape(config, challenge) -> tuple:
  """The shape of one input of the network behind the config's defence (the challenge's
  own, but for thermometer codes)."""
  return _network_shape(from_config(config, challenge.image_shape, challenge.pixel_max),
                        challenge)


def _network_shape(defence: Optional[Defence], challenge) -> tuple:
  return (defence.network_input_shape(challenge.input_shape) if defence is not None
          else tuple(challenge.input_shape))


def defend(network, config, challenge, seed: int = 0, what: str = 'the model'):
  """network behind the config's defence (network itself when there is none), after
  checking that the network takes what the defence gives it (a thermometer network takes
  the codes: its checkpoint holds a first layer of C·levels channels)."""
  defence = from_config(config, challenge.image_shape, challenge.pixel_max)
  expected = _network_shape(defence, challenge)
  found = getattr(network, 'input_shape', None)
  if isinstance(found, tuple) and len(found) > 1 and tuple(found[1:]) != expected:
    codes = tuple(found[1:])
    raise ChallengeError(
        f'{what} takes inputs of shape {codes}, but behind defence "{config.defence}" it '
        f'would be given {expected}: a network trained behind thermometer takes its codes '
        '(set defence and thermometer_levels as it was trained: its config.json)')
  if defence is None:
    return network
  return Defended(network, defence, backward_of(config, defence), seed)


def require_float32(config, attack_precision: str) -> None:
  """A defended model is attacked in float32 (or tf32): its twin in another precision
  would need the defence inside the network."""
  if (getattr(config, 'defence', NONE) != NONE
      and not precision.computes_in_float32(attack_precision)):
    raise ChallengeError(f'eval_precision {attack_precision} with a defence: a defended model '
                         'is attacked in float32 (or tf32); set eval_precision to one of those')
