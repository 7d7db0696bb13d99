"""What every training method shares (the registry, common.methods, lists the methods): the
trainer (common.training) lends a method a `Step` and gets back a `Result`.

A method has three parts, so that its random draws and its memory stay outside XLA (whose
generators give other numbers, and which cannot hold collectives):
  prepare(x, seed, rows, examples) -> inputs     draws (stateless, from (seed, step)) and reads
  gradients(step, x, y, inputs) -> Result         the attack and the weights' gradients
  finish(examples, outputs)                       writes what the method remembers (MMA)
`rows` is (this replica's first row, the global batch): draws are made for the whole global
batch and each replica keeps its rows, so a step does not depend on the number of replicas.
`examples` are the batch's indices in the training split (MMA remembers per example).
"""
import dataclasses
from typing import Any, Callable, List, Optional

import tensorflow as tf

from common.attacks import pgd
from common.errors import ChallengeError


@dataclasses.dataclass
class Step:
  """What the trainer lends a method for one replica's step."""
  forward: Any  # training._StatefulForward: (x, update_state) -> logits in training mode
  inference: Callable  # x -> logits in inference mode (batch norm's moving averages)
  attack_model: Callable  # x -> logits as the training attack sees batch norm (ATTACK_BATCH_NORM)
  # (labels, logits, per_example=None) -> this replica's share of the loss, reduced as the
  # challenge reduces its own (MNIST: the sum; CIFAR-10: the mean over the global batch + the
  # weight decay); `per_example` replaces the cross-entropy of the logits.
  loss: Callable
  scale_loss: Callable  # loss -> the loss to differentiate (float16: scaled)
  variables: List[tf.Variable]  # the trainable variables, in the model's order
  loss_scale: Optional[float]  # the attacks' loss scale (float16), else None
  # Whether the network's training-mode passes read or write state (batch norm's averages,
  # dropout's seed): only then can two passes over one batch differ.
  stateful: bool = True


@dataclasses.dataclass
class Result:
  gradients: List[tf.Tensor]  # of step.scale_loss(loss), one per trainable variable
  logits: tf.Tensor  # on the examples trained on (the training statistics' accuracy and loss)
  x_adv: tf.Tensor  # the adversarial batch (TensorBoard's images)
  outputs: tuple = ()  # for `finish`


def descend(step: Step, loss_fn):
  """(gradients of step.scale_loss(loss), logits) for `loss_fn() -> (loss, logits)`, run
  under the tape."""
  with tf.GradientTape() as tape:
    loss, logits = loss_fn()
    scaled = step.scale_loss(loss)
  return tape.gradient(scaled, step.variables), logits


class Method:
  """The interface; see the module docstring. `params`: the attack's settings (the
  trainer reports its ε and checks its loss)."""
  needs_examples = False  # whether `prepare`/`finish` need the examples' indices
  # Whether `gradients` may be XLA-compiled (jit_compile): the regularisers' second
  # derivative is not (see refuse_for_input_gradients); "auto" then runs without XLA.
  supports_xla = True

  def state(self, num_train: int, strategy) -> dict:
    """Variables to checkpoint with the training state ({name: variable})."""
    del num_train, strategy
    return {}

  def prepare(self, x, seed, rows, examples) -> tuple:
    raise NotImplementedError

  def gradients(self, step: Step, x, y, inputs) -> Result:
    raise NotImplementedError

  def finish(self, examples, outputs) -> None:
    del examples, outputs


def input_gradients(step: Step, x, directions, pixel_max: float):
  """One training-mode pass over x (it updates the state) and, for each direction v ([batch,
  classes]), the gradient of Σ v · logits with respect to the image on [0, 1] (x /
  pixel_max), recorded for a second derivative: (logits, [gradients like x]). In float32
  (the methods refuse float16: `refuse_for_input_gradients`)."""
  with tf.GradientTape(persistent=len(directions) > 1) as tape:
    tape.watch(x)
    logits = step.forward(x, update_state=True)
    wide = tf.cast(logits, tf.float32)
    products = [tf.reduce_sum(wide * v) for v in directions]
  gradients = [tf.cast(tape.gradient(p, x), tf.float32) * pixel_max for p in products]
  del tape
  return logits, gradients


