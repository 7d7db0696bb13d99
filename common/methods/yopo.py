"""YOPO-m-n (Zhang, Zhang, Lu, Zhu & Dong, NeurIPS 2019, "You only propagate once:
accelerating adversarial training via maximal principle"), a training attack of the shared
trainer (`training_method: "yopo"`; the old spelling `training_attack: "yopo"` still
loads), as the paper states it and its authors' code means it
(a1600012888/YOPO-You-Only-Propagate-Once, experiments/MNIST/YOPO-5-10: training_function.py,
loss.py; the specification, written anew).

The network is split after its first layer with weights, f = g ∘ f₀ (`first_layer_name`:
MNIST's conv1 with its ReLU, as the authors' layer_one; CIFAR-10's standardisation and
init_conv). One update per batch:

* η ~ U(-ε, ε) (ℓ2: uniform on the sphere of radius ε), not clipped to the pixel range for
  the first pass (as the authors').
* m = `yopo_outer_steps` times, j = 1..m: a full forward and backward pass at x + η in
  training mode (batch statistics, batch norm's averages updated, a fresh dropout mask)
  gives the loss L_j (the challenge's reduction of the cross-entropy, divided by m), the
  gradient of L_j for every layer but the first, and p_j = ∂L_j / ∂f₀(x + η), the co-state.
  Then n = `yopo_inner_steps` updates of η that evaluate the first layer alone, p_j held
  fixed: η ← η + σ·sign(∇_η (p_j · f₀(clip(x + η)))) (σ = `training_step_size`; 0: the
  configured PGD's step, the authors' 0.01 for MNIST and 2/255 for CIFAR-10), then η to
  [-ε, ε], then x + η to the pixel range. (The authors write p = -∂L/∂z and descend
  H = p · f₀: the same step.) With `norm: "l2"` (the authors' code is ℓ∞ only) the step and
  the ball are the threat model's: η ← η + σ·∇/‖∇‖₂, then η scaled down to ‖η‖₂ ≤ ε.
* The first layer's gradient is that of the Hamiltonian Σ_j p_j · f₀(clip(x + η'_j)), η'_j
  the η after the j-th inner loop; the other layers' is Σ_j ∇L_j (the mean over the m passes:
  the authors sum and divide the rate by m). Any term of the loss that reads the first
  layer's weights directly (CIFAR-10's weight decay) adds its own gradient.
* η carries over from one outer iteration to the next; the examples trained on are the m
  passes' inputs; the step's statistics are the last pass's logits and x + η after it.

Where this differs from the authors' code, deliberately: their attempt to keep the
cross-entropy's gradient out of conv1.weight (saving and restoring .grad around backward())
is undone by PyTorch's in-place gradient accumulation, and conv1's bias is not kept out at
all: their first layer also learns from the passes' cross-entropy (measured with PyTorch
2.13 by benchmarks/methods_reference.py: the weight from passes 2 to m of each batch, the
bias from all m); here the first layer gets only the Hamiltonian's, as the paper's algorithm
says.
They also give the first layer its own optimizer and earlier rate decay; here one optimizer
updates every weight.
"""
import dataclasses

import keras
import tensorflow as tf

from common.attacks import pgd
from common.config import Key
from common.errors import ChallengeError
from common.methods import base

NAME = 'yopo'
SUMMARY = ('YOPO-m-n (Zhang et al. 2019, "You only propagate once"): PGD training\'s objective, '
           'its attack from a start uniform in the ε-ball by yopo_outer_steps full forward and '
           'backward passes, each followed by yopo_inner_steps sign steps of '
           'training_step_size (0: the configured PGD\'s) through the first layer alone; the '
           'weights\' gradients come from those passes (the first layer\'s through its '
           'Hamiltonian)')
OWN_SEARCH = 'yopo_outer_steps full passes, each followed by yopo_inner_steps first-layer steps'
INNER_STEPS = {'mnist': 10, 'cifar10': 3}  # the authors' YOPO-5-10 and YOPO-5-3


def keys(challenge_name):
  inner = INNER_STEPS[challenge_name]
  return (
      Key('yopo_outer_steps', int, 5, minimum=1,
          help='YOPO\'s m: full forward and backward passes per update (the authors\' 5); '
               'new'),
      Key('yopo_inner_steps', int, inner, minimum=0,
          help=f'YOPO\'s n: first-layer updates after each full pass (the authors\': '
               f'{inner} for this data set); new'),
  )


def check(config):
  if config.training_num_steps:
    raise ChallengeError(
        f'training_num_steps is {config.training_num_steps}, but YOPO counts its steps with '
        'yopo_outer_steps (m full passes) and yopo_inner_steps (n first-layer updates); '
        'set training_num_steps to 0')


def first_layer_name(model) -> str:
  """The first layer of `model` (in its graph's order) that has weights."""
  for layer in model.layers:
    if layer.trainable_weights:
      return layer.name
  raise ChallengeError(f'{model.name} has no layer with weights: YOPO has nothing to split')


def step_params(params: pgd.PGDParams, step_size: float) -> pgd.PGDParams:
  """YOPO's σ (`step_size`, 0: params' own) at params' ε and pixel range."""
  return dataclasses.replace(params, step_size=step_size or params.step_size)


