"""What a challenge (MNIST, CIFAR-10) supplies to the shared scripts, and nothing more."""
import dataclasses
import os
from typing import Callable, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from common.attack import PGDParams
from common.config import Config, Key, load_config
from common.data import Datasets

# The last config keys of both challenges, alike in both (the originals' order).
ATTACK_OUTPUT_KEYS = (
    Key('random_start', bool, True),
    Key('loss_func', str, 'xent', help='PGD loss: xent or cw'),
    Key('store_adv_path', str, 'attack.npy', is_path=True,
        help='where pgd_attack.py writes, and run_attack.py reads, the adversarial test set'),
    Key('pred_path', str, 'pred.npy', is_path=True,
        help="where run_attack.py writes its predictions; new (the original: ./pred.npy)"),
)


@dataclasses.dataclass(frozen=True)
class Challenge:
  name: str
  package_dir: str  # holds the default config.json
  config_keys: Sequence[Key]
  build_model: Callable[[Config], keras.Model]
  build_optimizer: Callable[[Config], keras.optimizers.Optimizer]
  load_data: Callable[[Config], Datasets]
  # config -> the training loss: (labels, logits, model, global_batch_size) -> this
  # replica's share of the loss that training minimises; replicas' gradients are summed.
  make_training_loss: Callable[[Config], Callable]
  # config -> the PGD settings (the challenges name them differently: k/a, num_steps/...).
  attack_params: Callable[[Config], PGDParams]
  seed: Callable[[Config], int]  # weight initialisation and PGD random starts
  input_shape: Tuple[int, ...]  # of one example, as the model takes it
  image_shape: Tuple[int, int, int]  # for image summaries
  pixel_max: float  # pixels lie in [0, pixel_max]
  # config -> the seed of the training data order and augmentation (default: `seed`).
  data_seed: Optional[Callable[[Config], int]] = None
  # (images, seed) -> augmented images, applied to every training batch in tf.data.
  augment: Optional[Callable] = None
  # config -> how batch norm behaves in the training-time attack: one of
  # common.training.ATTACK_BATCH_NORM (irrelevant for a model without batch norm).
  training_attack_batch_norm: Callable[[Config], str] = lambda config: 'inference'
  # model -> {variable name in the original's TF1 checkpoints: the model's variable}.
  tf1_variables: Optional[Callable] = None
  # (optimizer, model) -> {TF1 name of an optimizer slot: our optimizer variable}, for the
  # slots that map cleanly (fine-tuning an original training checkpoint).
  tf1_slots: Callable = lambda optimizer, model: {}
  # The paper's evaluation table for this challenge: common.paper_table.Row's.
  paper_table: Sequence = ()
  landscape_restarts: int = 100  # random starts per example in the paper's Figures 1, 2

  @property
  def default_config_path(self) -> str:
    return os.path.join(self.package_dir, 'config.json')

  def load_config(self, path=None, overrides=None) -> Config:
    return load_config(path or self.default_config_path, self.config_keys, overrides)

  def summary_images(self, x):
    """Adversarial inputs as [N, H, W, C] images in [0, 1] for TensorBoard."""
    return tf.reshape(x, (-1,) + tuple(self.image_shape)) / self.pixel_max
