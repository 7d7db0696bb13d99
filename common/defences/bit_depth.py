"""Bit-depth reduction (Xu, Evans and Qi, NDSS 2018, "Feature squeezing"): each pixel, scaled
to [0, 1], rounded to one of 2^bits levels, x' = round(x·(2^bits − 1)) / (2^bits − 1), and
scaled back to the pixel range. Rounding has no gradient in TensorFlow (zero): gradient
attacks on a network behind it do not move (a shattered gradient). BPDA's stand-in is the
identity (Athalye et al.: the quantisation is close to it), which is also its approximation.
Xu et al.'s settings: 1 bit for MNIST, 5 for CIFAR-10 (the challenges' defaults).
"""
import tensorflow as tf

from common.defences.base import Defence


def reduce_bit_depth(x, bits: int):
  """x in [0, 1] rounded to 2^bits levels (round half to even, as TensorFlow rounds)."""
  top = float(2 ** bits - 1)
  return tf.round(x * top) / top


class BitDepth(Defence):
  name = 'bit_depth'
  default_backward = 'identity'

  def __init__(self, image_shape, pixel_max, bits: int = 1):
    super().__init__(image_shape, pixel_max)
    self.bits = int(bits)

  def transform_images(self, images, draws):
    return reduce_bit_depth(images / self.pixel_max, self.bits) * self.pixel_max

  def approximation_images(self, images, draws):
    return tf.identity(images)
