"""What a challenge (MNIST, CIFAR-10) supplies to the shared scripts, and nothing more."""
import dataclasses
import os
from typing import Callable, Sequence, Tuple

import keras
import tensorflow as tf

from common.attack import PGDParams
from common.config import Config, Key, load_config
from common.data import Datasets


@dataclasses.dataclass(frozen=True)
class Challenge:
  name: str
  package_dir: str  # holds the default config.json
  config_keys: Sequence[Key]
  build_model: Callable[[Config], keras.Model]
  build_optimizer: Callable[[Config], keras.optimizers.Optimizer]
  load_data: Callable[[Config], Datasets]
  # (labels, logits, model, global_batch_size) -> this replica's share of the loss that
  # training minimises; replicas' gradients are summed.
  training_loss: Callable
  # config -> the PGD settings (the challenges name them differently: k/a, num_steps/...).
  attack_params: Callable[[Config], PGDParams]
  seed: Callable[[Config], int]
  input_shape: Tuple[int, ...]  # of one example, as the model takes it
  image_shape: Tuple[int, int, int]  # for image summaries
  pixel_max: float  # pixels lie in [0, pixel_max]
  # (model, config) -> the x -> logits function the training-time attack differentiates.
  training_attack_model: Callable = (
      lambda model, config: lambda x: model(x, training=False))

  @property
  def default_config_path(self) -> str:
    return os.path.join(self.package_dir, 'config.json')

  def load_config(self, path=None, overrides=None) -> Config:
    return load_config(path or self.default_config_path, self.config_keys, overrides)

  def summary_images(self, x):
    """Adversarial inputs as [N, H, W, C] images in [0, 1] for TensorBoard."""
    return tf.reshape(x, (-1,) + tuple(self.image_shape)) / self.pixel_max
