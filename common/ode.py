"""A neural ODE block solved by the fixed-step Euler method, with TisODE's steady-state term
(Yan, Du, Tan & Feng, ICLR 2020, "On robustness of neural ordinary differential
equations"; HanshuYAN/TisODE, mnist/networks.py with the repository's copy of torchdiffeq:
its `euler` and `euler_abs` solvers; the specification, written anew).

* The field f(t, z), on [batch, height, width, channels] states: two rounds of a 3x3 same
  convolution to `channels`, group norm (32 groups, ε 1e-5) and ReLU. Time-dependent (the
  ODENet): each convolution reads a constant channel equal to t in front of its input (the
  authors' ConcatConv2d) and has a bias; time-invariant (TisODE): no t, no bias. Both end in
  a ReLU, so f ≥ 0.
* The solution: z(T) by Euler steps of h, z_{k+1} = z_k + h f(t_k, z_k), t_k = k h, over [0,
  T] (the authors' T = 1; h = 0.1 for the ODENet, 0.05 for TisODE), differentiated by
  ordinary backpropagation through the steps (the authors' `odeint`, not the adjoint; their
  rtol and atol reach the Euler solver unused). A fixed-step solver is theirs, so it is ours
  too: TensorFlow Probability's adaptive solvers (DormandPrince, BDF) would compute another
  function, need the tf-keras package besides Keras 3, and were about 2x slower per step at
  the authors' tolerances (measured with tfp 0.25; docs/training_methods.md).
* TisODE's steady-state term (training mode only, `steady_state_weight` > 0): from z(t₀)
  (the authors' t₀ = 0.9 in training) Euler steps of h to t₁ (1.5) along the same trajectory,
  accumulating S = Σ h |f(z_k)| element-wise (the authors' `euler_abs`, which evaluates f
  twice per step for the same value; here once); the layer adds weight · mean over the
  example's elements of |S|, summed over the batch, to the model's losses (Keras `add_loss`:
  the trainer adds a model's own losses to the loss it differentiates; MNIST sums its loss
  over the batch, and the authors' mean over the batch is the same step under Adam, as for
  the cross-entropy). The prediction is z(T) either way.
"""
import keras
import tensorflow as tf


def torch_default(fan_in: int):
  """(kernel, bias) initialisers of PyTorch's Conv2d/Linear: uniform in ±sqrt(1/fan_in)
  (kaiming_uniform with a = sqrt(5)) and ±1/sqrt(fan_in)."""
  bound = 1.0 / fan_in ** 0.5
  return (keras.initializers.VarianceScaling(1.0 / 3.0, 'fan_in', 'uniform'),
          keras.initializers.RandomUniform(-bound, bound))


class ODEBlock(keras.layers.Layer):
  """z(end_time) of dz/dt = f(t, z) (see the module docstring)."""

  def __init__(self, channels: int, time_dependent: bool, step_size: float,
               end_time: float = 1.0, steady_state_weight: float = 0.0,
               steady_from: float = 0.9, steady_to: float = 1.5, **kwargs):
    super().__init__(**kwargs)
    self.channels, self.time_dependent, self.step_size = channels, time_dependent, step_size
    self.end_time, self.steady_state_weight = end_time, steady_state_weight
    self.steady_from, self.steady_to = steady_from, steady_to
    self.steps = round(end_time / step_size)
    fan_in = 9 * (channels + time_dependent)
    kernel, bias = torch_default(fan_in)
    self.convolutions = [
        keras.layers.Conv2D(channels, 3, padding='same', use_bias=time_dependent,
                            kernel_initializer=kernel, bias_initializer=bias,
                            name=f'conv{i}') for i in (1, 2)]
    self.norms = [keras.layers.GroupNormalization(32, epsilon=1e-5, name=f'norm{i}')
                  for i in (1, 2)]

  @property
  def adds_training_losses(self) -> bool:
    """Whether training-mode calls add a loss (a method must run the model's passes)."""
    return self.steady_state_weight > 0

  def build(self, input_shape):
    shape = list(input_shape)
    shape[-1] = self.channels + self.time_dependent
    for convolution, norm in zip(self.convolutions, self.norms):
      convolution.build(tuple(shape))
      norm.build(tuple(shape[:-1]) + (self.channels,))

  def field(self, t, z):
    """f(t, z)."""
    h = z
    for convolution, norm in zip(self.convolutions, self.norms):
      if self.time_dependent:
        h = tf.concat([tf.fill(tf.shape(h[..., :1]), tf.cast(t, h.dtype)), h], axis=-1)
      h = tf.nn.relu(norm(convolution(h)))
    return h

  def call(self, z, training=False):
    h = self.step_size
    steady = training and self.steady_state_weight > 0
    first = round(self.steady_from / h)
    last = max(self.steps, round(self.steady_to / h)) if steady else self.steps
    accumulated = None
    for k in range(last):
      change = self.field(k * h, z)
      if steady and k >= first:
        term = h * tf.abs(change)
        accumulated = term if accumulated is None else accumulated + term
      z = z + h * change
      if k + 1 == self.steps:
        solution = z
    if steady:
      per_example = tf.reduce_mean(tf.abs(tf.cast(accumulated, tf.float32)), axis=[1, 2, 3])
      self.add_loss(self.steady_state_weight * tf.reduce_sum(per_example))
    return solution

  def compute_output_shape(self, input_shape):
    return input_shape
