"""What is particular to the CIFAR-10 challenge: its config keys, model, optimizer, loss,
data and augmentation."""
import os

import tensorflow as tf

from cifar10_challenge import data, model
from common import defences, losses, methods, optimizers, training
from common.attacks.pgd import PGDParams
from common.challenge import (ATTACK_OUTPUT_KEYS, FAST_TRAINING_KEYS, Challenge, norm_keys,
                              threat_radius_and_step)
from common.config import MAX_EVAL_BATCH, MAX_TRAINING_BATCH, SEED_MAXIMUM, Key
from common.paper_table import Row
from common.precision import PRECISION_KEYS
from common.runtime import RUNTIME_KEYS

CONFIG_KEYS = (
    Key('model_dir', str, '../checkpoints/cifar10/a_very_robust_model', is_path=True,
        help='checkpoints and TensorBoard summaries'),
    Key('filters', list, list(model.WIDE_FILTERS),
        help='widths [init conv, stage 1, 2, 3]: [16, 160, 320, 640] the wide network, '
             '[16, 16, 32, 64] its non-wide variant; new'),
    Key('data_path', str, 'cifar10_data', is_path=True,
        help='directory of the CIFAR-10 python pickles (data_batch_1..5, test_batch, '
             'batches.meta)'),
    Key('tf_random_seed', int, 451760341, minimum=0, maximum=SEED_MAXIMUM,
        help='seeds weight initialisation and the PGD random starts'),
    Key('np_random_seed', int, 216105420, minimum=0, maximum=SEED_MAXIMUM,
        help='seeds the training data order and augmentation'),
    Key('max_num_training_steps', int, 80000, minimum=0),
    Key('num_output_steps', int, 100, minimum=1),
    Key('num_summary_steps', int, 100, minimum=1),
    Key('num_checkpoint_steps', int, 1000, minimum=1),
    Key('training_batch_size', int, 128, minimum=1, maximum=MAX_TRAINING_BATCH),
    Key('step_size_schedule', list, [[0, 0.1], [40000, 0.01], [60000, 0.001]],
        help='learning rate: [[step, rate], ...], piecewise constant'),
    Key('learning_rate', float, 0.1, minimum=0,
        help='with lr_schedule one_cycle, its peak (piecewise uses step_size_schedule); new'),
    Key('weight_decay', float, 0.0002, minimum=0),
    Key('momentum', float, 0.9, minimum=0),
    Key('training_attack_batch_norm', str, 'batch',
        help='batch norm in the training-time attack: ' + '; '.join(
            f'"{name}": {what}' for name, what in training.ATTACK_BATCH_NORM.items())
        + '; new'),
    Key('num_eval_examples', int, 10000, minimum=1),
    Key('eval_batch_size', int, 100, minimum=1, maximum=MAX_EVAL_BATCH),
    Key('eval_on_cpu', bool, False),
    Key('epsilon', float, 8.0, minimum=0),
    Key('num_steps', int, 10, minimum=0, help='PGD steps'),
    Key('step_size', float, 2.0, minimum=0, help='PGD step size'),
) + (ATTACK_OUTPUT_KEYS + PRECISION_KEYS + RUNTIME_KEYS + FAST_TRAINING_KEYS
       + methods.config_keys('cifar10') + norm_keys(l2_epsilon=0.5 * 255)
       + defences.config_keys(bit_depth=5))
# (ℓ2 ε 0.5 on [0, 1] images, as RobustBench's ℓ2 track)

PIXEL_MAX = 255.0


def attack_params(config) -> PGDParams:
  epsilon, step_size = threat_radius_and_step(config, config.epsilon, config.step_size,
                                              config.num_steps)
  return PGDParams(epsilon, config.num_steps, step_size, config.random_start,
                   config.loss_func, clip_min=0.0, clip_max=PIXEL_MAX, norm=config.norm,
                   eot_samples=config.eot_samples)


def build_optimizer(config):
  return optimizers.TF1Momentum(optimizers.learning_rate(
      config, optimizers.piecewise_schedule(config.step_size_schedule)), config.momentum)


def make_training_loss(config):
  weight_decay = config.weight_decay

  def training_loss(labels, logits, keras_model, global_batch_size, per_example=None):
    # The original minimises mean xent + weight_decay · Σ l2_loss(DW). Replicas' gradients
    # are summed, so each replica takes its share: its xent sum over the global batch size,
    # and 1/replicas of the decay term. `per_example`: another objective's per-example
    # losses (TRADES, bilateral, MMA), in place of the cross-entropy.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if per_example is None:
      per_example = losses.xent(labels, logits)
    xent = tf.reduce_sum(per_example) / global_batch_size
    return xent + weight_decay * model.weight_decay_loss(keras_model) / replicas
  return training_loss


def tf1_slots(optimizer, keras_model):
  """TF1's momentum slots `<variable>/Momentum` hold what our accumulators hold."""
  index = optimizer._get_variable_index  # pylint: disable=protected-access
  return {f'{name}/Momentum': optimizer.accumulators[index(variable)]
          for name, variable in model.tf1_variables(keras_model).items() if variable.trainable}


# Table 2 of the paper (ε 8, step 2), with its accuracies (%) as printed there.
PAPER_TABLE = (
    Row('natural', paper=87.3),
    Row('FGSM', paper=56.1),
    Row('PGD', 7, paper=50.0),
    Row('PGD', 20, paper=45.8),
    Row('CW', 30, paper=46.8),
    Row('FGSM', source="A'", paper=67.0),
    Row('PGD', 7, source="A'", paper=64.2),
    Row('CW', 30, source="A'", paper=78.7),
    Row('FGSM', source='A_nat', paper=85.6),
    Row('PGD', 7, source='A_nat', paper=86.0),
    # Not in the paper: AutoAttack's standard version (Croce & Hein 2020 report 44.04% for
    # the released secret model, so no figure of this table sits beside it).
    Row('AutoAttack', 100),
)

CIFAR10 = Challenge(
    name='cifar10',
    package_dir=os.path.dirname(os.path.abspath(__file__)),
    config_keys=CONFIG_KEYS,
    build_model=model.build_model,
    build_portable_model=lambda config: model.build_model(config, portable=True),
    build_optimizer=build_optimizer,
    load_data=lambda config: data.load(config.data_path),
    data_files=lambda config: data.data_files(config.data_path),
    make_training_loss=make_training_loss,
    attack_params=attack_params,
    seed=lambda config: config.tf_random_seed,
    data_seed=lambda config: config.np_random_seed,
    augment=data.augment,
    training_attack_batch_norm=lambda config: config.training_attack_batch_norm,
    input_shape=model.INPUT_SHAPE,
    image_shape=model.INPUT_SHAPE,
    pixel_max=PIXEL_MAX,
    tf1_variables=model.tf1_variables,
    tf1_slots=tf1_slots,
    paper_table=PAPER_TABLE,
    architecture_keys=('filters',),
)
