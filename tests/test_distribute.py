"""The strategy helper."""
import numpy as np
import tensorflow as tf

from common import distribute


def test_strategies_built_one_after_another_in_a_process_do_not_collide():
  # Each MirroredStrategy starts its collective keys at the same values and TF caches
  # collective instances by key, so with TF's default reductions a second strategy whose
  # all-reduce has another shape (another model) fails: "Shape mismatch in the collective
  # instance" (tensorflow#62790). Training two models in one process must work.
  for size in (3, 5, 3):
    strategy = distribute.get_strategy(['/cpu:0', '/cpu:1'])

    @tf.function
    def summed():
      per_replica = strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
          tf.distribute.ReduceOp.SUM, tf.ones(size)))
      return strategy.experimental_local_results(per_replica)

    for result in summed():
      np.testing.assert_array_equal(result, np.full(size, 2.0))
