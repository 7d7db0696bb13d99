"""Does the suite catch real bugs? Each mutation below puts one plausible bug into a copy of
the working tree, runs tests there, and lists the tests that fail; a mutation that no test
catches is reported and makes the exit code 1.

  python benchmarks/mutations.py                  # each: the fast suite + the files that target it
  python benchmarks/mutations.py --suite          # each: the whole suite (about 15 min apiece)
  python benchmarks/mutations.py --only fgsm_step --only cw_plus_kappa
  python benchmarks/mutations.py --quick          # each: only the files that target it

The copy is made from the files git knows (tracked and untracked, not ignored), and its
tests import the copy (PYTHONPATH, also for the scripts they start), never this checkout.
"""
import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  bug: str
  path: str
  edits: Sequence[Tuple[str, str]]  # (old, new): each old must occur exactly once
  tests: Sequence[str] = ()  # slow test files that target it, run beside the fast suite


MUTATIONS = (
    Mutation('replica_gradients_averaged', 'replica gradients averaged instead of summed',
             'common/training.py',
             [('scale_loss=lambda loss: self.updater.scale_loss(forward.with_model_losses(loss)),',
               'scale_loss=lambda loss: self.updater.scale_loss(forward.with_model_losses(loss)) '
               '/ self.strategy.num_replicas_in_sync,')],
             ['tests/test_multiworker.py']),
    Mutation('cw_plus_kappa', "CW+ κ 50 -> 0 in the paper's table", 'common/paper_table.py',
             [("CW_CONFIDENCE = {'CW': 0.0, 'CW+': 50.0}", "CW_CONFIDENCE = {'CW': 0.0, 'CW+': 0.0}")]),
    Mutation('fgsm_step', 'FGSM step ε/2 instead of ε', 'common/attacks/pgd.py',
             [('return PGDParams(epsilon, 1, epsilon, False,',
               'return PGDParams(epsilon, 1, epsilon / 2, False,')]),
    Mutation('random_start_unclipped', 'random start not clipped to the pixel range',
             'common/attacks/pgd.py',
             [('return tf.clip_by_value(x_nat + noise, clip_min, clip_max)', 'return x_nat + noise')]),
    Mutation('tf1_adam_slots_swapped', 'TF1 Adam slots mapped to the wrong variables',
             'mnist_challenge/challenge.py',
             [("slots[f'{name}/Adam'] = optimizer._momentums[index]",
               "slots[f'{name}/Adam'] = optimizer._velocities[index]"),
              ("slots[f'{name}/Adam_1'] = optimizer._velocities[index]",
               "slots[f'{name}/Adam_1'] = optimizer._momentums[index]")]),
    Mutation('submission_tolerance', 'submission tolerance 1e-4 -> 1e-3', 'common/submission.py',
             [('TOLERANCE = 1e-4', 'TOLERANCE = 1e-3')]),
    Mutation('score_reread', 'run_attack scores a re-read of the file, not the validated array',
             'common/commands.py',
             [('predictions = evaluator.predict(Split(x_adv, test.labels)',
               'predictions = evaluator.predict(Split(np.load(config.store_adv_path).astype('
               'np.float32), test.labels)')],
             ['tests/test_cli.py']),
    Mutation('cifar_decay_not_split', "CIFAR-10's weight decay not split over the replicas",
             'cifar10_challenge/challenge.py',
             [('weight_decay * model.weight_decay_loss(keras_model) / replicas',
               'weight_decay * model.weight_decay_loss(keras_model)')]),
    Mutation('evaluation_unseeded', "eval.py's and pgd_attack.py's random starts unseeded",
             'common/commands.py',
             [('seed=challenge.seed(config), jit_compile=jit,', 'jit_compile=jit,')],
             ['tests/test_determinism.py']),
    Mutation('max_pool_ties_shared', 'the deterministic max pool sends the gradient to every '
             'tied maximum', 'common/pooling.py',
             [('first = equal & tf.equal(before, 0)', 'first = equal')]),
    Mutation('max_pool_native_under_determinism', "TensorFlow's max pool kept under "
             'determinism (XLA refuses its gradient)', 'common/pooling.py',
             [('if (runtime.op_determinism() and runtime.compiling_with_xla()',
               'if (False and runtime.compiling_with_xla()')],
             ['tests/test_determinism.py']),
    Mutation('fused_inference_batch_norm', 'inference-mode batch norm by the fused kernel (its '
             'last bit differs from Keras\' arithmetic, which the export uses; no deterministic '
             'GPU gradient)', 'cifar10_challenge/model.py',
             [('if (not (training and self.trainable) or mask is not None',
               'if (mask is not None'),
              ('    gamma, beta = self.gamma.value, self.beta.value  # float32 under every policy\n',
               '    gamma, beta = self.gamma.value, self.beta.value  # float32 under every policy\n'
               '    if not (training and self.trainable):\n'
               '      outputs, *_ = tf.raw_ops.FusedBatchNormV3(\n'
               '          x=inputs, scale=gamma, offset=beta, mean=self.moving_mean.value,\n'
               '          variance=self.moving_variance.value, epsilon=self.epsilon,\n'
               '          is_training=False)\n'
               '      return tf.cast(outputs, self.compute_dtype)\n')],
             ['tests/test_model_files.py']),
    Mutation('square_schedule_rescaled', "Square's p halves on the iteration rescaled to "
             '10,000 (twice as fast for 5,000), not the raw one', 'common/attacks/square.py',
             [('sum(iteration > mark for mark in HALVINGS)',
               'sum(2 * iteration > mark for mark in HALVINGS)')]),
    Mutation('square_corner_touches_last_row', "Square's corner drawn from 0 ... size - side",
             'common/attacks/square.py',
             [('tf.maximum(size - side, 1)', 'size - side + 1')]),
    Mutation('square_one_iteration_short', 'Square runs 4,999 iterations after the stripes',
             'common/attacks/square.py',
             [('for iteration in range(num_queries):', 'for iteration in range(1, num_queries):')]),
    Mutation('fab_projection_one_sided', "FAB's projection takes no step from past the "
             'hyperplane', 'common/attacks/fab.py',
             [('smaller.\n  direction = tf.where(gap >= 0, 1.0, -1.0)[:, None] * w\n  gap = tf.abs(gap)',
               'smaller.\n  direction = w\n  gap = tf.maximum(gap, 0.0)')],
             ['tests/test_autoattack.py']),
    Mutation('fab_zero_gradient_moves', "FAB's projection moves coordinates whose w is 0",
             'common/attacks/fab.py',
             [('tf.where(direction > 0, tf.minimum(r, high)',
               'tf.where(direction >= 0, tf.minimum(r, high)')]),
    Mutation('apgd_first_adversarial', 'APGD returns the first misclassified iterate, not the '
             'last', 'common/attacks/apgd.py',
             [("tf.where(_expand(now, x), x_new, s['adversarial'])",
               "tf.where(_expand(now & ~s['fooled'], x), x_new, s['adversarial'])")]),
    Mutation('apgd_first_rise_against_the_start', "APGD's first checkpoint counts the first "
             "iterate's rise over the start's loss", 'common/attacks/apgd.py',
             [('history_start = tf.zeros_like(loss)', 'history_start = loss')]),
    Mutation('apgd_stops_despite_momentum', 'APGD stops at zero gradient though momentum still '
             'moves the point', 'common/attacks/apgd.py',
             [('return same(x_next, x) & same(x_next, x_best)', 'return same(x_next, x_best)')]),
    Mutation('apgd_stops_before_restart', 'APGD stops at zero gradient though a restart from '
             'its best point would move it', 'common/attacks/apgd.py',
             [('return same(x_next, x) & same(x_next, x_best)', 'return same(x_next, x)')]),
    Mutation('apgd_stops_on_a_moving_gradient', 'APGD stops where its point stands still though '
             'its gradient is not zero', 'common/attacks/apgd.py',
             [('same(x_next, x_best) & same(grad_next, 0.0)', 'same(x_next, x_best)')]),
    Mutation('fab_stops_after_one_iteration', 'FAB stops after its first iteration',
             'common/attacks/fab.py',
             [('tf.reduce_all(tf.equal(new, p1))', 'tf.reduce_all(tf.equal(new, new))')]),
    Mutation('square_runs_on_when_all_fooled', 'Square keeps querying once every example is '
             'fooled', 'common/attacks/square.py',
             [('(i < first + count) & tf.reduce_any(margins > 0), body,',
               'i < first + count, body,')],
             ['tests/test_autoattack.py']),
    Mutation('autoattack_pads_to_the_whole_batch', "the runner pads a partial batch to the "
             'whole batch size', 'common/attacks/runner.py',
             [('return min(-(-count // granule) * granule, self.batch_size)',
               'return self.batch_size')],
             ['tests/test_autoattack.py', 'tests/test_runner.py']),
    Mutation('fab_batch_of_one_breaks_its_loop', "FAB's batch size dynamic even where known (a "
             'batch of one changes shape in its loop)', 'common/attacks/fab.py',
             [('batch = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]',
               'batch = tf.shape(x)[0]')]),
    Mutation('apgd_t_targets_the_label', "APGD-T's and FAB-T's targets one rank too high (the "
             'clean prediction)', 'common/attacks/autoattack.py',
             [('targets = apgd.ranked_targets(clean_logits, rank)',
               'targets = apgd.ranked_targets(clean_logits, max(rank - 1, 1))')],
             ['tests/test_autoattack.py']),
    Mutation('trades_kl_reversed', "TRADES's KL the other way round, KL(f(x') || f(x))",
             'common/methods/trades.py',
             [('+ beta * kl(target, adversarial_logits)',
               '+ beta * kl(adversarial_logits, target)')]),
    Mutation('trades_natural_detached', "TRADES's KL with f(x) detached (no gradient through "
             'it)', 'common/methods/trades.py',
             [('+ beta * kl(target, adversarial_logits)',
               '+ beta * kl(tf.stop_gradient(target), adversarial_logits)')]),
    Mutation('trades_search_in_training_mode', "TRADES's search with batch norm in training "
             'mode (batch statistics) instead of the authors\' model.eval()',
             'common/methods/trades.py',
             [('x_adv = search(step.inference, x,',
               'x_adv = search(lambda v: step.forward(v, update_state=False), x,')],
             ['tests/test_trades.py']),
    Mutation('trades_adversarial_pass_keeps_the_state', "TRADES's pass over x' leaves batch "
             "norm's averages as they were (the authors' update them)",
             'common/methods/trades.py',
             [('logits = step.forward(x_adv, update_state=three)',
               'logits = step.forward(x_adv, update_state=False)')],
             ['tests/test_trades.py']),
    Mutation('trades_two_passes', "TRADES's KL target from the cross-entropy's pass (two passes, "
             "not the authors' three)", 'common/methods/trades.py',
             [('target = step.forward(x, update_state=True) if three and step.stateful else '
               'natural', 'target = natural')],
             ['tests/test_trades.py']),
    Mutation('mma_epsilon_by_batch_position', "MMA's memory read by the example's position in "
             'the batch, not its index in the training split', 'common/methods/mma.py',
             [('remembered = tf.gather(self.epsilon, examples)',
               'remembered = tf.gather(self.epsilon, tf.range(tf.size(examples)))')],
             ['tests/test_training_methods.py::'
              'test_mma_keys_its_memory_by_the_examples_index_in_the_training_split']),
    Mutation('yopo_hamiltonian_unclipped', "YOPO's Hamiltonian reads f0(x + η) unclipped",
             'common/methods/yopo.py',
             [('first_fn(tf.clip_by_value(x + eta, params.clip_min, params.clip_max)), '
               'tf.float32))', 'first_fn(x + eta), tf.float32))')],
             ['tests/test_training_methods.py::test_yopo_reads_the_first_layer_at_the_clipped_point']),
    Mutation('jacobian_projections_not_unit', "Jacobian regularisation's projections left "
             'unnormalised (the authors scale each row to unit length)',
             'common/methods/jacobian.py',
             [('  return draw / tf.norm(draw, axis=-1, keepdims=True)', '  return draw')],
             ['tests/test_regularisers.py']),
    Mutation('jacobian_without_the_class_count', "Jacobian regularisation's estimate without "
             "the authors' factor C", 'common/methods/jacobian.py',
             [('(classes / count if count else 1.0)', '(1.0 / count if count else 1.0)')],
             ['tests/test_regularisers.py']),
    Mutation('cross_lipschitz_pairs_once', "Cross-Lipschitz's sum over unordered pairs only "
             '(half the authors\')', 'common/methods/cross_lipschitz.py',
             [('return 2.0 / len(class_gradients)', 'return 1.0 / len(class_gradients)')],
             ['tests/test_regularisers.py']),
    Mutation('regulariser_first_order', "the regularisers' input gradients held constant (no "
             'second derivative: the weights do not learn from the regulariser)',
             'common/methods/base.py',
             [('gradients = [tf.cast(tape.gradient(p, x), tf.float32)',
               'gradients = [tf.cast(tf.stop_gradient(tape.gradient(p, x)), tf.float32)')],
             ['tests/test_regularisers.py']),
    Mutation('adversarial_rows_per_replica', "the regularisers' adversarial share counted in "
             "each replica's batch, not the global batch's first rows", 'common/methods/base.py',
             [('replaced = tf.cast(first, tf.int32) + tf.range(tf.shape(x)[0]) < count',
               'replaced = tf.range(tf.shape(x)[0]) < count')],
             ['tests/test_regularisers.py']),
    Mutation('model_losses_dropped', "the model's own losses (TisODE's steady-state term) "
             'left out of the loss the trainer differentiates', 'common/training.py',
             [('return loss + tf.add_n(self.model_losses) if self.model_losses else loss',
               'return loss')],
             ['tests/test_ode.py']),
    Mutation('model_losses_every_pass', "the model's own losses taken from the step's last "
             'pass (an attack\'s or a second pass\'s), not its first training pass',
             'common/training.py',
             [('if not attack and not self._losses_taken:', 'if True:')],
             ['tests/test_ode.py']),
    Mutation('tisode_steady_state_from_zero', "TisODE's steady-state integral from t = 0, "
             'not 0.9', 'common/ode.py',
             [('first = round(self.steady_from / h)', 'first = 0')],
             ['tests/test_ode.py']),
    Mutation('odenet_field_at_time_zero', "the ODENet's field always reads t = 0",
             'common/ode.py',
             [('tf.fill(tf.shape(h[..., :1]), tf.cast(t, h.dtype))',
               'tf.fill(tf.shape(h[..., :1]), tf.cast(0.0, h.dtype))')],
             ['tests/test_ode.py']),
    Mutation('trades_start_per_replica', "TRADES's start noise drawn per replica, not as rows "
             'of the global batch', 'common/methods/trades.py',
             [('whole, seed, stddev=NOISE * pixel_max, dtype=x.dtype), x, rows)',
               'whole, seed, stddev=NOISE * pixel_max, dtype=x.dtype), x, (0, rows[1]))')]),
    Mutation('portable_mnist_keeps_our_pooling', "the exported MNIST network keeps the "
             "project's max-pooling class (a .keras file that needs this project to load)",
             'mnist_challenge/model.py',
             [('  """The challenge\'s network."""\n  layers = keras.layers\n'
               '  max_pooling = layers.MaxPooling2D if portable else pooling.MaxPooling2D',
               '  """The challenge\'s network."""\n  layers = keras.layers\n'
               '  max_pooling = pooling.MaxPooling2D')],
             ['tests/test_model_files.py']),
    Mutation('export_overwrites_silently', 'an existing export output replaced without '
             '--overwrite', 'common/model_files.py',
             [('  if not overwrite:\n    raise ChallengeError(f\'{output} exists;', '  if False:\n    raise ChallengeError(f\'{output} exists;')],
             ['tests/test_model_files.py']),
    Mutation('model_path_restores_the_checkpoint', "with --model_path, model_dir's checkpoint "
             'is restored into the loaded model anyway', 'common/commands.py',
             [('  if not model_path:\n    evaluator.name, _ = checkpoints.restore_newest_model(',
               '  if True:\n    evaluator.name, _ = checkpoints.restore_newest_model(')],
             ['tests/test_model_files.py']),
    Mutation('model_input_shape_unchecked', "a model file's declared input shape not checked "
             'against the challenge\'s', 'common/model_files.py',
             [('  if found is not None and (len(found)', '  if False and (len(found)')],
             ['tests/test_model_files.py']),
    Mutation('probabilities_not_warned', 'a model file whose outputs are probabilities loads '
             'without the warning', 'common/model_files.py',
             [('  if autoattack.looks_like_probabilities(outputs):', '  if False:')],
             ['tests/test_model_files.py']),
    Mutation('keras_files_unsafe', '.keras files load with safe mode off (a Lambda layer runs '
             'its code)', 'common/model_files.py',
             [('safe_mode=not unsafe)', 'safe_mode=False)')],
             ['tests/test_model_files.py']),
    Mutation('small_cnn_he_truncated', "the Small CNN's conv kernels truncated normal (the "
             "authors' kaiming_normal_ is not truncated)", 'mnist_challenge/model.py',
             [("'untruncated_normal'", "'truncated_normal'")]),
    Mutation('small_cnn_dropout_in_inference', "the Small CNN's dropout on in inference mode "
             '(the attacks would see a random network)', 'mnist_challenge/model.py',
             [("layers.Dropout(0.5, name='drop'),",
               "layers.Lambda(lambda t: keras.random.dropout(t, 0.5), name='drop'),")]),
    Mutation('tf1_step_not_restored', "fine-tuning a TF1 checkpoint restarts Adam's step at 0",
             'common/training.py',
             [('    self.optimizer.iterations.assign(step)  # the learning-rate schedule\'s step\n',
               '')]),
    Mutation('yopo_first_layer_from_the_pass', "YOPO's first layer also learns from the full "
             "passes' cross-entropy (the authors' in-place accumulation)", 'common/methods/yopo.py',
             [('        layer_one = tf.stop_gradient(layer_one)  # the first layer learns from H alone\n',
               '')]),
    Mutation('yopo_hamiltonian_before_inner_steps', "YOPO's Hamiltonian at η before the inner "
             'updates', 'common/methods/yopo.py',
             [('      eta = inner_updates(first_fn, x, eta, costate, params, self.inner_steps)\n'
               '      with tf.GradientTape() as tape:\n'
               '        value = hamiltonian(first_fn, x, eta, costate, params)',
               '      previous = eta\n'
               '      eta = inner_updates(first_fn, x, eta, costate, params, self.inner_steps)\n'
               '      with tf.GradientTape() as tape:\n'
               '        value = hamiltonian(first_fn, x, previous, costate, params)')]),
    Mutation('yopo_passes_summed', "YOPO's m passes summed instead of averaged",
             'common/methods/yopo.py',
             [('loss = step.scale_loss(step.loss(y, logits) / self.outer_steps)',
               'loss = step.scale_loss(step.loss(y, logits))')]),
    Mutation('bilateral_beta_inverted', "the bilateral label's β divides instead of multiplies",
             'common/methods/bilateral.py',
             [('label_epsilon = 1.0 / (1.0 + beta * (v_ll - v_mc + gamma) / total)',
               'label_epsilon = 1.0 / (1.0 + (v_ll - v_mc + gamma) / total / beta)')]),
    Mutation('bilateral_untargeted', "R-MC's step ascends the target's loss (away from the most "
             'confusing class)', 'common/methods/bilateral.py',
             [('loss_fn=pgd.targeted(losses.xent)', 'loss_fn=losses.xent')]),
    Mutation('mma_hinge_flipped', "MMA trains on the margins beyond d_max instead of those "
             'within', 'common/methods/mma.py',
             [('correct & (new_epsilon >= max_epsilon)', 'correct & (new_epsilon < max_epsilon)')]),
    Mutation('mma_bisection_bounds_swapped', "MMA's bisection moves the wrong bound on a "
             'success', 'common/methods/mma.py',
             [('low = tf.where(fooled, low, tf.maximum(t, low))',
               'low = tf.where(fooled, tf.maximum(t, low), low)'),
              ('high = tf.where(fooled, tf.minimum(t, high), high)',
               'high = tf.where(fooled, high, tf.minimum(t, high))')]),
    Mutation('mma_memory_per_replica', "MMA's ε memory written from this replica's examples "
             'only', 'common/methods/mma.py',
             [('indices = context.all_gather(tf.cast(examples, tf.int64), axis=0)',
               'indices = tf.cast(examples, tf.int64)'),
              ('values = context.all_gather(outputs[0], axis=0)', 'values = outputs[0]')]),
    Mutation('yopo_overflow_unguarded', "YOPO's co-state and η gradient kept non-finite (a "
             'float16 overflow turns η into NaN)', 'common/methods/yopo.py',
             [('costate = finite(tf.stop_gradient(costate))',
               'costate = tf.stop_gradient(costate)'),
              ('threat.ascent_step(eta, finite(tape.gradient(value, eta)),',
               'threat.ascent_step(eta, tape.gradient(value, eta),')],
             ['tests/test_training_methods.py']),
    Mutation('mma_restore_needs_memory', 'MMA cannot start from another method\'s checkpoint',
             'common/training.py',
             [("if hasattr(checkpoint, 'method') and not checkpoints.holds(path, 'method'):",
               'if False:')]),
    Mutation('yopo_eta_not_carried', "YOPO's later full passes restart from the drawn η",
             'common/methods/yopo.py',
             [('eta = inner_updates(first_fn, x, eta, costate, params, self.inner_steps)',
               'eta = inner_updates(first_fn, x, inputs[0], costate, params, '
               'self.inner_steps)')]),
    Mutation('bilateral_targets_the_label', "bilateral's image step targets the true class",
             'common/methods/bilateral.py',
             [('x_adv = perturb_image(step.inference, x, most_confusing(natural, y)',
               'x_adv = perturb_image(step.inference, x, y')]),
    Mutation('bilateral_hard_label', 'bilateral training on the hard label', 'common/methods/bilateral.py',
             [('soft_xent(soft_labels, logits)), logits',
               'soft_xent(tf.one_hot(y, 10), logits)), logits')]),
    Mutation('mma_correct_flipped', "MMA's correct and wrong examples swapped", 'common/methods/mma.py',
             [('correct = tf.stop_gradient(soft_logit_margin(y, natural) < 0)',
               'correct = tf.stop_gradient(soft_logit_margin(y, natural) > 0)')]),
    Mutation('mma_remembers_the_wrong', "MMA remembers wrong examples' ε too", 'common/methods/mma.py',
             [('remembered = tf.where(correct, new_epsilon, tf.zeros_like(new_epsilon))',
               'remembered = new_epsilon')]),
    Mutation('yopo_keys_swapped', 'yopo_outer_steps and yopo_inner_steps swapped',
             'common/methods/yopo.py',
             [('config.yopo_outer_steps,\n              config.yopo_inner_steps)',
               'config.yopo_inner_steps,\n              config.yopo_outer_steps)')]),
    Mutation('resume_another_network', 'training on from a checkpoint of another network',
             'common/training.py',
             [('    self._require_same_network()\n', '')],
             ['tests/test_model.py', 'tests/test_cifar_training.py']),
    Mutation('filters_equal_at_a_stride', 'filters equal at a strided stage accepted',
             'cifar10_challenge/model.py',
             [('(b > a or (b == a and stride == 1))', 'b >= a')]),
    Mutation('training_epsilon_ignored', 'the training attack keeps epsilon, not training_epsilon',
             'common/methods/__init__.py',
             [('    params = dataclasses.replace(params, epsilon=config.training_epsilon)\n',
               '    pass\n')]),
    Mutation('guard_at_training_epsilon', 'the guard attacks at the training attack\'s ε',
             'common/training.py',
             [('self.challenge.attack_params(config), checkpoint_dir)',
               'self.attack_params, checkpoint_dir)')]),
    Mutation('masking_warning_at_0_2', 'the masking warning fires at exactly 0.2%',
             'common/attacks/autoattack.py',
             [('  if 1000 * broke > 2 * len(broken_by):',
               '  if 1000 * broke >= 2 * len(broken_by):')]),
    Mutation('autoattack_logits_per_count', 'AutoAttack judges each batch at its own count '
             '(the model traced anew for every count)',
             'common/attacks/autoattack.py',
             [('wrong = np.argmax(logits, 1) != labels[todo]',
               'wrong = np.argmax(self._logits(x_adv), 1) != labels[todo]')],
             ['tests/test_autoattack.py']),
    # The one runner and the attack interface (tests/test_runner.py).
    Mutation('runner_rows_to_the_wrong_replica', "the runner gives every replica the batch's "
             'first rows', 'common/attacks/runner.py',
             [('lambda context: tuple(t[context.replica_id_in_sync_group * rows:\n'
               '                                (context.replica_id_in_sync_group + 1) * rows]',
               'lambda context: tuple(t[0:\n                                rows]')],
             ['tests/test_runner.py']),
    Mutation('runner_keeps_the_padding', "the runner returns the padding rows' outputs",
             'common/attacks/runner.py',
             [('outputs.append([np.asarray(o)[:count] for o in out[:keep]])',
               'outputs.append([np.asarray(o) for o in out[:keep]])')],
             ['tests/test_runner.py']),
    Mutation('runner_draws_by_batch_position', "the runner numbers the examples by their "
             'place in the batch, not in the set', 'common/attacks/runner.py',
             [('examples = (np.arange(len(labels), dtype=np.int64) if examples is None\n'
               '                else np.asarray(examples, np.int64))',
               'examples = np.arange(len(labels), dtype=np.int64) % self.batch_size')],
             ['tests/test_runner.py']),
    Mutation('cw_ignores_to_targets', 'a C&W attack made with to_targets runs untargeted',
             'common/attacks/registry.py',
             [('return self.solve(model_fn, x, labels, targets if self.to_targets else None, '
               'budget)', 'return self.solve(model_fn, x, labels, None, budget)')],
             ['tests/test_runner.py']),
    Mutation('named_row_judges_outside_the_ball', "a named row counts a misclassified "
             'example outside the ε-ball as broken', 'common/evaluation.py',
             [('return float(np.mean(clean & ~(fooled & inside)))',
               'return float(np.mean(clean & ~fooled))')],
             ['tests/test_runner.py', 'tests/test_paper_suite.py']),
    Mutation('named_row_ignores_its_iterations', "a named row runs its attack's default "
             'budget, not NAME:ITERATIONS', 'common/paper_table.py',
             [('config.eval_batch_size, challenge.seed(config) + index, row.steps or 0,',
               'config.eval_batch_size, challenge.seed(config) + index, 0,')],
             ['tests/test_paper_suite.py']),
    # The training methods in ℓ2 (tests/test_training_l2.py).
    Mutation('yopo_l2_sign_steps', "YOPO's inner steps are sign steps under norm l2",
             'common/methods/yopo.py',
             [('eta = threat.ascent_step(eta, finite(tape.gradient(value, eta)), params.step_size)',
               'eta = eta + params.step_size * tf.sign(finite(tape.gradient(value, eta)))')],
             ['tests/test_training_l2.py']),
    Mutation('mma_l2_ball_before_pixels', "MMA's ℓ2 steps take the ball before the pixel range "
             '(not advertorch\'s order)', 'common/methods/mma.py',
             [('x_adv = x + threat.shrink(tf.clip_by_value(x_adv, clip_min, clip_max) - x, radius)',
               'x_adv = tf.clip_by_value(x + threat.shrink(x_adv - x, radius), clip_min, clip_max)')],
             ['tests/test_training_l2.py']),
    Mutation('mma_l2_keys_ignored', "MMA under norm l2 takes the ℓ∞ d_max and ε_min",
             'common/methods/mma.py',
             [('config.mma_l2_max_epsilon if l2 else config.mma_max_epsilon,',
               'config.mma_max_epsilon,')],
             ['tests/test_training_l2.py']),
    Mutation('bilateral_l2_starts_in_the_box', "bilateral's ℓ2 start drawn in the ℓ∞ box",
             'common/methods/bilateral.py',
             [('return (start(x, self.params.epsilon, seed, rows, self.params.norm),)',
               'return (start(x, self.params.epsilon, seed, rows),)')],
             ['tests/test_training_l2.py']),
    # Bad input (tests/test_bad_input.py, docs/robustness.md).
    Mutation('attack_command_scores_nan', 'attack.py scores NaN logits as predictions',
             'common/commands.py',
             [("  require_finite_logits(clean_logits, path, 'clean examples')", ''),
              ("  require_finite_logits(adversarial_logits, path, 'adversarial examples')", '')],
             ['tests/test_bad_input.py']),
    Mutation('open_input_blocks', 'a file a command reads is opened blocking (a FIFO hangs it)',
             'common/files.py',
             [("descriptor = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0)\n"
               "                         | getattr(os, 'O_CLOEXEC', 0))",
               'descriptor = os.open(path, os.O_RDONLY)')], ['tests/test_bad_input.py']),
    Mutation('open_input_any_kind', 'a file a command reads may be a directory, FIFO or device',
             'common/files.py',
             [('    if not stat.S_ISREG(status.st_mode):\n      raise error(f\'{what} {path} is '
               '{kind(status.st_mode)}, not a regular file\')\n    if max_bytes',
               '    if max_bytes')], ['tests/test_bad_input.py']),
    Mutation('model_file_kind_unchecked', 'a --model_path of any kind handed to Keras (a FIFO '
             'blocks it)', 'common/model_files.py',
             [("    files.require_regular(path, 'model file')", '    pass')],
             ['tests/test_bad_input.py']),
    Mutation('float_not_finite', 'a float key of NaN or infinity accepted', 'common/config.py',
             [('if key.type is float and not _finite(value):', 'if False:')],
             ['tests/test_bad_input.py']),
    Mutation('integer_unbounded', 'an integer key without a maximum of its own unbounded',
             'common/config.py',
             [('maximum = key.maximum if key.maximum is not None or key.type is float else '
               'INT_MAXIMUM', 'maximum = key.maximum')], ['tests/test_bad_input.py']),
    Mutation('output_may_be_an_input', 'an output may be one of the command\'s inputs',
             'common/files.py', [('      if same or holds:', '      if False:')],
             ['tests/test_bad_input.py']),
    Mutation('output_kind_unchecked', 'an output file may be a directory, FIFO or device',
             'common/files.py',
             [('    if not directory and not stat.S_ISREG(mode):', '    if False:')],
             ['tests/test_bad_input.py']),
    Mutation('read_only_unchecked', 'a read-only place found only after the work',
             'common/files.py',
             [('  if not os.access(place, os.W_OK | os.X_OK):', '  if False:')],
             ['tests/test_bad_input.py']),
    Mutation('model_dir_unlocked', 'two train.py may write one model_dir', 'common/files.py',
             [('    try:\n      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)\n'
               '    except BlockingIOError:',
               '    try:\n      pass\n    except BlockingIOError:')],
             ['tests/test_bad_input.py']),
    Mutation('failed_checkpoint_left', 'a checkpoint that failed to write (full disk) is left '
             'half-written', 'common/checkpoints.py',
             [('    remove_partial(manager.directory, step)\n', '')],
             ['tests/test_bad_input.py']),
    Mutation('stale_partials_kept', 'partial files and staging directories of killed writers '
             'are never removed', 'common/files.py',
             [('if pattern.match(entry) and not _locked_by_another(candidate):', 'if False:')],
             ['tests/test_bad_input.py']),
    Mutation('stale_checkpoint_staging_kept', 'checkpoint-N_temp of a killed train.py kept',
             'common/training.py', [('        checkpoints.remove_partial(directory)', '        pass')],
             ['tests/test_bad_input.py']),
    Mutation('resume_history_lost', 'a resumed run with other settings forgets the earlier ones',
             'common/training.py',
             [("        history.append({'steps': [first, start], 'settings': changed})\n", '')],
             ['tests/test_bad_input.py']),
    Mutation('nan_logits_scored', 'NaN logits scored as predictions', 'common/evaluation.py',
             [('    if not_finite.any():\n      raise NonFiniteLogits(self.name, int(not_finite.sum()), 2',
               '    if False:\n      raise NonFiniteLogits(self.name, int(not_finite.sum()), 2'),
              ('    if not_finite.any():\n      raise NonFiniteLogits(self.name, int(not_finite.sum()), len',
               '    if False:\n      raise NonFiniteLogits(self.name, int(not_finite.sum()), len')],
             ['tests/test_bad_input.py']),
    Mutation('overwrite_deletes_any_directory', 'export --overwrite replaces whatever --output is',
             'common/model_files.py',
             [('  if not (is_keras_file(output) or is_saved_model(output)):', '  if False:')],
             ['tests/test_bad_input.py']),
    Mutation('partial_files_private', 'written files keep mkstemp\'s 0600, not the umask\'s mode',
             'common/files.py',
             [('    os.fchmod(descriptor, default_mode())', '    pass')],
             ['tests/test_bad_input.py']),
    Mutation('flag_errors_traceback', 'a flag that does not parse ends in absl\'s own output, '
             'not one error line', 'common/cli.py',
             [('app.run(main, flags_parser=_parse_flags)', 'app.run(main)')],
             ['tests/test_bad_input.py']),
    Mutation('keras_floor_unsafe', 'the Keras floor back at 3.6.0 (safe mode bypassable)',
             'common/versions.py', [("'keras': ('3.14.0', '3.16')", "'keras': ('3.6.0', '3.16')")],
             ['tests/test_versions.py']),
    # The threat model (tests/test_threat.py).
    Mutation('l2_projection_onto_the_sphere', 'the ℓ2 projection moves points inside the ball '
             'onto its sphere', 'common/attacks/threat.py',
             [('scale = tf.minimum(tf.ones_like(norm), epsilon / tf.maximum(norm, _TINY))',
               'scale = epsilon / tf.maximum(norm, _TINY)')], ['tests/test_threat.py']),
    Mutation('l2_step_is_a_sign_step', 'the ℓ2 step is the ℓ∞ one (sign of the gradient)',
             'common/attacks/threat.py',
             [('return x + step_size * grad / (_per_example_norm(grad) + _TINY)',
               'return x + step_size * tf.sign(grad)')], ['tests/test_threat.py']),
    Mutation('l2_start_in_a_box', 'the ℓ2 random start drawn in a box, not on the sphere',
             'common/attacks/threat.py',
             [('return radius * gaussian / (_per_example_norm(gaussian, batched) + _TINY)',
               'return tf.clip_by_value(gaussian, -radius, radius)')], ['tests/test_threat.py']),
    Mutation('l2_distance_is_linf', 'the ℓ2 distance measured as the ℓ∞ one',
             'common/attacks/threat.py',
             [("return np.sqrt(np.einsum('ij,ij->i', flat, flat))",
               'return np.abs(flat).max(axis=1)')], ['tests/test_threat.py']),
    Mutation('pgd_ignores_the_norm', 'PGD attacks in ℓ∞ whatever the norm',
             'common/attacks/pgd.py',
             [('  threat = params.threat\n', "  threat = dataclasses.replace(params, "
               "norm='linf').threat\n")], ['tests/test_threat.py']),
    Mutation('submission_ignores_the_norm', 'a submission checked in ℓ∞ whatever the norm',
             'common/submission.py',
             [('threat = ThreatModel(norm, epsilon, 0.0, pixel_max)',
               "threat = ThreatModel('linf', epsilon, 0.0, pixel_max)")],
             ['tests/test_threat.py']),
    Mutation('autoattack_runs_l2_as_linf', 'AutoAttack runs its ℓ∞ attacks under norm l2',
             'common/attacks/autoattack.py',
             [("self.threat = ThreatModel(norm, self.epsilon, clip_min, clip_max)",
               "self.threat = ThreatModel('linf', self.epsilon, clip_min, clip_max)")],
             ['tests/test_threat.py', 'tests/test_autoattack_l2.py']),
    Mutation('autoattack_command_drops_the_norm', 'autoattack.py runs ℓ∞ under norm l2',
             'common/commands.py',
             [("**autoattack.budget(iterations), log=log, model_name=path, norm=params.norm)",
               "**autoattack.budget(iterations), log=log, model_name=path)")],
             ['tests/test_threat.py']),
    # AutoAttack's ℓ2 attacks (tests/test_autoattack.py, tests/test_autoattack_l2.py).
    Mutation('apgd_l2_sign_step', 'APGD-ℓ2 steps along the gradient\'s sign',
             'common/attacks/apgd.py',
             [("z = project(threat.ascent_step(s['x'], s['grad'], eta))",
               "z = project(s['x'] + eta * tf.sign(s['grad']))")],
             ['tests/test_autoattack.py']),
    Mutation('apgd_l2_start_inside_the_ball', 'APGD-ℓ2 starts from a Gaussian not scaled to ε',
             'common/attacks/apgd.py',
             [("return tf.clip_by_value(x + threat.epsilon * t / (threat.norms(t) + 1e-12),",
               "return tf.clip_by_value(x + threat.epsilon * t / (threat.norms(t) * 0 + 10.0),")],
             ['tests/test_autoattack.py']),
    Mutation('fab_l2_projects_in_linf', 'FAB-ℓ2 projects onto the boundary in ℓ∞',
             'common/attacks/fab.py',
             [("project = project_linf if threat.norm == 'linf' else project_l2",
               "project = project_linf")],
             ['tests/test_autoattack_l2.py']),
    Mutation('fab_l2_moves_negligible_weights', 'FAB\'s ℓ2 projection moves |w| < 1e-8 pixels',
             'common/attacks/fab.py',
             [("w = tf.where(tf.abs(w) < L2_NEGLIGIBLE_WEIGHT, tf.zeros_like(w), w)", "")],
             ['tests/test_autoattack_l2.py']),
    Mutation('fab_l2_measures_linf', 'FAB-ℓ2 keeps the closest point in ℓ∞',
             'common/attacks/fab.py',
             [("norm = threat.norms(new - x0)[:, 0]",
               "norm = tf.reduce_max(tf.abs(new - x0), axis=1)")],
             ['tests/test_autoattack_l2.py']),
    Mutation('square_l2_keeps_the_second_window', 'Square-ℓ2 leaves the second window\'s content',
             'common/attacks/square.py',
             [("tf.where(second > 0, tf.zeros_like(delta), delta)", "delta")],
             ['tests/test_autoattack_l2.py']),
    Mutation('square_l2_budget_per_example', 'Square-ℓ2\'s budget not divided among channels',
             'common/attacks/square.py',
             [("                   / channels + tf.square(", "                   + tf.square(")],
             ['tests/test_autoattack_l2.py']),
    Mutation('square_l2_even_sides', 'Square-ℓ2\'s sides not made odd',
             'common/attacks/square.py',
             [("    side += 1 - side % 2\n", "")],
             ['tests/test_autoattack_l2.py']),
    # The Carlini–Wagner attacks (tests/test_carlini_wagner.py) and attack.py.
    Mutation('cw_adam_without_bias_correction', 'C&W\'s Adam drops the bias correction',
             'common/attacks/carlini_wagner.py',
             [("    rate = tf.cast(learning_rate * tf.sqrt(1.0 - beta_2_power) / (1.0 - "
               "beta_1_power),", "    rate = tf.cast(learning_rate + 0.0 * beta_1_power,")],
             ['tests/test_carlini_wagner.py']),
    Mutation('cw_confidence_ignored', 'C&W\'s margin term ignores κ',
             'common/attacks/carlini_wagner.py',
             [("  return tf.maximum(0.0, real - other + confidence)",
               "  return tf.maximum(0.0, real - other)")],
             ['tests/test_carlini_wagner.py']),
    Mutation('cw_l2_keeps_every_success', 'C&W-ℓ2 keeps the last success, not the closest',
             'common/attacks/cw_l2.py',
             [("      closer = works & (distance < overall_best_l2)", "      closer = works")],
             ['tests/test_carlini_wagner.py']),
    Mutation('cw_l2_no_binary_search', 'C&W-ℓ2 never raises c after a failure',
             'common/attacks/cw_l2.py',
             [("tf.where(found, const, const * 10.0))", "const)")],
             ['tests/test_carlini_wagner.py']),
    Mutation('cw_linf_tau_ignored', 'C&W-ℓ∞ penalises all of |δ|, not what exceeds τ',
             'common/attacks/cw_linf.py',
             [("tf.abs(image - original) - per_example(tau)", "tf.abs(image - original)")],
             ['tests/test_carlini_wagner.py']),
    Mutation('cw_l0_fixes_the_most_changed_first', 'C&W-ℓ0 fixes the most changed pixels first',
             'common/attacks/cw_l0.py',
             [("  ranked = tf.where(allowed, value, float('inf'))",
               "  ranked = tf.where(allowed, -value, float('inf'))")],
             ['tests/test_carlini_wagner.py']),
    Mutation('cw_runs_without_input_gradient', 'C&W runs on a model with no input gradient',
             'common/attacks/carlini_wagner.py',
             [("  if tape.gradient(logits, x) is None:", "  if False:")],
             ['tests/test_carlini_wagner.py']),
    Mutation('attack_command_counts_failures', 'attack.py reports distances of failed examples',
             'common/commands.py',
             [("  per_example = np.where(succeeded, distances, np.nan)",
               "  per_example = distances")],
             ['tests/test_attack_command.py']),
    # Input defences, BPDA, EOT and AutoAttack's rand version (issue 49).
    Mutation('thermometer_code_off_by_one', 'thermometer code_k = 1 where k < bucket, not ≤',
             'common/defences/thermometer.py',
             [('return tf.cast(tf.range(levels, dtype=x.dtype) <= bucket[..., None], x.dtype)',
               'return tf.cast(tf.range(levels, dtype=x.dtype) < bucket[..., None], x.dtype)')],
             ['tests/test_defences.py']),
    Mutation('thermometer_soft_code_shifted', 'the soft code ramps a level late',
             'common/defences/thermometer.py',
             [("return tf.clip_by_value(levels * x[..., None] - tf.range(levels, dtype=x.dtype) + 1.0,",
               "return tf.clip_by_value(levels * x[..., None] - tf.range(levels, dtype=x.dtype),")],
             ['tests/test_defences.py']),
    Mutation('resize_pad_half_pixel', 'random resize samples pixel centres (not TF1\'s rule)',
             'common/defences/random_resize_pad.py',
             [('index = ((positions - offset[:, None]) * s) // r[:, None]',
               'index = ((2 * (positions - offset[:, None]) + 1) * s) // (2 * r[:, None])')],
             ['tests/test_defences.py']),
    Mutation('bpda_identity_ignored', 'BPDA "identity" takes the defence\'s own gradient',
             'common/defences/base.py',
             [("        if backward == 'identity':\n          return upstream\n", '')],
             ['tests/test_defences.py']),
    Mutation('eot_last_gradient_only', 'EOT keeps the last pass\'s gradient, not the mean',
             'common/attacks/eot.py',
             [('return i + 1, logits, loss, total + gradient', 'return i + 1, logits, loss, gradient')],
             ['tests/test_defences.py']),
    Mutation('eot_not_passed_to_apgd', 'APGD ignores eot_samples', 'common/attacks/registry.py',
             [('start, eot_samples=self.eot_samples)', 'start)')],
             ['tests/test_defences.py']),
    Mutation('rand_version_judges_like_standard', 'the rand version keeps the standard rule',
             'common/attacks/autoattack.py',
             [("if self.version == 'rand':", "if False:")],
             ['tests/test_defences.py']),
    Mutation('trainer_skips_defence_in_attack', 'the training attack differentiates the bare '
             'network', 'common/training.py',
             [('return lambda x: self.twin(self._defended(x), training=False)',
               'return lambda x: self.twin(self._defended(tf.stop_gradient(x)) + 0.0 * '
               'tf.reduce_sum(x), training=False)')],
             ['tests/test_defence_commands.py']),
    Mutation('bpda_without_defence_accepted', 'bpda "on" with no defence is not refused',
             'common/defences/__init__.py',
             [("    if backward != 'off':\n      raise", "    if False:\n      raise")],
             ['tests/test_defences.py']),
    Mutation('square_l2_pattern_one_signed', 'Square-ℓ2\'s pattern without its negative half',
             'common/attacks/square.py',
             [("                            -_nested_rectangles(side - side // 2, side)])",
               "                            _nested_rectangles(side - side // 2, side)])")],
             ['tests/test_autoattack_l2.py']),
)


