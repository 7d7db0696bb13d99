"""How a command runs TensorFlow on this machine: GPU memory, strict float32, determinism,
XLA, and the one line that says what runs where.

* `start()` (every command, before TensorFlow initialises its devices): GPU memory grows
  as needed instead of being mapped whole (so train.py and eval.py can share a GPU), and
  TF32 is off: float32 means IEEE float32 on every device (`precision: tf32` opts in).
* `deterministic` (config key): TensorFlow's op determinism, so that a run (and a resumed
  run) repeats exactly on a GPU as it does on a CPU. Off by default: it costs speed. Every
  random draw of the commands is a stateless, seeded one, as determinism requires; the ops
  without a deterministic kernel that the models would need are replaced while it is on
  (MNIST's max pooling under XLA: `common.pooling`; CIFAR-10's batch norm in inference
  mode without XLA, for GPUs), with the same function and gradient. An op of another model that
  TensorFlow still refuses ends the command with one line (`determinism_conflict`).
* `jit_compile` (config key): XLA for the training replica's attack and gradients and for
  the evaluation attacks. `auto` turns it on where the strategy's devices are GPUs (there
  it is faster; on CPUs it was 2.4x slower).
"""
from typing import Sequence

import tensorflow as tf
# TensorFlow exports enable_op_determinism but neither query.
from tensorflow.python.framework import config as tf_config
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

from common import distribute, precision
from common.config import Key
from common.errors import ChallengeError

JIT_SETTINGS = ('auto', 'true', 'false')

RUNTIME_KEYS = (
    Key('jit_compile', str, 'auto', choices=JIT_SETTINGS,
        help='XLA for the training step and the attacks: "auto" (on where the devices are '
             'GPUs, off on CPUs), "true" or "false"; new'),
    Key('deterministic', bool, False,
        help="TensorFlow's op determinism: a run repeats exactly, on GPUs too (slower); new"),
)


def start() -> None:
  """GPU memory growth and strict float32; call before TensorFlow initialises its devices
  (later, memory growth cannot be set and is left as it is)."""
  for gpu in tf.config.list_physical_devices('GPU'):
    try:
      tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
      break  # the devices are initialised already (e.g. a notebook): nothing to change
  precision.use_tf32(False)


def make_deterministic(enabled: bool) -> None:
  """Turns op determinism on (for the rest of the process) when `enabled`."""
  if enabled:
    tf.config.experimental.enable_op_determinism()


def op_determinism() -> bool:
  """Whether TensorFlow's op determinism is on (models read it when they are traced)."""
  return tf_config.is_op_determinism_enabled()


def compiling_with_xla() -> bool:
  """Whether the code being traced is compiled by XLA (inside a tf.function with
  jit_compile, its loops and the functions it calls included)."""
  return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def determinism_conflict(error: Exception):
  """The one-line explanation of `error` if it is TensorFlow refusing an op that has no
  deterministic implementation (a model of the user's may need one), else None."""
  if not isinstance(error, tf.errors.UnimplementedError):
    return None
  message = (error.message or '').strip()
  if 'determinis' not in message.lower():
    return None
  first = message.splitlines()[0].strip()
  ways_out = ('jit_compile false (keeps deterministic) or deterministic false (keeps XLA)'
              if 'XLA' in first else 'deterministic false')
  return (f'the model needs an op that TensorFlow cannot run deterministically here '
          f'("{first}"); run it with {ways_out}')


def devices(strategy: tf.distribute.Strategy) -> Sequence[str]:
  """The names of the devices the strategy computes on (where ops land for the default
  strategy)."""
  try:
    return tuple(strategy.extended.worker_devices)
  except RuntimeError:  # the default strategy: wherever TF places ops in this scope
    return (tf.zeros([]).device,)


def device_kind(strategy: tf.distribute.Strategy) -> str:
  """'GPU' if the strategy computes on GPUs, else 'CPU'."""
  return 'GPU' if all(':GPU:' in name.upper() for name in devices(strategy)) else 'CPU'


def jit_compile(setting: str, strategy: tf.distribute.Strategy) -> bool:
  """Whether to compile with XLA: `setting` is a config's jit_compile."""
  if setting not in JIT_SETTINGS:
    raise ChallengeError(f'unknown jit_compile "{setting}"; use one of: '
                         + ', '.join(JIT_SETTINGS))
  if setting == 'auto':
    return device_kind(strategy) == 'GPU'
  return setting == 'true'


def describe(strategy: tf.distribute.Strategy, precision_name: str, jit: bool,
             deterministic: bool) -> str:
  """One line: the strategy, its workers and replicas, the device kind, and the arithmetic:
  e.g. 'strategy: MultiWorkerMirroredStrategy, 2 workers, 2 replicas, CPU; precision
  float32, XLA off, deterministic off'."""
  name = type(strategy).__name__.lstrip('_')
  # The names users write: TensorFlow's MultiWorkerMirroredStrategy is an alias of this class.
  name = {'DefaultDistributionStrategy': 'one device',
          'CollectiveAllReduceStrategy': 'MultiWorkerMirroredStrategy'}.get(name, name)
  workers = distribute.num_workers(strategy)
  replicas = strategy.num_replicas_in_sync
  return (f'strategy: {name}, {workers} worker{"s" * (workers != 1)}, {replicas} '
          f'replica{"s" * (replicas != 1)}, {device_kind(strategy)}; precision '
          f'{precision_name}, XLA {"on" if jit else "off"}, deterministic '
          f'{"on" if deterministic else "off"}')


def set_up(strategy: tf.distribute.Strategy, precision_name: str, jit_setting: str,
           deterministic: bool, log=None) -> bool:
  """Readies the process for computing in `precision_name` (TF32 only for tf32), with op
  determinism if asked; returns whether to compile with XLA. With `log`, says what runs
  where (`describe`)."""
  precision.use(precision_name)
  make_deterministic(deterministic)
  jit = jit_compile(jit_setting, strategy)
  if log is not None:
    log(describe(strategy, precision_name, jit, deterministic))
  return jit
