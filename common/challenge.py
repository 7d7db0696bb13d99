"""What a challenge (MNIST, CIFAR-10) supplies to the shared scripts, and nothing more."""
import dataclasses
import os
from typing import Callable, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from common import defences, methods
from common.attacks.pgd import TRAINING_ATTACKS, PGDParams
from common.attacks.threat import NORMS
from common.config import Config, Key, load_config
from common.data import Datasets
from common.optimizers import LR_SCHEDULES

# The last config keys of both challenges, alike in both (the originals' order).
ATTACK_OUTPUT_KEYS = (
    Key('random_start', bool, True),
    Key('loss_func', str, 'xent', help='PGD loss: xent or cw'),
    Key('store_adv_path', str, 'attack.npy', is_path=True,
        help='where pgd_attack.py writes, and run_attack.py reads, the adversarial test set'),
    Key('pred_path', str, 'pred.npy', is_path=True,
        help="where run_attack.py writes its predictions; new (the original: ./pred.npy)"),
)


# Fast adversarial training: the training-time attack, the learning-rate schedule and the
# catastrophic-overfitting guard (the same keys in both challenges; defaults: the original).
FAST_TRAINING_KEYS = (
    Key('training_attack', str, 'pgd', choices=tuple(TRAINING_ATTACKS) + ('yopo',),
        help='the attack of PGD training (training_method madry): ' + '; '.join(
            f'"{name}": {what}' for name, what in TRAINING_ATTACKS.items())
        + '; "yopo": the old spelling of training_method yopo; new'),
    Key('training_step_size', float, 0.0, minimum=0,
        help='the training attack\'s step; 0: the method\'s own (pgd, trades, yopo and the '
             'regularisers\' adversarial share: the configured PGD\'s, fgsm_rs 1.25 ε, n_fgsm '
             'ε, bilateral ε); new'),
    Key('training_num_steps', int, 0, minimum=0,
        help='the training attack\'s steps (pgd, trades, mma and the regularisers\' '
             'adversarial share; 0: the configured PGD\'s; bilateral: 0 is one); evaluation '
             'keeps the configured PGD either way; new'),
    Key('training_epsilon', float, 0.0, minimum=0,
        help='the training attack\'s ε (pixel units; 0: epsilon, the original\'s one ε for '
             'both); evaluation, the guard and every attack command keep epsilon; new'),
    Key('noise_multiplier', float, 2.0, minimum=0,
        help='n_fgsm: the start\'s noise is uniform in [-kε, kε] for this k; new'),
    Key('lr_schedule', str, 'piecewise', choices=tuple(LR_SCHEDULES),
        help='learning rate: ' + '; '.join(f'"{name}": {what}'
                                           for name, what in LR_SCHEDULES.items()) + '; new'),
    Key('warmup_fraction', float, 0.4, minimum=0,
        help='one_cycle: the fraction of the run at which the rate peaks; new'),
    Key('robustness_check_steps', int, 0, minimum=0,
        help='every this many steps, PGD on held-out images; training stops, restoring the '
             'best checkpoint, if its accuracy falls robustness_check_drop below the best '
             '(catastrophic overfitting); 0: off; new'),
    Key('robustness_check_k', int, 10, minimum=1,
        help='the check\'s PGD steps (step 2.5 ε / k, random start); new'),
    Key('robustness_check_drop', float, 0.2, minimum=0,
        help='the fall in held-out PGD accuracy (a fraction, 0.2 = 20 points) that stops '
             'training; new'),
    Key('robustness_check_examples', int, 1000, minimum=1,
        help='held-out images the check attacks (MNIST: from the 5,000 validation images; '
             'CIFAR-10: the last training images, held out of training); new'),
)


def norm_keys(l2_epsilon: float):
  """The threat model's norm, and the ℓ2 radius and step (the challenge's pixel units): the
  original keys (epsilon, the PGD step) stay the ℓ∞ ones."""
  return (
      Key('norm', str, 'linf', choices=tuple(NORMS),
          help='the threat model of every attack, check and training attack: "linf" (the '
               'original\'s; epsilon and the PGD step) or "l2" (l2_epsilon, l2_step_size); new'),
      Key('l2_epsilon', float, l2_epsilon, minimum=0,
          help=f'with norm l2: ε, the ℓ2 radius in pixel units (default {l2_epsilon:g}); new'),
      Key('l2_step_size', float, 0.0, minimum=0,
          help='with norm l2: the PGD step, an ℓ2 length; 0: 2.5 l2_epsilon / steps (the '
               'rule of MadryLab\'s robustness library); new'),
  )


def threat_radius_and_step(config, epsilon: float, step_size: float, num_steps: int):
  """(ε, PGD step) of the config's norm: the original ℓ∞ keys' values, or the ℓ2 keys'."""
  if config.norm == 'linf':
    return epsilon, step_size
  return config.l2_epsilon, config.l2_step_size or 2.5 * config.l2_epsilon / max(num_steps, 1)


@dataclasses.dataclass(frozen=True)
class Challenge:
  name: str
  package_dir: str  # holds the default config.json
  config_keys: Sequence[Key]
  build_model: Callable[[Config], keras.Model]
  # config -> the same network from Keras' own layers and keras.ops only, computing the same
  # logits in inference mode (export_model.py writes it: it loads without this project).
  build_portable_model: Callable[[Config], keras.Model]
  build_optimizer: Callable[[Config], keras.optimizers.Optimizer]
  load_data: Callable[[Config], Datasets]
  # config -> every path load_data may read (no command writes over one of them).
  data_files: Callable[[Config], Sequence[str]]
  # config -> the training loss: (labels, logits, model, global_batch_size,
  # per_example=None) -> this replica's share of the loss that training minimises
  # (replicas' gradients are summed); `per_example` replaces the cross-entropy of the logits
  # with another objective's per-example losses (TRADES, ...), reduced the same way.
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
  # The config keys that choose the network: a checkpoint holds the weights of one choice.
  architecture_keys: Sequence[str] = ()

  @property
  def default_config_path(self) -> str:
    return os.path.join(self.package_dir, 'config.json')

  def load_config(self, path=None, overrides=None) -> Config:
    config = load_config(path or self.default_config_path, self.config_keys, overrides)
    # The method the keys name (`training_method`, or the old spellings of it).
    config = methods.resolve(config)
    # The defence's keys together (a BPDA without a defence, EOT over a deterministic one):
    # refused here, before any command starts its work.
    defences.from_config(config, self.image_shape, self.pixel_max)
    return config

  def summary_images(self, x):
    """Adversarial inputs as [N, H, W, C] images in [0, 1] for TensorBoard."""
    return tf.reshape(x, (-1,) + tuple(self.image_shape)) / self.pixel_max