class SplitModel:
  """A Keras model (functional or Sequential) as f = g ∘ f₀, split after its layer `name`,
  each part called like `Twin.stateless_call`: on given weight values and a carried
  non-trainable state."""

  def __init__(self, runner: keras.Model, name: str):
    self.runner = runner
    middle = runner.get_layer(name).output
    try:
      self.first = keras.Model(runner.inputs[0], middle)
      self.rest = keras.Model(middle, runner.outputs[0])
    except ValueError as e:  # the rest also reads the input itself
      raise ChallengeError(f'{runner.name} cannot be split after its first layer {name} '
                           f'for YOPO: {e}') from None
    if len(self.first.trainable_variables) + len(self.rest.trainable_variables) != len(
        runner.trainable_variables):
      raise ChallengeError(f'{runner.name}\'s weights do not split after {name} for YOPO')
    first_ids = {id(v) for v in self.first.trainable_variables}
    # Which of the model's trainable variables (by position) the first layer holds.
    self.in_first = [id(v) in first_ids for v in runner.trainable_variables]

  def call(self, part, inputs, values, state, training):
    """(part(inputs), the new state); `values`, `state`: the runner's trainable and
    non-trainable variables' values, in order."""
    mapping = (list(zip(self.runner.trainable_variables, values))
               + list(zip(self.runner.non_trainable_variables, state)))
    with keras.StatelessScope(state_mapping=mapping) as scope:
      outputs = part(inputs, training=training)
    new_state = [scope.get_current_value(v) for v in self.runner.non_trainable_variables]
    return outputs, [old if new is None else new for new, old in zip(new_state, state)]


def finite(values):
  """Non-finite entries as 0: under float16 a scaled loss's gradient may overflow (the loss
  scaler then skips the update), and η must not become NaN (nor batch norm's statistics of
  the next pass)."""
  return tf.where(tf.math.is_finite(values), values, tf.zeros_like(values))


def hamiltonian(first_fn, x, eta, costate, params: pgd.PGDParams):
  """p · f₀(clip(x + η)), summed, in float32."""
  return tf.reduce_sum(tf.cast(costate, tf.float32) * tf.cast(
      first_fn(tf.clip_by_value(x + eta, params.clip_min, params.clip_max)), tf.float32))


def inner_updates(first_fn, x, eta, costate, params: pgd.PGDParams, num_steps):
  """n steepest-ascent steps of η (ℓ∞: sign steps) through the first layer alone (see the
  docstring)."""
  threat = params.threat
  for _ in range(num_steps):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(eta)
      value = hamiltonian(first_fn, x, eta, costate, params)
    eta = threat.ascent_step(eta, finite(tape.gradient(value, eta)), params.step_size)
    eta = threat.shrink(eta)
    eta = tf.clip_by_value(x + eta, params.clip_min, params.clip_max) - x
  return tf.stop_gradient(eta)


class YOPO(base.Method):
  """YOPO-m-n on the shared trainer."""

  def __init__(self, params: pgd.PGDParams, outer_steps: int, inner_steps: int):
    self.params, self.outer_steps, self.inner_steps = params, outer_steps, inner_steps
    self._split = None

  def split(self, runner):
    if self._split is None or self._split.runner is not runner:
      self._split = SplitModel(runner, first_layer_name(runner))
    return self._split

  def prepare(self, x, seed, rows, examples):
    return (pgd.uniform_noise(x, self.params.epsilon, seed, rows, self.params.norm),)

  def gradients(self, step, x, y, inputs):
    forward, params = step.forward, self.params
    split = self.split(forward.twin.runner)
    values = lambda: [v.value for v in step.variables]  # read under each tape
    first_variables = [v for v, first in zip(step.variables, split.in_first) if first]
    eta = inputs[0]
    total = [tf.zeros_like(v) for v in step.variables]
    for _ in range(self.outer_steps):
      with tf.GradientTape() as tape:
        layer_one, state = split.call(split.first, x + eta, values(), forward.state, True)
        layer_one = tf.stop_gradient(layer_one)  # the first layer learns from H alone
        tape.watch(layer_one)
        logits, forward.state = split.call(split.rest, layer_one, values(), state, True)
        loss = step.scale_loss(step.loss(y, logits) / self.outer_steps)
      costate, *gradients = tape.gradient(loss, [layer_one] + step.variables)
      costate = finite(tf.stop_gradient(costate))
      # The n cheap passes read the state and carry none (a first layer has no batch norm).
      first_fn = lambda v: split.call(split.first, v, values(), forward.state, True)[0]
      eta = inner_updates(first_fn, x, eta, costate, params, self.inner_steps)
      with tf.GradientTape() as tape:
        value = hamiltonian(first_fn, x, eta, costate, params)
      first_gradients = iter(tape.gradient(value, first_variables))
      total = [t + (0.0 if g is None else g) + (next(first_gradients) if first else 0.0)
               for t, g, first in zip(total, gradients, split.in_first)]
    x_adv = tf.clip_by_value(x + eta, params.clip_min, params.clip_max)
    return base.Result(total, logits, x_adv)


def build(challenge, config, params: pgd.PGDParams) -> YOPO:
  del challenge
  return YOPO(step_params(params, config.training_step_size), config.yopo_outer_steps,
              config.yopo_inner_steps)
