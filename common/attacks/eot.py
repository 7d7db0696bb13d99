"""Expectation over transformation (EOT; Athalye, Engstrom, Ilyas and Kwok, ICML 2018, and
Athalye, Carlini and Wagner, ICML 2018, §4.1.3): against a randomised model, each gradient is
the mean over `samples` draws, as fra31/auto-attack's APGD computes it with `eot_iter`: the
gradient of the summed loss of each of `samples` forward passes (each pass its own draw of
the model's randomness), summed in order and divided by `samples`; the logits and the
per-example loss returned are those of the last pass (the reference's, which its step-size
rule and its success check read).

`samples` 1 is one pass, computed exactly as without EOT. Used by PGD (`pgd.input_gradient`)
and APGD (`apgd`); a deterministic model gives `samples` equal gradients (the commands refuse
eot_samples > 1 without a randomised defence: nothing to average).
"""
import tensorflow as tf


def averaged(one_pass, samples: int):
  """one_pass() -> (logits, loss, gradient) of one draw; returns the last pass's logits and
  loss and the mean gradient of `samples` passes (a tf.while_loop: the graph holds one)."""
  if samples == 1:
    return one_pass()
  logits, loss, total = one_pass()

  def body(i, logits, loss, total):
    logits, loss, gradient = one_pass()
    return i + 1, logits, loss, total + gradient

  _, logits, loss, total = tf.while_loop(lambda i, *_: i < samples, body,
                                         (tf.constant(1), logits, loss, total))
  return logits, loss, total / float(samples)
