"""The original challenges' networks as TF1 graphs (tf.compat.v1), for tests: variables with
the original names and shapes (random values), saved by tf.compat.v1.train.Saver exactly as
the original train.py did, a reference forward pass and input gradient in that graph, and the
original's training step."""
import math
import os

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1


def summed_xent(labels, logits):
  """The MNIST original's training loss and both originals' attack loss (`model.xent`): the
  SUM of the batch's cross-entropies."""
  return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                                      logits=logits))


def cifar_training_loss(weight_decay):
  """The CIFAR-10 original train.py's total_loss: mean xent + weight_decay · Σ l2_loss over
  the trainable variables named DW (model._decay)."""
  def loss(labels, logits):
    mean_xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits))
    decay = tf.add_n([tf.nn.l2_loss(v) for v in v1.trainable_variables()
                      if v.op.name.find('DW') > 0])
    return mean_xent + weight_decay * decay
  return loss


class Original:
  """A TF1 graph and session holding one original network; `logits(x)` and `gradient(x, y)`
  run the reference, `train_steps` the original's training step (`make_optimizer(global_step)`
  minimising `loss(labels, logits)`); `save(model_dir)` writes a TF1 checkpoint, `restore`
  reads one."""

  def __init__(self, build, input_shape, seed, make_optimizer=None, loss=summed_xent):
    self.graph = tf.Graph()
    with self.graph.as_default():
      v1.set_random_seed(seed)
      self.x = v1.placeholder(tf.float32, (None,) + tuple(input_shape))
      self.y = v1.placeholder(tf.int64, (None,))
      self.pre_softmax = build(self.x)
      self.grad = v1.gradients(summed_xent(self.y, self.pre_softmax), self.x)[0]
      self.global_step = v1.train.get_or_create_global_step()
      self.optimizer, self.train = None, None
      if make_optimizer:
        self.optimizer = make_optimizer(self.global_step)
        self.train = self.optimizer.minimize(loss(self.y, self.pre_softmax),
                                             global_step=self.global_step)
      self.saver = v1.train.Saver(max_to_keep=3)
      self.session = v1.Session(graph=self.graph)
      self.session.run(v1.global_variables_initializer())

  def randomise(self, rng):
    """Random weights and batch norm averages (variances positive), so that a wrong mapping
    cannot go unnoticed."""
    with self.graph.as_default():
      for variable in v1.global_variables():
        name, shape = variable.op.name, variable.shape.as_list()
        if name.endswith('moving_variance'):
          variable.load(rng.uniform(0.5, 2.0, shape).astype(np.float32), self.session)
        elif variable in v1.trainable_variables() or name.endswith('moving_mean'):
          variable.load(rng.normal(0, 0.1, shape).astype(np.float32), self.session)

  def train_steps(self, x, y, steps):
    for _ in range(steps):
      self.session.run(self.train, {self.x: x, self.y: y})

  def start_at(self, step):
    """Puts the optimizer state where TF1 has it after `step` updates: the global step, and
    Adam's bias-correction powers, which TF1 keeps as variables (`beta1_power`,
    `beta2_power`) that start at β and are multiplied by β after each update, so hold
    β^(step + 1). (Keras derives them from the step: the two must agree.)"""
    with self.graph.as_default():
      self.global_step.load(step, self.session)
      for variable in v1.global_variables():
        if variable.op.name in ('beta1_power', 'beta2_power'):
          beta = float(self.session.run(variable.initial_value))
          variable.load(np.float32(beta ** (step + 1)), self.session)

  def save(self, model_dir):
    os.makedirs(model_dir, exist_ok=True)
    with self.graph.as_default():
      return self.saver.save(self.session, os.path.join(model_dir, 'checkpoint'),
                             global_step=self.global_step)

  def restore(self, path):
    """Every variable of the graph (weights, slots, step) from a TF1 checkpoint."""
    with self.graph.as_default():
      self.saver.restore(self.session, path)

  def logits(self, x):
    return self.session.run(self.pre_softmax, {self.x: x})

  def gradient(self, x, y):
    return self.session.run(self.grad, {self.x: x, self.y: y})

  def pgd(self, x_nat, y, epsilon, num_steps, step_size, clip_max):
    """The original LinfPGDAttack.perturb without random start, in numpy."""
    x = np.copy(x_nat)
    for _ in range(num_steps):
      x = x + step_size * np.sign(self.gradient(x, y))
      x = np.clip(np.clip(x, x_nat - epsilon, x_nat + epsilon), 0, clip_max)
    return x

  def variables(self):
    with self.graph.as_default():
      return {v.op.name: self.session.run(v) for v in v1.global_variables()}