def copy_tree(target):
  """The files git knows (tracked and untracked, not ignored) into target."""
  names = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=REPO,
                         check=True, capture_output=True).stdout.decode().split('\0')
  for name in filter(None, names):
    source = os.path.join(REPO, name)
    if os.path.isfile(source):
      os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
      shutil.copy2(source, os.path.join(target, name))
  # The real-data tests find ../shared beside the checkout.
  shared = os.path.join(os.path.dirname(REPO), 'shared')
  if os.path.isdir(shared):
    os.symlink(shared, os.path.join(os.path.dirname(target), 'shared'))


def apply(mutation, root):
  path = os.path.join(root, mutation.path)
  with open(path) as f:
    text = f.read()
  for old, new in mutation.edits:
    if text.count(old) != 1:
      raise SystemExit(f'{mutation.name}: "{old}" occurs {text.count(old)} times in '
                       f'{mutation.path}; update the mutation')
    text = text.replace(old, new)
  with open(path, 'w') as f:
    f.write(text)


def run_tests(root, args):
  env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL='2')
  where = subprocess.run([sys.executable, '-c', 'import common; print(common.__file__)'],
                         cwd=root, env=env, capture_output=True, text=True).stdout
  assert where.startswith(root), f'the copy imports {where.strip()}, not itself'
  result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                           '-rfE'] + args, cwd=root, env=env, capture_output=True, text=True)
  failed = sorted(set(re.findall(r'^(?:FAILED|ERROR) (\S+)', result.stdout, re.MULTILINE)))
  summary = (result.stdout.strip().splitlines() or [''])[-1]
  return failed, summary


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--suite', action='store_true', help='run the whole suite per mutation')
  parser.add_argument('--only', action='append', choices=[m.name for m in MUTATIONS])
  parser.add_argument('--quick', action='store_true',
                      help='run only the files that target each mutation (its `tests`), not the '
                           'fast suite beside them')
  options = parser.parse_args()
  chosen = [m for m in MUTATIONS if not options.only or m.name in options.only]
  missed = []
  for mutation in chosen:
    began = time.time()
    with tempfile.TemporaryDirectory() as scratch:
      root = os.path.join(scratch, 'repo')
      copy_tree(root)
      apply(mutation, root)
      runs = [[]] if options.suite else [['-m', 'not slow']] + (
          [list(mutation.tests)] if mutation.tests else [])
      if options.quick and mutation.tests:
        runs = [list(mutation.tests)]
      failed, summary = [], []
      for args in runs:
        more, line = run_tests(root, args)
        failed, summary = failed + more, summary + [line]
    print(f'\n{mutation.name}: {mutation.bug} ({mutation.path}; {time.time() - began:.0f} s)')
    print(f'  {"; ".join(summary)}')
    for test in failed:
      print(f'  fails: {test}')
    if not failed:
      print('  NOT CAUGHT: no test failed')
      missed.append(mutation.name)
    sys.stdout.flush()
  print(f'\n{len(chosen) - len(missed)} of {len(chosen)} mutations caught'
        + (f'; not caught: {", ".join(missed)}' if missed else ''))
  sys.exit(1 if missed else 0)


if __name__ == '__main__':
  main()
