"""The distribution strategy, chosen in one place.

Training (`get_strategy`): MultiWorkerMirroredStrategy when a cluster is configured (TF_CONFIG
naming more than one worker, or a cluster resolver asked for by name), MirroredStrategy over
several local GPUs, else TF's default strategy; `strategy=` forces a choice. Evaluation and
attacks run in one process (`local_strategy`) and never join a cluster, even where TF_CONFIG
is set.
"""
import json
import os
from typing import Mapping, Optional, Sequence

import tensorflow as tf

from common.errors import ChallengeError

STRATEGIES = {
    'auto': 'multi_worker if TF_CONFIG names several workers or --cluster_resolver is set, '
            'else mirrored with several local GPUs, else default',
    'default': 'one device',
    'mirrored': 'MirroredStrategy over the local GPUs (one process; one device with fewer '
                'than two GPUs)',
    'multi_worker': 'MultiWorkerMirroredStrategy (one process per host, see TF_CONFIG)',
}
CLUSTER_RESOLVERS = {
    'tf_config': 'the TF_CONFIG environment variable (the default)',
    'slurm': "SLURM's environment inside `srun` (a task per host, or several per host on "
             'consecutive ports)',
}
SLURM_PORT = 8888  # TF's SlurmClusterResolver default: the first task's port on each node
# The parts of a cluster MultiWorkerMirroredStrategy trains with; TF_CONFIG may also name an
# evaluator (a separate eval.py process here) but not parameter servers.
_TRAINING_JOBS = ('chief', 'worker')


def physical_gpus() -> int:
  """How many GPUs this process may use. Listing physical devices does not start TF's
  runtime (listing logical ones would, and joining a cluster must come first). The one
  place the code asks, so that a caller (the tests) can mean the CPU on a GPU host."""
  return len(tf.config.list_physical_devices('GPU'))


def _cross_device_ops(devices):
  # TF's default for MirroredStrategy is collective all-reduce, whose keys every strategy
  # starts at the same values; TF caches collective instances by key, so a second strategy
  # in the same process whose reductions have other shapes (another model) fails with
  # "Shape mismatch in the collective instance" (tensorflow#62790). These reductions use no
  # collective keys: NCCL on GPUs (as TF's default did before), one-device reduction on CPUs.
  # NCCL needs one physical GPU per device: not for CPUs nor virtual GPUs.
  if (all('GPU' in device.upper() for device in devices)
      and physical_gpus() == len(tf.config.list_logical_devices('GPU'))):
    return tf.distribute.NcclAllReduce()
  return tf.distribute.ReductionToOneDevice()


def local_strategy(devices: Optional[Sequence[str]] = None) -> tf.distribute.Strategy:
  """One process: `devices` forces a MirroredStrategy over exactly those devices (e.g.
  logical CPUs in tests); otherwise every visible GPU, or the default strategy with one or
  none."""
  if not devices:
    gpus = tf.config.list_logical_devices('GPU') if physical_gpus() else []
    if len(gpus) <= 1:
      return tf.distribute.get_strategy()
    devices = [gpu.name for gpu in gpus]
  return tf.distribute.MirroredStrategy(list(devices),
                                        cross_device_ops=_cross_device_ops(devices))


def read_tf_config(environ: Mapping[str, str] = os.environ) -> Optional[dict]:
  """TF_CONFIG, checked: None when unset or empty; a ChallengeError naming what is wrong."""
  text = environ.get('TF_CONFIG', '').strip()
  if not text:
    return None
  def bad(problem):
    return ChallengeError(
        f'TF_CONFIG {problem}. It must be JSON like {{"cluster": {{"worker": ["host1:12345", '
        '"host2:12345"]}, "task": {"type": "worker", "index": 0}}, the same cluster on every '
        'host and each host its own index (see docs/multihost.md)')
  try:
    tf_config = json.loads(text)
  except json.JSONDecodeError as e:
    raise bad(f'is not JSON ({e})') from None
  if not isinstance(tf_config, dict):
    raise bad('is not a JSON object')
  cluster, task = tf_config.get('cluster'), tf_config.get('task')
  if not isinstance(cluster, dict) or not cluster:
    raise bad('has no "cluster" object')
  for job, addresses in cluster.items():
    if (not isinstance(addresses, list) or not addresses
        or not all(isinstance(a, str) and a.rpartition(':')[2].isdigit() for a in addresses)):
      raise bad(f'cluster "{job}" is not a list of "host:port" addresses')
  if 'ps' in cluster:
    raise bad('names parameter servers ("ps"): training here is synchronous '
              '(MultiWorkerMirroredStrategy), with "chief" and "worker" tasks only')
  if not any(job in cluster for job in _TRAINING_JOBS):
    raise bad('names no "worker" (or "chief") tasks')
  if not isinstance(task, dict) or 'type' not in task or 'index' not in task:
    raise bad('has no "task" with "type" and "index" (which of the cluster\'s tasks this is)')
  task_type, index = task['type'], task['index']
  if task_type not in cluster:
    raise bad(f'task type "{task_type}" is not in the cluster ({", ".join(cluster)})')
  if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(
      cluster[task_type]):
    raise bad(f'task index {index!r} is not one of the {len(cluster[task_type])} '
              f'"{task_type}" tasks (0 to {len(cluster[task_type]) - 1})')
  if task_type not in _TRAINING_JOBS:
    raise ChallengeError(f'TF_CONFIG makes this task "{task_type}"; train.py runs as "chief" '
                         'or "worker" tasks. Run eval.py for evaluation: it is a separate '
                         "process that watches the chief's model_dir.")
  return tf_config


