"""What a challenge (MNIST, CIFAR-10) supplies to the shared scripts, and nothing more."""
import dataclasses
import os
from typing import Callable, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from common import defences
from common.attacks.pgd import PGDParams
from common.attacks.threat import NORMS
from common.config import Config, Key, load_config
from common.data import Datasets
from common.optimizers import LR_SCHEDULES
from common.training_methods import TRAINING_ATTACKS

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
    Key('training_attack', str, 'pgd', choices=tuple(TRAINING_ATTACKS),
        help='the attack of adversarial training: ' + '; '.join(
            f'"{name}": {what}' for name, what in TRAINING_ATTACKS.items()) + '; new'),
    Key('training_step_size', float, 0.0, minimum=0,
        help='the training attack\'s step; 0: the method\'s own (pgd, trades and yopo: the '
             'configured PGD\'s, fgsm_rs 1.25 ε, n_fgsm ε, bilateral ε); new'),
    Key('training_num_steps', int, 0, minimum=0,
        help='the training attack\'s steps (pgd, trades and mma; 0: the configured PGD\'s; '
             'bilateral: 0 is one); evaluation keeps the configured PGD either way; new'),
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


# The objective adversarial training minimises: {name: what it is} (common.trades,
# common.bilateral, common.mma).
TRAINING_LOSSES = {
    'madry': "the loss on the training attack's examples (the original)",
    'trades': 'TRADES (Zhang et al. 2019): cross-entropy on the natural examples + '
              'trades_beta x KL(f(x) || f(x\')), x\' maximising the KL by training_num_steps '
              'sign steps of training_step_size (0: the configured PGD\'s) from x + 0.001 N(0, 1)',
    'bilateral': 'bilateral adversarial training, R-MC-LA (Wang & Zhang 2019): the soft-label '
                 'cross-entropy of an adversarial label (bilateral_beta) on an image moved by '
                 'training_num_steps (0: one) targeted sign steps of training_step_size (0: ε) '
                 'towards the most confusing class from a random start',
    'mma': 'MMA training (Ding et al. 2020): each example\'s margin by AN-PGD (PGD at its '
           'remembered ε, then a bisection), the cross-entropy at the margin (up to '
           'mma_max_epsilon) mixed with the natural one (mma_clean_weight)',
}


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


def training_method_keys(trades_beta: float, mma_max_epsilon: float, mma_min_epsilon: float,
                         yopo_inner_steps: int, mma_l2_max_epsilon: float,
                         mma_l2_min_epsilon: float):
  """The training objective's keys and the methods' own; the defaults are each method's
  authors' for the data set (`mma_*` in the challenge's pixel units)."""
  return (
      Key('training_loss', str, 'madry', choices=tuple(TRAINING_LOSSES),
          help='the objective: ' + '; '.join(f'"{name}": {what}'
                                             for name, what in TRAINING_LOSSES.items())
          + '; new'),
      Key('trades_beta', float, trades_beta, minimum=0,
          help=f'TRADES\'s β (the authors\': {trades_beta:g} for this data set); new'),
      Key('bilateral_beta', float, 9.0, minimum=0,
          help='bilateral: the adversarial label\'s true-class mass over its largest '
               'wrong-class mass (the authors\' 9); new'),
      Key('mma_max_epsilon', float, mma_max_epsilon, minimum=0,
          help=f'MMA\'s d_max: margins beyond it are not trained on (the authors\': '
               f'{mma_max_epsilon:g} for this data set); new'),
      Key('mma_min_epsilon', float, mma_min_epsilon, minimum=0,
          help=f'MMA: the smallest ε AN-PGD starts from (the authors\': {mma_min_epsilon:g}); '
               'new'),
      Key('mma_l2_max_epsilon', float, mma_l2_max_epsilon, minimum=0,
          help=f'MMA with norm l2: d_max, an ℓ2 length (the authors\': {mma_l2_max_epsilon:g} '
               'for this data set); new'),
      Key('mma_l2_min_epsilon', float, mma_l2_min_epsilon, minimum=0,
          help=f'MMA with norm l2: the smallest ε (the authors\': {mma_l2_min_epsilon:g}); '
               'new'),
      Key('mma_clean_weight', float, 1.0 / 3.0, minimum=0, maximum=1,
          help='MMA: the natural cross-entropy\'s weight c, the margin loss\'s 1 - c (the '
               'authors\' 1/3); new'),
      Key('mma_search_steps', int, 10, minimum=0,
          help='MMA: AN-PGD\'s bisection steps (the authors\' 10); new'),
      Key('yopo_outer_steps', int, 5, minimum=1,
          help='YOPO\'s m: full forward and backward passes per update (the authors\' 5); '
               'new'),
      Key('yopo_inner_steps', int, yopo_inner_steps, minimum=0,
          help=f'YOPO\'s n: first-layer updates after each full pass (the authors\': '
               f'{yopo_inner_steps} for this data set); new'),
  )


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
    # The defence's keys together (a BPDA without a defence, EOT over a deterministic one):
    # refused here, before any command starts its work.
    defences.from_config(config, self.image_shape, self.pixel_max)
    return config

  def summary_images(self, x):
    """Adversarial inputs as [N, H, W, C] images in [0, 1] for TensorBoard."""
    return tf.reshape(x, (-1,) + tuple(self.image_shape)) / self.pixel_max
