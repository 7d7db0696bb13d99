"""The catastrophic-overfitting guard of fast (single-step) adversarial training.

Single-step training can lose all robustness within a few steps (Wong et al. 2020): the
model learns to defeat the one step instead of the threat model. Every
`robustness_check_steps` steps the guard attacks a fixed set of held-out images with PGD
(`robustness_check_k` steps of 2.5 ε / k from a random start, the same starts every time) and
keeps the training state of the best robust accuracy seen in `model_dir/best`. If the
accuracy falls more than `robustness_check_drop` below the best, it puts the best state back
as model_dir's latest checkpoint and stops training with an error saying so.
"""
import dataclasses
import json
import os
from typing import Optional, Tuple

import tensorflow as tf

from common import checkpoints, files
from common.data import Datasets, Split
from common.errors import ChallengeError, NonFiniteLogits
from common.evaluation import Evaluator

BEST_DIR = 'best'  # in model_dir: the best checkpoint and best.json


class CatastrophicOverfitting(ChallengeError):
  """The held-out robust accuracy collapsed; the best checkpoint is model_dir's latest again.
  `step`: the check that found the collapse; `best_step`: the checkpoint put back."""

  def __init__(self, message, step=None, best_step=None):
    super().__init__(message)
    self.step, self.best_step = step, best_step


def split_held_out(datasets: Datasets, count: int) -> Tuple[Split, Split]:
  """(training set, held-out set): the first `count` validation images where the data has a
  validation split (MNIST's 5,000), else the last `count` training images, taken out of
  training."""
  if datasets.validation is not None:
    return datasets.train, datasets.validation.head(count)
  train = datasets.train
  if count >= len(train):
    raise ChallengeError(f'robustness_check_examples {count} would hold out the whole training '
                         f'set ({len(train)} images); use fewer')
  keep = len(train) - count
  return (Split(train.images[:keep], train.labels[:keep]),
          Split(train.images[keep:], train.labels[keep:]))


def check_params(params, steps: int):
  """The check's PGD: `steps` steps of 2.5 ε / steps (enough to cross the ball and back),
  from a random start."""
  return dataclasses.replace(params, num_steps=steps, step_size=2.5 * params.epsilon / steps,
                             random_start=True, start_radius=None, project_to_ball=True)


class RobustnessGuard:
  """Checks a trainer's model on held-out images; keeps the best state in checkpoint_dir/best."""

  def __init__(self, trainer, config, held_out: Split, params, checkpoint_dir: str):
    self.trainer, self.config, self.held_out = trainer, config, held_out
    self.params = check_params(params, config.robustness_check_k)
    # A fixed seed: the same random starts at every check, so checks compare the model alone.
    self.evaluator = Evaluator(trainer.defended, self.params, trainer.strategy,
                               seed=trainer.seed, jit_compile=trainer.jit_compile,
                               name=f'the model trained in {config.model_dir}')
    self.directory = os.path.join(checkpoint_dir, BEST_DIR)
    self.manager = tf.train.CheckpointManager(trainer.checkpoint, self.directory, max_to_keep=1,
                                              checkpoint_name=checkpoints.CHECKPOINT_NAME)
    self.best = self._read_best()  # (accuracy, step) or None

  def _record(self):
    return os.path.join(self.directory, 'best.json')

  def _read_best(self) -> Optional[Tuple[float, int]]:
    if not os.path.lexists(self._record()):
      return None
    try:
      best = json.loads(files.read_input(self._record(), 'the best check\'s record', 1 << 16))
      return float(best['accuracy']), int(best['step'])
    except (ValueError, KeyError, TypeError):
      return None

  def check(self, step: int, writer) -> float:
    """Runs the check at `step` (the weights after `step` updates); raises
    CatastrophicOverfitting on a collapse. Returns the robust accuracy."""
    try:
      accuracy = self.evaluator.attack(self.held_out,
                                       self.config.eval_batch_size).adv_accuracy
    except NonFiniteLogits:  # diverged: back to the best state, if there is one
      if self.best is None:
        raise
      self.trainer.log('    robustness check: the model\'s logits are not finite (training '
                       'diverged)')
      self._restore_best(0.0, step)
    with writer.as_default(step=step):
      tf.summary.scalar('accuracy adv held-out', accuracy)
    best = self.best
    self.trainer.log(f'    robustness check: PGD-{self.params.num_steps} accuracy '
                     f'{100 * accuracy:.2f}% on {len(self.held_out)} held-out images'
                     + ('' if best is None else
                        f' (best {100 * best[0]:.2f}% at step {best[1]})'))
    if best is None or accuracy > best[0]:
      self.best = (accuracy, step)
      self.trainer.save(self.manager, step)
      if self.trainer.chief:
        files.save_text(self._record(), json.dumps({'accuracy': accuracy, 'step': step}))
    elif accuracy < best[0] - self.config.robustness_check_drop:
      self._restore_best(accuracy, step)
    return accuracy

  def _restore_best(self, accuracy, step):
    best_accuracy, best_step = self.best
    checkpoints.restore(self.trainer.checkpoint, self.manager.latest_checkpoint,
                        'training state')
    self.trainer.save(self.trainer.manager, best_step)  # model_dir's latest again
    raise CatastrophicOverfitting(
        f'catastrophic overfitting: the PGD-{self.params.num_steps} accuracy on the '
        f'{len(self.held_out)} held-out images fell from {100 * best_accuracy:.2f}% (step '
        f'{best_step}) to {100 * accuracy:.2f}% (step {step}), more than '
        f'robustness_check_drop {self.config.robustness_check_drop:g}; checkpoint-{best_step} '
        f'is the latest checkpoint of {self.config.model_dir} again. Train with a smaller '
        'training_step_size or learning_rate, or with two PGD steps (training_attack pgd, '
        'training_num_steps 2)', step=step, best_step=best_step)