def mnist_network(x):
  """mnist_challenge/model.py: eight unnamed tf.Variables."""
  def weight(shape):
    return tf.Variable(v1.truncated_normal(shape, stddev=0.1))

  def bias(shape):
    return tf.Variable(tf.constant(0.1, shape=shape))

  image = tf.reshape(x, [-1, 28, 28, 1])
  w1, b1 = weight([5, 5, 1, 32]), bias([32])
  h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(image, w1, 1, 'SAME') + b1), 2, 2, 'SAME')
  w2, b2 = weight([5, 5, 32, 64]), bias([64])
  h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(h, w2, 1, 'SAME') + b2), 2, 2, 'SAME')
  w3, b3 = weight([7 * 7 * 64, 1024]), bias([1024])
  h = tf.nn.relu(tf.matmul(tf.reshape(h, [-1, 7 * 7 * 64]), w3) + b3)
  w4, b4 = weight([1024, 10]), bias([10])
  return tf.matmul(h, w4) + b4


def cifar_network(filters, training=False):
  """cifar10_challenge/model.py, with tf.contrib.layers.batch_norm's variable names (a
  `BatchNorm` scope). In eval mode batch norm uses its moving averages. In train mode
  (`training`) it uses the batch statistics (the fused kernel, as contrib's batch_norm
  chose for 4-D inputs) and, as the original's `updates_collections=None` did, updates the
  moving averages (decay 0.9) in place on every forward pass: a training step updates them
  once."""
  def conv(name, x, in_filters, out_filters, stride):
    with v1.variable_scope(name):
      n = 3 * 3 * out_filters
      kernel = v1.get_variable('DW', [3, 3, in_filters, out_filters], tf.float32,
                               v1.random_normal_initializer(stddev=math.sqrt(2.0 / n)))
      return tf.nn.conv2d(x, kernel, [1, stride, stride, 1], 'SAME')

  def batch_norm(x):
    with v1.variable_scope('BatchNorm'):
      channels = x.shape[-1]
      beta = v1.get_variable('beta', [channels], initializer=v1.zeros_initializer())
      gamma = v1.get_variable('gamma', [channels], initializer=v1.ones_initializer())
      mean = v1.get_variable('moving_mean', [channels], initializer=v1.zeros_initializer(),
                             trainable=False)
      variance = v1.get_variable('moving_variance', [channels],
                                 initializer=v1.ones_initializer(), trainable=False)
      if not training:
        return tf.nn.batch_normalization(x, mean, variance, beta, gamma, 0.001)
      # The batch variance the fused kernel returns is the unbiased one, as contrib fed to
      # the moving variance; assign_moving_average(decay 0.9, zero_debias=False).
      y, batch_mean, batch_variance = v1.nn.fused_batch_norm(x, gamma, beta, epsilon=0.001,
                                                             is_training=True)
      updates = [v1.assign_sub(mean, (mean - batch_mean) * 0.1),
                 v1.assign_sub(variance, (variance - batch_variance) * 0.1)]
      with tf.control_dependencies(updates):
        return tf.identity(y)

  def relu(x):
    return tf.where(x < 0.0, 0.1 * x, x)

  def residual(x, in_filters, out_filters, stride, activate_before_residual):
    if activate_before_residual:
      with v1.variable_scope('shared_activation'):
        x = relu(batch_norm(x))
        orig_x = x
    else:
      with v1.variable_scope('residual_only_activation'):
        orig_x = x
        x = relu(batch_norm(x))
    with v1.variable_scope('sub1'):
      x = conv('conv1', x, in_filters, out_filters, stride)
    with v1.variable_scope('sub2'):
      x = conv('conv2', relu(batch_norm(x)), out_filters, out_filters, 1)
    if in_filters != out_filters:
      orig_x = tf.nn.avg_pool2d(orig_x, stride, stride, 'VALID')
      pad = (out_filters - in_filters) // 2
      orig_x = tf.pad(orig_x, [[0, 0], [0, 0], [0, 0], [pad, pad]])
    return x + orig_x

  def build(x):
    with v1.variable_scope('input'):
      x = conv('init_conv', tf.map_fn(tf.image.per_image_standardization, x), 3, 16, 1)
    strides, activate = [1, 2, 2], [True, False, False]
    for stage in range(3):
      for unit in range(5):
        with v1.variable_scope(f'unit_{stage + 1}_{unit}'):
          first = unit == 0
          x = residual(x, filters[stage] if first else filters[stage + 1], filters[stage + 1],
                       strides[stage] if first else 1, first and activate[stage])
    with v1.variable_scope('unit_last'):
      x = tf.reduce_mean(relu(batch_norm(x)), [1, 2])
    with v1.variable_scope('logit'):
      w = v1.get_variable('DW', [filters[3], 10], initializer=v1.glorot_uniform_initializer())
      b = v1.get_variable('biases', [10], initializer=v1.constant_initializer())
      return tf.matmul(x, w) + b

  return build
