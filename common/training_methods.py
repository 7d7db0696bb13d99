"""The training methods of the shared trainer (common.training): how one replica's step turns
its batch into weight gradients. A method is chosen by config (`training_loss`, and
`training_attack: "yopo"`); each lives in its own module, whose docstring is its
specification:

  madry      PGD adversarial training, the original: the loss on the training attack's
             examples (pgd, fgsm_rs or n_fgsm; common.attacks.pgd)
  trades     TRADES (common.trades)
  bilateral  Bilateral adversarial training, R-MC-LA (common.bilateral)
  mma        MMA training (common.mma)
  yopo       YOPO-m-n (common.yopo): PGD training's objective, found and differentiated the
             YOPO way

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
  """The interface; see the module docstring."""
  needs_examples = False  # whether `prepare`/`finish` need the examples' indices

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


class Madry(Method):
  """The original: the configured training attack from its random start, then the loss on
  its examples (training mode: batch statistics, the averages updated once)."""

  def __init__(self, params: pgd.PGDParams):
    self.params = params

  def prepare(self, x, seed, rows, examples):
    return (pgd.starting_points(x, self.params, seed, rows=rows)[0],)

  def gradients(self, step, x, y, inputs):
    x_adv = pgd.pgd(step.attack_model, x, y, self.params, loss_scale=step.loss_scale,
                    start=inputs[0])
    def loss():
      logits = step.forward(x_adv, update_state=True)
      return step.loss(y, logits), logits
    gradients, logits = descend(step, loss)
    return Result(gradients, logits, x_adv)


# The attacks adversarial training can use (config `training_attack`): {name: what it is}.
TRAINING_ATTACKS = dict(pgd.TRAINING_ATTACKS, yopo=(
    'YOPO-m-n (Zhang et al. 2019, "You only propagate once"): from a start uniform in the '
    'ε-ball, yopo_outer_steps full forward and backward passes, each followed by '
    'yopo_inner_steps sign steps of training_step_size (default: the configured PGD\'s) '
    'through the first layer alone; the weights\' gradients come from those passes (the '
    'first layer\'s through its Hamiltonian)'))


def check(config) -> None:
  """Combinations that would silently ignore a setting of the training attack's steps are
  errors. (Batch norm in the attacks is each method's own, as its authors':
  `training_attack_batch_norm` applies to PGD training.)"""
  own_search = {'trades': 'training_num_steps sign steps of training_step_size on the KL',
                'bilateral': 'its targeted step(s) towards the most confusing class',
                'mma': 'AN-PGD at each example\'s own ε'}
  if config.training_loss in own_search and config.training_attack != 'pgd':
    raise ChallengeError(
        f'training_loss "{config.training_loss}" runs its own search '
        f'({own_search[config.training_loss]}), so training_attack '
        f'"{config.training_attack}" would be ignored; set training_attack to "pgd" (the '
        'default)')
  if config.training_attack == 'yopo' and config.training_num_steps:
    raise ChallengeError(
        f'training_num_steps is {config.training_num_steps}, but YOPO counts its steps with '
        'yopo_outer_steps (m full passes) and yopo_inner_steps (n first-layer updates); '
        'set training_num_steps to 0')
  if config.training_loss == 'mma' and config.training_epsilon:
    raise ChallengeError(
        f'training_epsilon is {config.training_epsilon:g}, but MMA trains each example at its '
        'own ε (up to mma_max_epsilon); set training_epsilon to 0 and choose mma_max_epsilon')
  if config.training_loss == 'mma' and config.training_step_size:
    raise ChallengeError(
        f'training_step_size is {config.training_step_size:g}, but MMA\'s AN-PGD steps by '
        '2.5 ε / steps at each example\'s own ε (the authors\'); set training_step_size to 0')


def build(challenge, config, params: pgd.PGDParams) -> Method:
  """The method `config` chooses, its attack at `params`' ε (or `training_epsilon`), pixel
  range and loss (the configured PGD's), with the method's steps (`method.params`)."""
  # Imported here: each method's module imports this one (Step, Result, Method).
  from common import bilateral, mma, trades, yopo  # pylint: disable=import-outside-toplevel
  check(config)
  steps, step_size = config.training_num_steps, config.training_step_size
  if config.training_epsilon:  # a training-only ε; the defaults scaled by ε follow it
    params = dataclasses.replace(params, epsilon=config.training_epsilon)
  if config.training_attack == 'yopo':
    return yopo.YOPO(yopo.step_params(params, step_size), config.yopo_outer_steps,
                     config.yopo_inner_steps)
  if config.training_loss == 'bilateral':
    return bilateral.Bilateral(bilateral.image_params(params, steps, step_size),
                               config.bilateral_beta)
  if config.training_loss == 'mma':
    l2 = params.norm == 'l2'  # d_max and ε_min in the norm's units
    return mma.MMA(dataclasses.replace(params, num_steps=steps or params.num_steps),
                   config.mma_l2_max_epsilon if l2 else config.mma_max_epsilon,
                   config.mma_l2_min_epsilon if l2 else config.mma_min_epsilon,
                   config.mma_clean_weight, config.mma_search_steps)
  params = pgd.training_attack_params(params, config.training_attack, step_size,
                                      config.noise_multiplier, steps)
  if config.training_loss == 'trades':
    return trades.Trades(params, config.trades_beta, challenge.pixel_max)
  return Madry(params)
