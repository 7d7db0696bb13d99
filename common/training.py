"""Adversarial training, shared by both challenges, under a tf.distribute strategy: the loop,
checkpoints, the guard, strategies and precisions; what a step computes (the original's PGD
training, TRADES, bilateral, MMA, YOPO, ...) is the configured method (common.methods).

The loop follows the original train.py: at step s (weights after s updates) it first writes
the checkpoint (every num_checkpoint_steps, from step 0), then prints (every
num_output_steps) and writes summaries (every num_summary_steps) about the batch of step s,
then updates. Unlike the original, a model_dir that holds a checkpoint is resumed (weights,
optimizer slots and step), and the final weights are saved at max_num_training_steps.

Batch norm. The training forward pass uses batch statistics and updates the moving
averages, once per step. How the training-time attack treats batch norm is the challenge's
choice (ATTACK_BATCH_NORM). Models run through `stateless_call` with their non-trainable
state (the moving averages) carried as tensors, so the attack can use batch statistics
without touching the averages; at the end of a step each replica's new averages are
averaged over replicas and written back, so every replica (and the checkpoint) holds the
same values. (Keras 3 creates them with aggregation NONE: assigned in place under a
MirroredStrategy, replicas' copies would drift apart and only the first one be saved.)

Several replicas, several hosts. training_batch_size is the global batch: global batch s is
the same set of examples however many replicas there are, and replica r of R (numbered
across hosts) gets its rows r·B/R .. (r+1)·B/R. Every random draw of a step (augmentation,
the attack's random start) is made for the whole global batch from (seed, step) and each
replica keeps its rows, so without batch norm (MNIST) training is the one-device training up
to float summation order; with it (CIFAR-10) each replica normalises with its own rows'
statistics (per-replica batch norm). Under MultiWorkerMirroredStrategy only the
chief writes the model_dir (checkpoints, config.json, summaries) and prints progress; the
other workers save their checkpoints into a scratch directory they delete, and every worker
resumes from the chief's model_dir, which must be the same storage on every host.
"""
import contextlib
import datetime
import json
import os
import shutil
import tempfile
import time
import zlib

import keras
import tensorflow as tf

from common import (checkpoints, data, defences, distribute, files, guard, losses, methods,
                    model_files, precision, runtime, tf1_checkpoints)
from common.challenge import Challenge
from common.config import Config, check_value
from common.errors import ChallengeError

# How the training-time attack treats batch norm: {name: what it does}.
ATTACK_BATCH_NORM = {
    'batch': 'batch statistics, as the original, with the moving averages untouched',
    'batch_update': 'batch statistics, and every attack step also updates the moving '
                    'averages, exactly as the original (its attack ran the train-mode model)',
    'inference': 'the moving averages (inference mode), as eval.py attacks',
}


class _StatefulForward:
  """x -> logits in training mode (batch statistics) through `stateless_call`, in the
  twin's precision, with the model's non-trainable state carried here as tensors instead
  of assigned. The model's own losses (Keras add_loss: TisODE's steady-state term) are those
  of the step's first pass that updates the state and is not the attack's (the natural or
  training batch's pass of every method), kept for `with_model_losses`: once per step,
  whatever the number of passes a method takes."""

  def __init__(self, twin: precision.Twin, defend=None):
    self.twin, self.model, self.defend = twin, twin.model, defend
    self.state = [v.value for v in self.model.non_trainable_variables]
    self.model_losses, self._losses_taken = [], False

  def __call__(self, x, update_state, attack=False):
    if self.defend is not None:  # the input defence in front of the network
      x = self.defend(x)
    logits, state, model_losses = self.twin.stateless_call(
        [v.value for v in self.model.trainable_variables], self.state, x, training=True,
        return_losses=True)
    if update_state:
      self.state = state
      if not attack and not self._losses_taken:
        self.model_losses = [tf.cast(loss, tf.float32) for loss in model_losses]
        self._losses_taken = True
    return logits

  def with_model_losses(self, loss):
    """`loss` plus the model's own losses of the training passes so far."""
    return loss + tf.add_n(self.model_losses) if self.model_losses else loss


def _write_state(model, state):
  """Assigns the carried state, floats averaged over replicas (call in replica context)."""
  context = tf.distribute.get_replica_context()
  for variable, value in zip(model.non_trainable_variables, state):
    if value.dtype.is_floating:
      value = context.all_reduce(tf.distribute.ReduceOp.MEAN, value)
    variable.assign(value)


