"""Max pooling that XLA can differentiate under op determinism, with TensorFlow's gradient.

TensorFlow refuses to compile MaxPool's gradient with XLA when op determinism is on ("GPU
MaxPool gradient ops do not yet have a deterministic XLA implementation": XLA's
select-and-scatter may add overlapping windows' contributions in any order). For windows
that do not overlap (stride = pool size, as in the MNIST network) nothing is added: each
input gets the gradient of at most one output. `max_pool` computes that case with plain
reshapes and reductions, and a gradient that routes each output's gradient to the first
maximum of its window in row-major order, as TensorFlow's MaxPoolGrad kernels do (oneDNN's
and Eigen's; checked bit for bit in tests/test_determinism.py). Ties therefore go where the
original's went: it is the original's gradient, not an average over the ties (which is
what differentiating `reduce_max` would give). (XLA's own select-and-scatter, without
determinism, does not always: on 7x7 inputs it sent some ties elsewhere.)

`MaxPooling2D` is Keras' layer (same name, same config, no weights) that uses `max_pool`
in code XLA compiles under op determinism, and TensorFlow's own kernel otherwise (without
XLA, TensorFlow's kernel is deterministic and, on the CPU, faster: the MNIST training step
ran at 0.58x the speed with `max_pool` there).
"""
import keras
import tensorflow as tf

from common import runtime


def _pad_to_windows(x, pool, padding):
  """x [N, H, W, C] padded ('same': with -inf at the end, as TF pads max pooling) or
  cropped ('valid') to whole windows."""
  height, width = x.shape[1], x.shape[2]
  if padding == 'same':
    pad_h, pad_w = -height % pool, -width % pool
    if pad_h or pad_w:
      x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], constant_values=float('-inf'))
    return x
  return x[:, :height - height % pool, :width - width % pool, :]


@tf.custom_gradient
def _first_max(windows):
  """windows [..., k] -> their max [...]; the gradient goes whole to the first maximum."""
  top = tf.reduce_max(windows, axis=-1)

  def gradient(upstream):
    equal = tf.equal(windows, top[..., None])
    # The first maximum: equal, and no maximum before it.
    before = tf.cumsum(tf.cast(equal, tf.int32), axis=-1, exclusive=True)
    first = equal & tf.equal(before, 0)
    return tf.where(first, upstream[..., None], tf.zeros_like(windows))
  return top, gradient


def max_pool(x, pool: int, padding: str = 'same'):
  """Max pooling of NHWC `x` over pool x pool windows with stride `pool` (no overlap);
  padding 'same' or 'valid' as TensorFlow's. Equal to tf.nn.max_pool2d, gradient included."""
  height, width = x.shape[1], x.shape[2]
  if height is None or width is None:
    raise ValueError('max_pool needs static spatial dimensions')
  out_height = -(-height // pool) if padding == 'same' else height // pool
  out_width = -(-width // pool) if padding == 'same' else width // pool
  x = _pad_to_windows(x, pool, padding)
  channels = x.shape[3]
  windows = tf.reshape(x, [-1, out_height, pool, out_width, pool, channels])
  # [N, out_h, out_w, C, pool·pool], each window in row-major order.
  windows = tf.transpose(windows, [0, 1, 3, 5, 2, 4])
  windows = tf.reshape(windows, [-1, out_height, out_width, channels, pool * pool])
  return _first_max(windows)


class MaxPooling2D(keras.layers.MaxPooling2D):
  """keras.layers.MaxPooling2D; compiled by XLA under op determinism, non-overlapping
  square windows on NHWC inputs are pooled by `max_pool` (XLA can compile its gradient)."""

  def call(self, inputs):
    pool_h, pool_w = self.pool_size
    stride_h, stride_w = self.strides
    if (runtime.op_determinism() and runtime.compiling_with_xla()
        and pool_h == pool_w == stride_h == stride_w
        and self.data_format == 'channels_last'):
      return max_pool(inputs, pool_h, self.padding)
    return super().call(inputs)
