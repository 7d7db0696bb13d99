"""The strategy helper: which strategy for which machine and TF_CONFIG, and its errors."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from common import distribute
from common.errors import ChallengeError

pytestmark = pytest.mark.versions  # run on the oldest supported TensorFlow too


def test_strategies_built_one_after_another_in_a_process_do_not_collide():
  # Each MirroredStrategy starts its collective keys at the same values and TF caches
  # collective instances by key, so with TF's default reductions a second strategy whose
  # all-reduce has another shape (another model) fails: "Shape mismatch in the collective
  # instance" (tensorflow#62790). Training two models in one process must work.
  for size in (3, 5, 3):
    strategy = distribute.local_strategy(['/cpu:0', '/cpu:1'])

    @tf.function
    def summed():
      per_replica = strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
          tf.distribute.ReduceOp.SUM, tf.ones(size)))
      return strategy.experimental_local_results(per_replica)

    for result in summed():
      np.testing.assert_array_equal(result, np.full(size, 2.0))


def tf_config(cluster, task_type='worker', index=0):
  return {'TF_CONFIG': json.dumps({'cluster': cluster,
                                   'task': {'type': task_type, 'index': index}})}


TWO_WORKERS = {'worker': ['host1:2222', 'host2:2222']}


@pytest.mark.parametrize('environ, num_gpus, expected', [
    ({}, 0, 'default'),
    ({}, 1, 'default'),
    ({}, 4, 'mirrored'),
    ({'TF_CONFIG': ''}, 0, 'default'),
    (tf_config(TWO_WORKERS), 0, 'multi_worker'),
    (tf_config(TWO_WORKERS, index=1), 4, 'multi_worker'),
    (tf_config({'chief': ['host1:2222'], 'worker': ['host2:2222']}, 'chief'), 0,
     'multi_worker'),
    # One worker (an evaluator beside it does not train): a single machine.
    (tf_config({'worker': ['host1:2222'], 'evaluator': ['host2:2222']}), 0, 'default'),
    (tf_config({'worker': ['host1:2222']}), 2, 'mirrored'),
])
def test_auto_chooses_by_tf_config_and_gpus(environ, num_gpus, expected):
  assert distribute.choose('auto', None, environ, num_gpus) == expected


def test_a_forced_choice_wins_unless_it_would_split_a_cluster():
  assert distribute.choose('default', None, {}, 4) == 'default'
  assert distribute.choose('mirrored', None, {}, 0) == 'mirrored'
  assert distribute.choose('multi_worker', None, {}, 0) == 'multi_worker'
  assert distribute.choose('multi_worker', None, tf_config(TWO_WORKERS), 0) == 'multi_worker'
  for strategy in ('default', 'mirrored'):
    with pytest.raises(ChallengeError, match='TF_CONFIG names 2 workers.*each host would train'):
      distribute.choose(strategy, None, tf_config(TWO_WORKERS), 0)


def test_a_named_cluster_resolver_means_several_hosts():
  assert distribute.choose('auto', 'slurm', {}, 0) == 'multi_worker'
  assert distribute.choose('auto', 'tf_config', tf_config(TWO_WORKERS), 0) == 'multi_worker'
  with pytest.raises(ChallengeError, match='needs strategy multi_worker'):
    distribute.choose('default', 'slurm', {}, 0)
  with pytest.raises(ChallengeError, match='unknown cluster resolver "k8s"'):
    distribute.choose('auto', 'k8s', {}, 0)
  with pytest.raises(ChallengeError, match='unknown strategy "tpu"'):
    distribute.choose('tpu', None, {}, 0)


@pytest.mark.parametrize('text, message', [
    ('{"cluster": {"worker": ["h:1"]', 'is not JSON'),
    ('[1, 2]', 'is not a JSON object'),
    ('{"task": {"type": "worker", "index": 0}}', 'has no "cluster" object'),
    ('{"cluster": {"worker": "h1:1,h2:1"}, "task": {"type": "worker", "index": 0}}',
     'cluster "worker" is not a list of "host:port"'),
    ('{"cluster": {"worker": ["h1"]}, "task": {"type": "worker", "index": 0}}',
     'cluster "worker" is not a list of "host:port"'),
    ('{"cluster": {"worker": ["h1:1", "h2:1"]}}', 'has no "task"'),
    ('{"cluster": {"worker": ["h1:1", "h2:1"]}, "task": {"type": "worker", "index": 2}}',
     'task index 2 is not one of the 2 "worker" tasks'),
    ('{"cluster": {"worker": ["h1:1", "h2:1"]}, "task": {"type": "worker", "index": "1"}}',
     "task index '1' is not one of"),
    ('{"cluster": {"worker": ["h1:1", "h2:1"]}, "task": {"type": "chief", "index": 0}}',
     'task type "chief" is not in the cluster'),
    ('{"cluster": {"worker": ["h1:1"], "ps": ["h2:1"]}, "task": {"type": "worker", "index": 0}}',
     'parameter servers'),
    ('{"cluster": {"evaluator": ["h1:1"]}, "task": {"type": "evaluator", "index": 0}}',
     'names no "worker"'),
    ('{"cluster": {"worker": ["h1:1"], "evaluator": ["h2:1"]}, '
     '"task": {"type": "evaluator", "index": 0}}', 'Run eval.py for evaluation'),
])
def test_a_malformed_tf_config_is_a_clear_error(text, message):
  with pytest.raises(ChallengeError, match=message) as error:
    distribute.choose('auto', None, {'TF_CONFIG': text}, 0)
  assert 'TF_CONFIG' in str(error.value)


def test_slurm_resolver_reads_slurms_environment_without_touching_gpus(monkeypatch):
  # SLURM's variables inside `srun -N 2 --ntasks-per-node 1` on nodes gpu07 and gpu08; TF's
  # own resolver would ask nvidia-smi (absent on CPU nodes) and rewrite CUDA_VISIBLE_DEVICES.
  for name, value in {'SLURM_PROCID': '1', 'SLURM_STEP_NUM_TASKS': '2',
                      'SLURM_STEP_NODELIST': 'gpu[07-08]',
                      'SLURM_STEP_TASKS_PER_NODE': '1(x2)'}.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '3')
  monkeypatch.setattr(distribute, 'physical_gpus', lambda: 1)  # what the process sees
  resolver = distribute._cluster_resolver('slurm', 9000)  # pylint: disable=protected-access
  assert resolver.cluster_spec().as_dict() == {'worker': ['gpu07:9000', 'gpu08:9000']}
  assert (resolver.task_type, resolver.task_id) == ('worker', 1)
  assert resolver.num_accelerators() == {'GPU': 1}  # the GPU SLURM made visible, no more
  assert os.environ['CUDA_VISIBLE_DEVICES'] == '3'


def test_slurm_resolver_outside_slurm_is_a_clear_error(monkeypatch):
  monkeypatch.delenv('SLURM_PROCID', raising=False)
  with pytest.raises(ChallengeError, match='SLURM_PROCID not found.*srun'):
    distribute._cluster_resolver('slurm', 9000)  # pylint: disable=protected-access


def test_outside_a_cluster_this_process_is_the_only_worker_and_the_chief():
  strategy = distribute.local_strategy(['/cpu:0', '/cpu:1'])
  assert distribute.is_chief(strategy) and distribute.num_workers(strategy) == 1
  assert distribute.task_name(strategy) == ''
  default = tf.distribute.get_strategy()
  assert distribute.is_chief(default) and distribute.num_workers(default) == 1
