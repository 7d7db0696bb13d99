"""What every input defence is: a transform of the model's inputs before the network, its
differentiable stand-in for BPDA, and (for a randomised one) its draws. Subclasses implement
the transform on images [N, H, W, C] in the pixel range; `apply` takes the model's inputs in
the challenge's layout (MNIST's flat rows, CIFAR-10's images) and returns the network's."""
import tensorflow as tf

# How a gradient passes a defence (config key bpda): 'off' its own gradient (none through a
# step function); BPDA (Athalye et al. 2018), the forward pass unchanged and the backward pass
# replaced: 'identity' passes the gradient straight through, 'approximation' takes the
# gradient of the defence's differentiable stand-in; 'on' the defence's default of those two.
BACKWARDS = {
    'off': 'the defence\'s own gradient (zero through a step function)',
    'on': 'BPDA with the defence\'s default backward pass (thermometer: its soft code; '
          'bit_depth: the identity; random_resize_pad: its own gradient)',
    'identity': 'BPDA: the gradient passes the defence unchanged (defences that keep the '
                'input\'s shape)',
    'approximation': 'BPDA: the gradient of the defence\'s differentiable approximation',
}


class Defence:
  name = ''
  randomised = False  # draws anew at every call (EOT averages over the draws)
  default_backward = 'identity'  # BPDA's backward pass when bpda is "on"
  keeps_shape = True  # the network takes the challenge's inputs as they are

  def __init__(self, image_shape, pixel_max):
    self.image_shape, self.pixel_max = tuple(image_shape), float(pixel_max)

  @property
  def channels(self) -> int:
    """The channels of the images the network takes."""
    return self.image_shape[-1]

  def draw(self, generator, count):
    """A randomised defence's draws for `count` examples (from a tf.random.Generator)."""
    del generator, count
    return ()

  def transform_images(self, images, draws):
    raise NotImplementedError

  def approximation_images(self, images, draws):
    raise NotImplementedError

  def network_input_shape(self, input_shape):
    """The network's input shape for the challenge's `input_shape` (flat rows stay flat)."""
    if self.keeps_shape:
      return tuple(input_shape)
    height, width, _ = self.image_shape
    if len(input_shape) == 1:
      return (height * width * self.channels,)
    return (height, width, self.channels)

  def _on_images(self, fn, x, draws):
    """fn on x's images, returned in x's layout (flat rows stay flat)."""
    images = tf.reshape(x, (-1,) + self.image_shape)
    out = fn(images, draws)
    if len(x.shape) == 2:
      return tf.reshape(out, [tf.shape(x)[0], -1])
    return out

  def apply(self, x, backward: str = 'off', generator=None):
    """The defence on the inputs x, gradients passed as `backward` (BACKWARDS, resolved: not
    'on'); a randomised defence draws from `generator`."""
    draws = self.draw(generator, tf.shape(x)[0]) if self.randomised else ()
    transform = lambda v: self._on_images(self.transform_images, v, draws)
    if backward == 'off':
      return transform(x)
    approximation = lambda v: self._on_images(self.approximation_images, v, draws)

    @tf.custom_gradient
    def bpda(v):
      def gradient(upstream):
        if backward == 'identity':
          return upstream
        with tf.GradientTape(watch_accessed_variables=False) as tape:
          tape.watch(v)
          stand_in = approximation(v)
        return tape.gradient(stand_in, v, output_gradients=upstream)
      return transform(v), gradient
    return bpda(x)