class Trainer:
  """Builds the model, optimizer and compiled steps once; `run` trains to the configured step."""

  def __init__(self, challenge: Challenge, config: Config, strategy=None, log=print):
    self.challenge, self.config, self.log = challenge, config, log
    self.strategy = strategy or distribute.get_strategy()
    self.seed = challenge.seed(config)
    self.data_seed = challenge.data_seed(config) if challenge.data_seed else self.seed
    keras.utils.set_random_seed(self.seed)  # weight initialisation
    self.global_batch = config.training_batch_size
    replicas = self.strategy.num_replicas_in_sync
    if self.global_batch % replicas:
      raise ChallengeError(
          f'training_batch_size {self.global_batch} (the global batch) does not split evenly '
          f'over {replicas} replicas; use a multiple of {replicas}')
    self.replica_batch = self.global_batch // replicas
    self.chief = distribute.is_chief(self.strategy)
    if not self.chief:
      self.log = lambda *args, **kwargs: None  # the chief reports for everyone
    # The training method (common.methods): the original's PGD training (with the
    # configured PGD, fewer or other steps, or a single-step attack), TRADES, bilateral
    # adversarial training, MMA, YOPO, ...; its attack's settings.
    resolved = methods.resolve(config)
    self.method_name = resolved.training_method
    self.method = methods.build(challenge, resolved, challenge.attack_params(config))
    self.attack_params = self.method.params
    self.training_loss = challenge.make_training_loss(config)
    losses.attack_loss(self.attack_params.loss_func)  # an unknown name fails before any work
    self.jit_compile = runtime.set_up(self.strategy, config.precision, config.jit_compile,
                                      config.deterministic) and self.method.supports_xla
    # An input defence (common/defences) in front of the network, in every forward pass of
    # training and of its attack; the checkpoint holds the network alone.
    self.defence = defences.from_config(config, challenge.image_shape, challenge.pixel_max)
    self._defend = None
    if self.defence is not None:
      if self.defence.randomised:
        raise ChallengeError(f'{self.defence.name} is applied at evaluation only (Xie et al. '
                             'put it in front of a trained network): train without it '
                             '(defence "none") and evaluate with --defence '
                             f'{self.defence.name}')
      if self.method_name == 'yopo':
        raise ChallengeError('YOPO differentiates the network\'s first layer, which a defence '
                             'in front of it hides: train behind a defence with another '
                             'training_method, or without the defence')
      backward = defences.backward_of(config, self.defence)
      self._defend = lambda x: self.defence.apply(x, backward)
    with self.strategy.scope():
      self.model = challenge.build_model(config)
      # The optimizer whose state is checkpointed; `updater` applies updates through it
      # (with loss scaling in float16), so a checkpoint does not depend on the precision.
      self.optimizer = challenge.build_optimizer(config)
      self.updater = precision.training_optimizer(self.optimizer, config.precision)
      if self.method_name == 'yopo' and any(getattr(layer, 'adds_training_losses', False)
                                            for layer in self.model.layers):
        raise ChallengeError(f'the {self.model.name} network adds a loss of its own in training '
                             '(TisODE\'s steady-state term), which YOPO\'s split passes do '
                             'not compute: train it with another training_method')
      # Keras 3 optimizers must create their slots in the strategy scope, before the
      # first distributed step (not inside tf.function).
      self.updater.build(self.model.trainable_variables)
      # Keras checkpoints a constant learning rate as a variable: a run resumed with another
      # rate in its config would go on with the old one.
      rate = self.optimizer._learning_rate  # pylint: disable=protected-access
      self._constant_rate = (None if isinstance(
          rate, keras.optimizers.schedules.LearningRateSchedule)
                             else float(tf.convert_to_tensor(rate.value)))
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step')
    # The twin only lends its layers to stateless calls: its own variables are never
    # read, so it stays outside the strategy (no per-replica copies).
    self.twin = precision.Twin(self.model, lambda: challenge.build_model(config),
                               config.precision)
    self.checkpoint = checkpoints.training_checkpoint(self.model, self.optimizer, self.step)
    self._gradients = (tf.function(self._gradients_fn, jit_compile=True) if self.jit_compile
                       else self._gradients_fn)
    self.attack_batch_norm = challenge.training_attack_batch_norm(config)
    if self.attack_batch_norm not in ATTACK_BATCH_NORM:
      raise ChallengeError(
          f'unknown batch norm mode "{self.attack_batch_norm}" for the training-time attack; '
          'use one of: ' + ', '.join(ATTACK_BATCH_NORM))

  # --- compiled steps -------------------------------------------------------------------

  def _replica_step(self, x, y, examples=None):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    # A stateless seed per (config seed, step): reproducible, a resumed run draws the random
    # starts an uninterrupted one would have, and the draw is made for the global batch (this
    # replica keeps its rows), so it does not depend on the number of replicas. It is drawn
    # here, outside XLA, whose generators give other numbers.
    seed = tf.stack([tf.constant(self.seed, tf.int64), self.step.read_value()])
    rows = (replica * self.replica_batch, self.global_batch)
    if self.method.needs_examples and examples is None:
      raise ChallengeError(f'{type(self.method).__name__} needs each example\'s index in the '
                           'training split: pass batches of (images, labels, indices)')
    inputs = self.method.prepare(x, seed, rows, examples)
    gradients, state, correct, xent_sum, x_adv, outputs = self._gradients(x, y, inputs)
    # The update and the replicas' exchanges stay outside XLA (collectives and the
    # optimizer's cross-replica merge cannot be compiled into a replica's function).
    variables = self.model.trainable_variables
    self.updater.apply_gradients(zip(gradients, variables))
    _write_state(self.model, state)
    self.method.finish(examples, outputs)
    return correct, xent_sum, x_adv

  def _gradients_fn(self, x, y, inputs):
    """The method's attack and the (scaled) loss's weight gradients: (gradients, the model's
    new non-trainable state, correct, xent sum, x_adv, the method's outputs);
    XLA-compiled with jit_compile."""
    forward = _StatefulForward(self.twin, self._defend)
    step = methods.Step(
        forward=forward, inference=lambda v: self.twin(self._defended(v), training=False),
        attack_model=self._attack_model(forward),
        loss=lambda labels, logits, per_example=None: self.training_loss(
            labels, logits, self.model, self.global_batch, per_example),
        # The loss itself (unless float16: scaled), with the model's own losses.
        scale_loss=lambda loss: self.updater.scale_loss(forward.with_model_losses(loss)),
        variables=self.model.trainable_variables, loss_scale=self.twin.loss_scale,
        stateful=bool(self.model.non_trainable_variables))
    result = self.method.gradients(step, x, y, inputs)
    return (result.gradients, forward.state, losses.num_correct(y, result.logits),
            tf.reduce_sum(losses.xent(y, result.logits)), result.x_adv, result.outputs)

  def _defended(self, x):
    """The network's inputs: x behind the defence, if any."""
    return x if self._defend is None else self._defend(x)

  @property
  def defended(self):
    """The model as evaluation sees it: behind the defence, if any (x -> logits)."""
    if self.defence is None:
      return self.model
    return defences.Defended(self.model, self.defence,
                             defences.backward_of(self.config, self.defence))

  def _attack_model(self, forward):
    """The x -> logits function the training-time attack differentiates."""
    if self.attack_batch_norm == 'inference':
      return lambda x: self.twin(self._defended(x), training=False)
    return lambda x: forward(x, update_state=self.attack_batch_norm == 'batch_update',
                             attack=True)

  @tf.function
  def train_step(self, batch):
    """Attack + update on one global batch; returns (adv correct, adv xent sum, x_adv)."""
    correct, xent_sum, x_adv = self.strategy.run(self._replica_step, args=batch)
    self.step.assign_add(1)
    total = lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
    return total(correct), total(xent_sum), x_adv

  @tf.function
  def natural_correct(self, batch):
    """Correct predictions on the natural batch, with batch norm as the attack sees it (the
    original's train-mode model), changing no state."""
    def replica_correct(x, y, *unused_indices):
      return losses.num_correct(
          y, self._attack_model(_StatefulForward(self.twin, self._defend))(x))
    correct = self.strategy.run(replica_correct, args=batch)
    return self.strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)

  # --- the loop -------------------------------------------------------------------------

  def restore_latest(self) -> bool:
    """Restores the newest readable checkpoint of model_dir, if any (warning about newer
    unreadable ones); returns whether there was one."""
    def restore(path):
      if tf1_checkpoints.is_tf1(path):
        return self.restore_tf1(path)
      checkpoint = self.checkpoint
      if hasattr(checkpoint, 'method') and not checkpoints.holds(path, 'method'):
        # Another method's checkpoint: its weights and optimizer, the memory from scratch.
        checkpoint = checkpoints.training_checkpoint(self.model, self.optimizer, self.step)
        self.log(f'{path} holds no {type(self.method).__name__} memory (another method '
                 'wrote it): every example starts afresh')
      checkpoints.restore(checkpoint, path, f'{self.model.name} training state')
      if self._constant_rate is not None:  # the config's rate, not the checkpoint's
        self.optimizer.learning_rate = self._constant_rate
      self.log(f'Resuming from {path} at step {int(self.step.numpy())}')
    path, _ = checkpoints.restore_newest_readable(self.config.model_dir, restore, self.log)
    return path is not None

  def restore_tf1(self, path) -> int:
    """Fine-tuning an original TF1 checkpoint: its weights (BN averages included) and step,
    and the optimizer slots that map onto ours."""
    step = checkpoints.restore_model(self.model, path, self.challenge.tf1_variables)
    self.step.assign(step)
    self.optimizer.iterations.assign(step)  # the learning-rate schedule's step
    slots = self.challenge.tf1_slots(self.optimizer, self.model)
    found = tf1_checkpoints.present(path, slots)
    tf1_checkpoints.load(path, found, 'optimizer state')
    self.log(f'Fine-tuning the original TF1 checkpoint {path} from step {step}: weights '
             f'restored, optimizer slots {len(found)} of {len(slots)}'
             + ('' if len(found) == len(slots) else ' (the others start at zero)'))
    return step

  def _input(self, train_split, start_step):
    """The distributed stream of training batches from start_step: every worker builds the
    same global batches (same seed) and keeps its replicas' rows."""
    global_batches = data.training_batches(train_split, self.global_batch, self.data_seed,
                                           start_step, augment=self.challenge.augment,
                                           with_index=self.method.needs_examples)

    def worker_share(context):
      rows = self.replica_batch * (context.num_replicas_in_sync // context.num_input_pipelines)
      return data.replica_batches(global_batches, context.input_pipeline_id * rows, rows,
                                  self.replica_batch)
    return iter(self.strategy.distribute_datasets_from_function(worker_share))

  def _require_same_network(self):
    """Training on from model_dir's checkpoints needs the network they hold, which the
    config.json saved beside them names (else the restore fails on missing variables)."""
    model_dir = self.config.model_dir
    if not checkpoints.latest(model_dir):
      return
    trained = model_files.architecture_config(self.challenge, self.config, model_dir)
    saved = os.path.join(model_dir, 'config.json')
    for key in self.challenge.architecture_keys:
      theirs, ours = (json.dumps(getattr(c, key)) for c in (trained, self.config))
      if theirs != ours:
        raise ChallengeError(f'{saved} says it was trained with "{key}": {theirs}, not {ours}: '
                             f'pass --config {saved}, or train into another --model_dir')
    # A thermometer network takes its codes: its first layer has C·levels channels.
    channels = [defences.input_channels(c, self.challenge.image_shape[-1])
                for c in (trained, self.config)]
    if channels[0] != channels[1]:
      raise ChallengeError(f'{saved} says its network takes {channels[0]} channels per pixel '
                           f'(defence {trained.defence}), this config {channels[1]} (defence '
                           f'{self.config.defence}): pass --config {saved}, or train into '
                           'another --model_dir')

  def _check_workers_agree(self, num_train):
    """Every worker must resume from the same step with the same settings and data, or
    they would train different models while exchanging gradients."""
    if distribute.num_workers(self.strategy) == 1:
      return  # one process agrees with itself
    settings = {key.name: self.config[key.name] for key in self.challenge.config_keys
                if not key.is_path}  # paths may differ from host to host
    fingerprint = zlib.crc32(json.dumps(settings, sort_keys=True).encode())
    mine = tf.constant([[int(self.step.numpy()), fingerprint, num_train]], tf.int64)
    gathered = tf.function(lambda: self.strategy.gather(
        self.strategy.run(lambda: tf.identity(mine)), axis=0))().numpy()
    per_worker = self.strategy.num_replicas_in_sync // distribute.num_workers(self.strategy)
    steps, prints, sizes = gathered[::per_worker].T  # one row per worker, in worker order
    if len(set(steps)) > 1:
      raise ChallengeError(
          'the workers would resume from different steps (' + ', '.join(
              f'worker {i}: {step}' for i, step in enumerate(steps))
          + f"): every host must see the chief's model_dir {self.config.model_dir} (shared "
          'storage, the same path or the same files), and only one training run may use it')
    if len(set(prints)) > 1:
      raise ChallengeError('the workers were given different configs: run train.py with the '
                           'same config.json and flags on every host (only paths may differ)')
    if len(set(sizes)) > 1:
      raise ChallengeError('the workers loaded different training sets (' + ', '.join(
          f'worker {i}: {n} examples' for i, n in enumerate(sizes)) + '): give every host '
          'the same data')

  def save(self, manager, step):
    """Saves through `manager` (every worker must take part); only the chief keeps it."""
    checkpoints.save(manager, step)
    if not self.chief:  # saved only because every worker takes part; nothing is kept
      for name in os.listdir(manager.directory):
        path = os.path.join(manager.directory, name)
        if os.path.isfile(path):
          os.remove(path)

  def run(self) -> int:
    """Trains until max_num_training_steps; returns the final step. The chief holds
    model_dir's lock meanwhile: a second train.py on it is refused (files.exclusive_lock)."""
    config = self.config
    held = contextlib.ExitStack()
    if self.chief:
      files.check_output(config.model_dir, 'model_dir', directory=True)
      files.make_directory(config.model_dir, 'model_dir')
      held.enter_context(files.exclusive_lock(config.model_dir, 'model_dir', 'train.py'))
      # What killed runs left half-written (no other writer can be at work now).
      for directory in (config.model_dir, os.path.join(config.model_dir, guard.BEST_DIR)):
        checkpoints.remove_partial(directory)
      checkpoint_dir = config.model_dir
    else:
      checkpoint_dir = tempfile.mkdtemp(prefix='madry-tf2-' + distribute.task_name(
          self.strategy).replace(' ', '') + '-')
      print(f'{distribute.task_name(self.strategy)}: training with the chief, which writes '
            f'{config.model_dir} and reports progress', flush=True)
    try:
      with held:
        return self._run(checkpoint_dir)
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as e:
      if distribute.num_workers(self.strategy) == 1:
        raise
      # A worker died or became unreachable: TF aborts the collectives of the others.
      cause = next((line.strip() for line in str(e).splitlines() if 'abort' in line.lower()),
                   type(e).__name__)
      raise ChallengeError(
          f'{distribute.task_name(self.strategy)} lost contact with the other workers '
          f'({cause}). Checkpoints in {config.model_dir} are intact: start every worker '
          'again, and they resume together from the latest one.') from None
    finally:
      if not self.chief:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)

  def _run(self, checkpoint_dir) -> int:
    config = self.config
    datasets = self.challenge.load_data(config)
    train, held_out = datasets.train, None
    if config.robustness_check_steps:
      train, held_out = guard.split_held_out(datasets, config.robustness_check_examples)
    method_state = self.method.state(len(train), self.strategy)  # MMA's per-example ε
    if method_state:
      self.checkpoint.method = tf.train.Checkpoint(**method_state)
    self.manager = checkpoints.manager(self.checkpoint, checkpoint_dir)
    self._require_same_network()
    resumed = self.restore_latest()
    self._check_workers_agree(len(train))
    start = int(self.step.numpy())
    last = config.max_num_training_steps
    if start >= last:
      self.log(f'{config.model_dir} is already trained to step {start} '
               f'(max_num_training_steps {last}); nothing to do')
      return start
    if self.chief:
      record_config(self.challenge, config, start, self.log)
      writer = tf.summary.create_file_writer(config.model_dir)
    else:
      writer = tf.summary.create_noop_writer()
    robustness = None
    if held_out is not None:
      robustness = guard.RobustnessGuard(self, config, held_out,
                                         self.challenge.attack_params(config), checkpoint_dir)
    batches = self._input(train, start)
    training_time, timed_steps, run_start = 0.0, 0, time.time()

    for ii in range(start, last):
      batch = next(batches)
      if ii % config.num_checkpoint_steps == 0 and not (resumed and ii == start):
        self.save(self.manager, ii)
      if robustness and ii and ii % config.robustness_check_steps == 0:
        robustness.check(ii, writer)
      output = ii % config.num_output_steps == 0
      if output:
        nat_acc = float(self.natural_correct(batch)) / self.global_batch

      began = time.perf_counter()
      adv_correct, adv_xent, x_adv = self.train_step(batch)
      adv_correct = int(adv_correct)  # waits for the step: the timing covers it
      training_time += time.perf_counter() - began
      timed_steps += 1
      adv_acc = adv_correct / self.global_batch

      if output:
        self.log(f'Step {ii}:    ({datetime.datetime.now()})')
        self.log(f'    training nat accuracy {nat_acc * 100:.4}%')
        self.log(f'    training adv accuracy {adv_acc * 100:.4}%')
        if ii != start:
          # Steps timed since the last output: num_output_steps, fewer after a resume.
          self.log(f'    {timed_steps * self.global_batch / training_time} '
                   'examples per second')
          done = ii - start
          left = (time.time() - run_start) / done * (last - ii)
          self.log(f'    progress: step {ii} of {last} ({100 * ii / last:.1f}%), '
                   f'about {datetime.timedelta(seconds=round(left))} left')
        training_time, timed_steps = 0.0, 0
      if ii % config.num_summary_steps == 0:
        xent_per_example = float(adv_xent) / self.global_batch
        with writer.as_default(step=ii):
          tf.summary.scalar('accuracy adv train', adv_acc)
          tf.summary.scalar('accuracy adv', adv_acc)
          tf.summary.scalar('xent adv train', xent_per_example)
          tf.summary.scalar('xent adv', xent_per_example)
          images = self.strategy.experimental_local_results(x_adv)[0]
          tf.summary.image('images adv train', self.challenge.summary_images(images),
                           max_outputs=3)
    self.save(self.manager, last)
    if robustness:
      robustness.check(last, writer)
    writer.close()
    self.log(f'Finished at step {last}; final checkpoint {self.manager.latest_checkpoint}')
    return last


