"""The two challenges' networks and training steps written with raw TF ops: the reference our
Keras code is timed against.

Each reference copies a Keras model's weights into plain tf.Variables and follows the
original code's structure in TF2: one compiled input-gradient step called k times with
the projection between calls (the original ran k session calls), then one compiled
update with TF1's own optimizer kernels (ResourceApplyAdam, ResourceApplyMomentum).
"""
import tensorflow as tf

from cifar10_challenge import model as cifar_model


class _Reference:
  """The shared PGD and training-step structure; subclasses define the network."""

  def xent_sum(self, x, y, training):
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        y, self.logits(x, training)))

  @tf.function
  def attack_step(self, x, x_nat, y, epsilon, step_size, clip_max, training):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = self.xent_sum(x, y, training)
    x = x + step_size * tf.sign(tape.gradient(loss, x))
    return tf.clip_by_value(tf.clip_by_value(x, x_nat - epsilon, x_nat + epsilon), 0.0,
                            clip_max)

  def pgd(self, x_nat, y, params, training=False):
    x = x_nat
    for _ in range(params.num_steps):
      x = self.attack_step(x, x_nat, y, params.epsilon, params.step_size, params.clip_max,
                           training)
    return x

  def train_step(self, x, y, params):
    x_adv = self.pgd(x, y, params, training=self.attack_in_train_mode)
    self.update(x_adv, y)
    return x_adv


class RawMNIST(_Reference):
  """The MNIST network (tf.nn ops) and the original's Adam update of the summed xent."""
  attack_in_train_mode = False

  def __init__(self, model):
    self.w = [tf.Variable(v) for v in model.trainable_variables]
    self.slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in self.w]
    self.t = tf.Variable(0.0)

  def logits(self, x, training=False):
    del training
    w1, b1, w2, b2, w3, b3, w4, b4 = self.w
    h = tf.reshape(x, [-1, 28, 28, 1])
    h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(h, w1, 1, 'SAME') + b1), 2, 2, 'SAME')
    h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(h, w2, 1, 'SAME') + b2), 2, 2, 'SAME')
    h = tf.nn.relu(tf.matmul(tf.reshape(h, [-1, 3136]), w3) + b3)
    return tf.matmul(h, w4) + b4

  @tf.function
  def update(self, x, y):
    with tf.GradientTape() as tape:
      loss = self.xent_sum(x, y, True)
    grads = tape.gradient(loss, self.w)
    self.t.assign_add(1.0)
    b1, b2 = 0.9, 0.999
    for var, (m, v), g in zip(self.w, self.slots, grads):
      tf.raw_ops.ResourceApplyAdam(
          var=var.handle, m=m.handle, v=v.handle, beta1_power=b1 ** self.t,
          beta2_power=b2 ** self.t, lr=1e-4, beta1=b1, beta2=b2, epsilon=1e-8, grad=g)
    return loss


class RawCIFAR(_Reference):
  """The CIFAR-10 ResNet in tf.nn ops with fused batch norm (as the original's
  tf.contrib batch_norm), and its momentum update of mean xent + weight decay, moving
  averages updated once per step. The attack uses batch statistics without updating the
  averages, as our training attack does by default."""
  attack_in_train_mode = True

  def __init__(self, model, config):
    self.filters = cifar_model.check_filters(config.filters)
    self.weight_decay, self.momentum = config.weight_decay, config.momentum
    self.learning_rate = config.step_size_schedule[0][1]
    self.layers = {layer.name: [tf.Variable(w) for w in layer.weights]
                   for layer in model.layers if layer.weights}
    self.trainable = [v for layer in model.layers if layer.weights
                      for v, w in zip(self.layers[layer.name], layer.weights) if w.trainable]
    self.kernels = [self.layers[name][0] for name in self.layers
                    if name == 'init_conv' or name == 'logit' or 'conv' in name]
    self.accumulators = [tf.Variable(tf.zeros_like(v)) for v in self.trainable]

  def _batch_norm(self, x, name, training, statistics):
    gamma, beta, moving_mean, moving_variance = self.layers[name]
    if training:
      y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
          x=x, scale=gamma, offset=beta, mean=tf.constant([], tf.float32),
          variance=tf.constant([], tf.float32), epsilon=0.001, is_training=True)
      statistics.append((moving_mean, moving_variance, mean, variance))
      return y
    y, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=moving_mean, variance=moving_variance,
        epsilon=0.001, is_training=False)
    return y

  def logits(self, x, training=False, statistics=None):
    statistics = [] if statistics is None else statistics
    conv = lambda h, name, stride: tf.nn.conv2d(h, self.layers[name][0], stride, 'SAME')
    act = lambda h, name: tf.nn.leaky_relu(self._batch_norm(h, name, training, statistics),
                                           cifar_model.LEAKINESS)
    h = conv(tf.image.per_image_standardization(x), 'init_conv', 1)
    for stage in range(3):
      for unit in range(cifar_model.UNITS_PER_STAGE):
        name, first = f'unit_{stage + 1}_{unit}', unit == 0
        in_filters = self.filters[stage] if first else self.filters[stage + 1]
        out_filters = self.filters[stage + 1]
        stride = cifar_model.STRIDES[stage] if first else 1
        activated = act(h, f'{name}_init_bn')
        shortcut = (activated if first and cifar_model.ACTIVATE_BEFORE_RESIDUAL[stage]
                    else h)
        y = conv(act(conv(activated, f'{name}_conv1', stride), f'{name}_bn2'),
                 f'{name}_conv2', 1)
        if in_filters != out_filters:
          pad = (out_filters - in_filters) // 2
          shortcut = tf.pad(tf.nn.avg_pool2d(shortcut, stride, stride, 'VALID'),
                            [[0, 0], [0, 0], [0, 0], [pad, pad]])
        h = y + shortcut
    h = tf.reduce_mean(act(h, 'final_bn'), axis=[1, 2])
    kernel, bias = self.layers['logit']
    return tf.matmul(h, kernel) + bias

  @tf.function
  def update(self, x, y):
    statistics = []
    with tf.GradientTape() as tape:
      xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          y, self.logits(x, True, statistics)))
      loss = xent + self.weight_decay * tf.add_n([tf.nn.l2_loss(k) for k in self.kernels])
    grads = tape.gradient(loss, self.trainable)
    for var, accumulator, g in zip(self.trainable, self.accumulators, grads):
      tf.raw_ops.ResourceApplyMomentum(var=var.handle, accum=accumulator.handle,
                                       lr=self.learning_rate, grad=g, momentum=self.momentum)
    for moving_mean, moving_variance, mean, variance in statistics:
      moving_mean.assign(0.9 * moving_mean + 0.1 * mean)
      moving_variance.assign(0.9 * moving_variance + 0.1 * variance)
    return loss
