"""Random resizing and padding (Xie, Wang, Zhang, Ren and Yuille, ICLR 2018), scaled to the
challenge's image size.

Xie et al. resize a 299-pixel image to r × r, r uniform in [299, 331), by nearest neighbour,
and pad it with zeros at a uniformly random offset to 331 × 331. The challenges' networks
take a fixed size S (28 or 32), so here the image is shrunk, in the same ratio: r uniform in
[round(S·299/331), S − 1] (MNIST 25 ... 27, CIFAR-10 29 ... 31), then zero-padded to S × S with
its top and left offsets uniform in [0, S − r]. Nearest neighbour as TensorFlow 1 resized
(no half-pixel centres): the output pixel (i, j) inside the placed image is the input pixel
(⌊(i − top)·S / r⌋, ⌊(j − left)·S / r⌋). One draw (r, top, left) per example and per call.

The transform is a gather: differentiable, so gradient attacks move, but each gradient is
that of one random draw (a stochastic gradient); EOT averages the gradients of many draws
(common/attacks/eot.py). BPDA's "approximation" is the transform itself; "identity" passes
the gradient straight through, ignoring the resizing.
"""
import tensorflow as tf

from common.defences.base import Defence

XIE_RATIO = 299.0 / 331.0


class RandomResizePad(Defence):
  name = 'random_resize_pad'
  randomised = True
  default_backward = 'approximation'

  def __init__(self, image_shape, pixel_max):
    super().__init__(image_shape, pixel_max)
    size = image_shape[0]
    if image_shape[1] != size:
      raise ValueError(f'random_resize_pad needs square images, found {image_shape}')
    self.size = size
    self.smallest = int(round(size * XIE_RATIO))
    self.largest = size - 1

  def draw(self, generator, count):
    """(r, top, left) per example, int32 [count] each."""
    r = generator.uniform([count], self.smallest, self.largest + 1, dtype=tf.int32)
    unit = generator.uniform([2, count], 0.0, 1.0)
    # Offsets uniform in [0, S − r]: ⌊u·(S − r + 1)⌋ (u < 1).
    room = tf.cast(self.size - r + 1, tf.float32)
    top = tf.minimum(tf.cast(tf.floor(unit[0] * room), tf.int32), self.size - r)
    left = tf.minimum(tf.cast(tf.floor(unit[1] * room), tf.int32), self.size - r)
    return r, top, left

  def transform_images(self, images, draws):
    r, top, left = draws
    s = self.size
    positions = tf.range(s)[None, :]  # output rows / columns

    def source(offset):
      """Per example and output position: the source index and whether it is inside."""
      inside = (positions >= offset[:, None]) & (positions < offset[:, None] + r[:, None])
      index = ((positions - offset[:, None]) * s) // r[:, None]
      return tf.clip_by_value(index, 0, s - 1), inside

    rows, rows_inside = source(top)
    columns, columns_inside = source(left)
    picked = tf.gather(images, rows, axis=1, batch_dims=1)  # [N, S(out rows), S, C]
    picked = tf.gather(picked, columns, axis=2, batch_dims=1)
    inside = tf.cast(rows_inside[:, :, None] & columns_inside[:, None, :], images.dtype)
    return picked * inside[..., None]

  def approximation_images(self, images, draws):
    return self.transform_images(images, draws)