def configured_attack(config, params):
  """The training attack `training_attack` names, at `params`' ε, pixel range and loss, with
  `training_num_steps` steps of `training_step_size` (0: its defaults; pgd.training_attack_params)."""
  return pgd.training_attack_params(params, config.training_attack, config.training_step_size,
                                    config.noise_multiplier, config.training_num_steps)


class AdversarialShare:
  """The share of each batch a regulariser replaces by the training attack's examples: the
  global batch's first round(fraction · batch) (as Hein and Andriushchenko's `alpha_adv`
  replaces the first ones of each batch); fraction 0: none, and no attack is run."""

  def __init__(self, params, fraction: float):
    self.params, self.fraction = params, fraction

  def prepare(self, x, seed, rows) -> tuple:
    """(the attack's start, whether each of this replica's rows is replaced); rows: (this
    replica's first row, the global batch)."""
    if not self.fraction:
      return ()
    first, total = rows
    count = int(round(self.fraction * total))
    replaced = tf.cast(first, tf.int32) + tf.range(tf.shape(x)[0]) < count
    return pgd.starting_points(x, self.params, seed, rows=rows)[0], replaced

  def mix(self, step, x, y, inputs):
    """x with the replaced rows the attack's examples (`inputs`: `prepare`'s)."""
    if not self.fraction:
      return x
    start, replaced = inputs
    x_adv = pgd.pgd(step.attack_model, x, y, self.params, loss_scale=step.loss_scale,
                    start=start)
    return tf.where(tf.reshape(replaced, [-1] + [1] * (len(x.shape) - 1)), x_adv, x)


ATTACK_KEYS = (('training_attack', 'pgd'), ('training_num_steps', 0),
               ('training_step_size', 0.0), ('training_epsilon', 0.0), ('noise_multiplier', 2.0))


def refuse_attack_settings(config, why: str) -> None:
  """For a method that runs no training attack (`why` says when): the attack's keys away
  from their defaults would be ignored, so they are an error."""
  ignored = [f'{name} {config[name]}' for name, default in ATTACK_KEYS
             if config[name] != default]
  if ignored:
    raise ChallengeError(f'training_method "{config.training_method}" runs no training attack'
                         f'{" " + why if why else ""}, so {", ".join(ignored)} would be ignored; leave them at '
                         'their defaults')


def refuse_for_input_gradients(config) -> None:
  """Settings under which a regulariser of the input gradients (`input_gradients`) cannot be
  computed: an input defence in front of the network (its gradient is blocked, or replaced
  by BPDA's), float16 (the second derivative has no loss scale of its own), and XLA
  (jit_compile true: on Madry's CNN its compiled second derivative was 1.3% from TensorFlow's
  kernels', which agree with the authors' code; the cause is not found yet)."""
  method = config.training_method
  if config.defence != 'none':
    raise ChallengeError(
        f'training_method "{method}" regularises the network\'s input gradients, which the '
        f'input defence "{config.defence}" in front of it blocks or replaces: train without '
        'it (defence "none") and evaluate behind it')
  if config.jit_compile == 'true':
    raise ChallengeError(
        f'training_method "{method}" differentiates input gradients again, which XLA computes '
        'differently from TensorFlow\'s kernels on these networks (1.3% apart, unexplained): '
        'set jit_compile to "false" or "auto" (it then runs without XLA)')
  if config.precision == 'mixed_float16':
    raise ChallengeError(
        f'training_method "{method}" differentiates input gradients again, which float16 '
        'would overflow or flush with no loss scale of their own: use precision float32, '
        'tf32 or mixed_bfloat16')
