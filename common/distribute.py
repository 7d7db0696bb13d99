"""The distribution strategy: MirroredStrategy over several local GPUs, else the default."""
from typing import Optional, Sequence

import tensorflow as tf


def get_strategy(devices: Optional[Sequence[str]] = None) -> tf.distribute.Strategy:
  """`devices` forces a MirroredStrategy over exactly those devices (e.g. logical CPUs in
  tests); otherwise every visible GPU, or the default strategy with one or none."""
  if devices:
    return tf.distribute.MirroredStrategy(list(devices))
  gpus = tf.config.list_logical_devices('GPU')
  if len(gpus) > 1:
    return tf.distribute.MirroredStrategy([d.name for d in gpus])
  return tf.distribute.get_strategy()