def _training_tasks(cluster: Mapping) -> int:
  """How many processes of a cluster ({job: [addresses]}) train together."""
  return sum(len(cluster.get(job, ())) for job in _TRAINING_JOBS)


def choose(strategy: str = 'auto', cluster_resolver: Optional[str] = None,
           environ: Mapping[str, str] = os.environ, num_gpus: int = 0) -> str:
  """Which strategy to train with: 'multi_worker', 'mirrored' or 'default'."""
  if strategy not in STRATEGIES:
    raise ChallengeError(f'unknown strategy "{strategy}"; use one of: ' + ', '.join(STRATEGIES))
  if cluster_resolver and cluster_resolver not in CLUSTER_RESOLVERS:
    raise ChallengeError(f'unknown cluster resolver "{cluster_resolver}"; use one of: '
                         + ', '.join(CLUSTER_RESOLVERS))
  if cluster_resolver:
    if strategy not in ('auto', 'multi_worker'):
      raise ChallengeError(f'--cluster_resolver {cluster_resolver} trains on several hosts: '
                           f'it needs strategy multi_worker (or auto), not {strategy}')
    if cluster_resolver == 'tf_config':
      read_tf_config(environ)  # malformed: an error now, not inside TF
    return 'multi_worker'
  tf_config = read_tf_config(environ)
  workers = _training_tasks(tf_config['cluster']) if tf_config else 0
  if strategy == 'auto':
    if workers > 1:
      return 'multi_worker'
    return 'mirrored' if num_gpus > 1 else 'default'
  if strategy != 'multi_worker' and workers > 1:
    raise ChallengeError(
        f'TF_CONFIG names {workers} workers, but the strategy is "{strategy}": each host would '
        'train on its own into the same model_dir. Use strategy multi_worker (or auto), or '
        'unset TF_CONFIG.')
  return strategy


class _SlurmResolver(tf.distribute.cluster_resolver.SlurmClusterResolver):
  """SLURM's cluster, one task per host or several. Unlike TF's resolver, GPUs are not
  assigned here: each task uses the GPUs SLURM made visible to it (`--gpus-per-task`), and a
  CPU-only node works (TF's resolver asks nvidia-smi and cannot count zero GPUs)."""

  def __init__(self, port_base: int, visible_gpus: int):
    # gpus_per_node only has to be large enough for TF's bookkeeping: auto_set_gpu is off.
    super().__init__(port_base=port_base, gpus_per_node=1 << 10, gpus_per_task=1,
                     auto_set_gpu=False)
    self._visible_gpus = visible_gpus

  def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
    return {'GPU': self._visible_gpus}


def _cluster_resolver(name, port_base):
  if name == 'slurm':
    try:
      return _SlurmResolver(port_base, physical_gpus())
    except (RuntimeError, ValueError) as e:
      raise ChallengeError(f'--cluster_resolver slurm: {e} (start train.py with srun; see '
                           'docs/multihost.md)') from None
  return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def get_strategy(strategy: str = 'auto', cluster_resolver: Optional[str] = None,
                 port_base: int = SLURM_PORT) -> tf.distribute.Strategy:
  """The training strategy (see `choose`). Call it before TensorFlow runs anything: joining
  a cluster has to happen at startup."""
  chosen = choose(strategy, cluster_resolver, os.environ, physical_gpus())
  if chosen == 'default':
    return tf.distribute.get_strategy()
  if chosen == 'mirrored':
    return local_strategy()
  resolver = _cluster_resolver(cluster_resolver, port_base)
  try:
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
  except RuntimeError as e:  # e.g. TF's runtime already started in this process
    raise ChallengeError(f'could not join the cluster: {e}') from None


def _cluster(strategy: tf.distribute.Strategy):
  """The strategy's cluster resolver, if it trains in a cluster."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  return resolver if resolver is not None and resolver.task_type is not None else None


def task_name(strategy: tf.distribute.Strategy) -> str:
  """'worker 1' etc. under MultiWorkerMirroredStrategy, else ''."""
  resolver = _cluster(strategy)
  return f'{resolver.task_type} {resolver.task_id}' if resolver else ''


def num_workers(strategy: tf.distribute.Strategy) -> int:
  """How many processes train together (1 outside a cluster)."""
  resolver = _cluster(strategy)
  if resolver is None:
    return 1
  return _training_tasks(resolver.cluster_spec().as_dict())


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes checkpoints, summaries and progress (the only one
  outside a multi-worker cluster)."""
  return strategy.extended.should_checkpoint