HISTORY_KEY = '_history'  # in model_dir's config.json; a comment to the config loader


def _as_config_value(key, value):
  """A value read from a config.json as the config holds it (`true` -> "true", 1 -> 1.0)."""
  try:
    return check_value(key, value)
  except ChallengeError:
    return value


def record_config(challenge: Challenge, config: Config, start: int, log=print) -> None:
  """Writes the effective config to model_dir/config.json before training from `start`.

  Resuming with changed settings is allowed (a longer run, another rate, ...) but never
  silent, and the record of how the earlier steps were trained is kept: the settings that
  differ from the config.json written before (paths aside, which may differ between hosts)
  are printed in one warning line, and config.json keeps their earlier values under
  "_history": a list of {"steps": [first, last], "settings": {key: value}}, oldest first,
  each entry naming the values its steps were trained with where they differ from the next
  entry's (the newest: from the top-level keys). A key starting with "_" is a comment to the
  config loader, so the file still loads as a config."""
  path = os.path.join(config.model_dir, 'config.json')
  history = []
  if start > 0 and os.path.lexists(path):
    try:
      saved = json.loads(files.read_input(path, "model_dir's config.json", 1 << 20))
    except (ValueError, RecursionError):
      saved = None  # not JSON: nothing to compare with (it is rewritten below)
    if isinstance(saved, dict):
      earlier = saved.get(HISTORY_KEY)
      history = earlier if isinstance(earlier, list) else []
      changed = {key.name: saved[key.name] for key in challenge.config_keys
                 if not key.is_path and key.name in saved
                 and _as_config_value(key, saved[key.name]) != config[key.name]}
      if changed:
        try:
          first = int(history[-1]['steps'][1])
        except (IndexError, KeyError, TypeError, ValueError):
          first = 0
        history.append({'steps': [first, start], 'settings': changed})
        log(f'warning: resuming {config.model_dir} at step {start} with changed settings: '
            + ', '.join(f'{name} {json.dumps(value)} -> {json.dumps(config[name])}'
                        for name, value in changed.items())
            + f'; {path} keeps the earlier ones under "{HISTORY_KEY}"')
  text = config.to_json()
  if history:
    text = json.dumps({**config, HISTORY_KEY: history}, indent=2) + '\n'
  files.save_text(path, text, "model_dir's config.json")


def check_training_method(config: Config) -> None:
  """A method with its own search and another training attack, and the like, are errors,
  not silently ignored (common.methods.check)."""
  methods.check(methods.resolve(config))


def train(challenge: Challenge, config: Config, strategy=None, log=print,
          announce=False) -> int:
  """Trains to max_num_training_steps; `announce`: the chief first says what runs where."""
  trainer = Trainer(challenge, config, strategy, log)
  if announce:
    trainer.log(runtime.describe(trainer.strategy, config.precision, trainer.jit_compile,
                                 config.deterministic))
  return trainer.run()
