"""Thermometer encoding (Buckman, Roy, Raffel and Goodfellow, ICLR 2018), and the soft code
that BPDA differentiates in its place (Athalye, Carlini and Wagner, ICML 2018, §4.1.1).

Each pixel x (scaled to [0, 1]) is quantised to one of `levels` buckets,
b(x) = min(⌊levels·x⌋, levels − 1), and coded by the cumulative sum of the bucket's one-hot
vector from the top: code_k(x) = 1 if k ≤ b(x) else 0, k = 0 ... levels − 1 (code_0 is always
1; code_k is 1 exactly when x ≥ k / levels). A pixel of C channels becomes C·levels values,
each channel's levels together ((H, W, C) -> (H, W, C·levels)). The code is a step function
of x: its gradient is zero almost everywhere (TensorFlow's comparison has none), so gradient
attacks on a network behind it do not move: a shattered gradient.

The soft code, for BPDA: code~_k(x) = clip(levels·x − k + 1, 0, 1), the ramp that rises from 0
to 1 between the levels (k − 1) / levels and k / levels. It equals the code at every level
k / levels and lies between the code's values elsewhere, with slope `levels` on each ramp.
(Athalye et al. write the ramp as min(max(x − k/l, 0), 1), of slope 1 from k/l on; the sign
and ℓ2-normalised steps of PGD and APGD see no difference of scale; the two ramps differ in
where they rise. Ours interpolates the code itself.)
"""
import tensorflow as tf

from common.defences.base import Defence


def code(x, levels: int):
  """The thermometer code of x in [0, 1]: shape x.shape + (levels,), values 0 and 1."""
  bucket = tf.minimum(tf.floor(x * levels), levels - 1.0)
  return tf.cast(tf.range(levels, dtype=x.dtype) <= bucket[..., None], x.dtype)


def soft_code(x, levels: int):
  """The soft code: clip(levels·x − k + 1, 0, 1) for k = 0 ... levels − 1."""
  return tf.clip_by_value(levels * x[..., None] - tf.range(levels, dtype=x.dtype) + 1.0,
                          0.0, 1.0)


class Thermometer(Defence):
  name = 'thermometer'
  default_backward = 'approximation'
  keeps_shape = False

  def __init__(self, image_shape, pixel_max, levels: int = 16):
    super().__init__(image_shape, pixel_max)
    self.levels = int(levels)

  @property
  def channels(self) -> int:
    return self.image_shape[-1] * self.levels

  def _encode(self, images, coder):
    coded = coder(images / self.pixel_max, self.levels)  # [N, H, W, C, levels]
    return tf.reshape(coded, tf.concat([tf.shape(images)[:3], [self.channels]], 0))

  def transform_images(self, images, draws):
    return self._encode(images, code)

  def approximation_images(self, images, draws):
    return self._encode(images, soft_code)
