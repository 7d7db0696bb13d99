"""Per-example losses on logits, as in the original challenges.

Each takes (labels, logits) and returns one value per example; callers reduce. Logits are
cast to float32 so that losses stay float32 whatever the model's compute dtype.
"""
import tensorflow as tf

from common.errors import ChallengeError


def xent(labels, logits):
  """Sparse softmax cross-entropy per example."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(labels, tf.int64), logits=tf.cast(logits, tf.float32))


def cw(labels, logits, confidence=50.0):
  """Carlini-Wagner margin loss: -relu(correct_logit - max_wrong_logit + confidence).

  The max over wrong logits masks the correct class with -1e4, as the original does.
  The challenges' `loss_func: "cw"` is this loss with confidence 50.
  """
  logits = tf.cast(logits, tf.float32)
  mask = tf.one_hot(tf.cast(labels, tf.int64), tf.shape(logits)[-1], dtype=tf.float32)
  correct_logit = tf.reduce_sum(mask * logits, axis=1)
  wrong_logit = tf.reduce_max((1.0 - mask) * logits - 1e4 * mask, axis=1)
  return -tf.nn.relu(correct_logit - wrong_logit + confidence)


ATTACK_LOSSES = {'xent': xent, 'cw': cw}


def attack_loss(name):
  """The per-example loss called `name` in a config; unknown names are an error
  (the original printed a warning and silently used xent)."""
  try:
    return ATTACK_LOSSES[name]
  except KeyError:
    raise ChallengeError(f'unknown loss_func "{name}"; use one of: '
                         + ', '.join(ATTACK_LOSSES)) from None


def num_correct(labels, logits):
  return tf.reduce_sum(tf.cast(
      tf.equal(tf.argmax(logits, axis=1), tf.cast(labels, tf.int64)), tf.int64))
