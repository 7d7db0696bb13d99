"""The distribution strategy: MirroredStrategy over several local GPUs, else the default."""
from typing import Optional, Sequence

import tensorflow as tf


def _cross_device_ops(devices):
  # TF's default for MirroredStrategy is collective all-reduce, whose keys every strategy
  # starts at the same values; TF caches collective instances by key, so a second strategy
  # in the same process whose reductions have other shapes (another model) fails with
  # "Shape mismatch in the collective instance" (tensorflow#62790). These reductions use no
  # collective keys: NCCL on GPUs (as TF's default did before), one-device reduction on CPUs.
  # NCCL needs one physical GPU per device: not for CPUs nor virtual GPUs.
  physical_gpus = len(tf.config.list_physical_devices('GPU'))
  if (all('GPU' in device.upper() for device in devices)
      and physical_gpus == len(tf.config.list_logical_devices('GPU'))):
    return tf.distribute.NcclAllReduce()
  return tf.distribute.ReductionToOneDevice()


def get_strategy(devices: Optional[Sequence[str]] = None) -> tf.distribute.Strategy:
  """`devices` forces a MirroredStrategy over exactly those devices (e.g. logical CPUs in
  tests); otherwise every visible GPU, or the default strategy with one or none."""
  if not devices:
    gpus = tf.config.list_logical_devices('GPU')
    if len(gpus) <= 1:
      return tf.distribute.get_strategy()
    devices = [gpu.name for gpu in gpus]
  return tf.distribute.MirroredStrategy(list(devices),
                                        cross_device_ops=_cross_device_ops(devices))
