"""MNIST: our PGD-40 and training step against a raw-`tf.nn` reference, in one process.

The reference is the original code's structure in TF2: the same network written with
tf.nn ops on raw variables, one compiled input-gradient step called k times with the
projection between calls (the original ran k session calls), and for training a compiled
Adam update (tf.raw_ops.ResourceApplyAdam, TF1's AdamOptimizer kernel). Both use the same
weights and inputs; variants are interleaved, medians and ratios are printed, and the
outputs are compared. Run: python benchmarks/pgd_mnist.py [--repeats 10]
"""
import argparse
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import attack  # noqa: E402
from common.training import Trainer  # noqa: E402
from mnist_challenge.challenge import MNIST  # noqa: E402
from timing import interleaved, machine  # noqa: E402


class RawReference:
  """The MNIST network and its training in raw TF ops, sharing the Keras model's weights."""

  def __init__(self, model):
    self.w = [tf.Variable(v) for v in model.trainable_variables]
    self.slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in self.w]
    self.t = tf.Variable(0.0)

  def logits(self, x):
    w1, b1, w2, b2, w3, b3, w4, b4 = self.w
    h = tf.reshape(x, [-1, 28, 28, 1])
    h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(h, w1, 1, 'SAME') + b1), 2, 2, 'SAME')
    h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(h, w2, 1, 'SAME') + b2), 2, 2, 'SAME')
    h = tf.nn.relu(tf.matmul(tf.reshape(h, [-1, 3136]), w3) + b3)
    return tf.matmul(h, w4) + b4

  def xent_sum(self, x, y):
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, self.logits(x)))

  @tf.function
  def attack_step(self, x, x_nat, y, epsilon, step_size):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = self.xent_sum(x, y)
    x = x + step_size * tf.sign(tape.gradient(loss, x))
    return tf.clip_by_value(tf.clip_by_value(x, x_nat - epsilon, x_nat + epsilon), 0.0, 1.0)

  def pgd(self, x_nat, y, params):
    x = x_nat
    for _ in range(params.num_steps):
      x = self.attack_step(x, x_nat, y, params.epsilon, params.step_size)
    return x

  @tf.function
  def update(self, x, y):
    with tf.GradientTape() as tape:
      loss = self.xent_sum(x, y)
    grads = tape.gradient(loss, self.w)
    self.t.assign_add(1.0)
    b1, b2 = 0.9, 0.999
    for var, (m, v), g in zip(self.w, self.slots, grads):
      tf.raw_ops.ResourceApplyAdam(
          var=var.handle, m=m.handle, v=v.handle, beta1_power=b1 ** self.t,
          beta2_power=b2 ** self.t, lr=1e-4, beta1=b1, beta2=b2, epsilon=1e-8, grad=g)
    return loss

  def train_step(self, x, y, params):
    x_adv = self.pgd(x, y, params)
    self.update(x_adv, y)
    return x_adv


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--attack_batch', type=int, default=200)
  args = parser.parse_args()
  print(machine())
  rng = np.random.default_rng(0)
  x = tf.constant(rng.uniform(0, 1, (args.attack_batch, 784)).astype(np.float32))
  y = tf.constant(rng.integers(0, 10, args.attack_batch).astype(np.int64))
  config = MNIST.load_config(overrides={'random_start': False, 'model_dir': '/nonexistent'})
  params = MNIST.attack_params(config)  # ε 0.3, k 40, a 0.01; no random start: comparable

  # --- PGD-40 on a batch of 200 -------------------------------------------------------
  trainer = Trainer(MNIST, config, log=lambda *a, **k: None)
  reference = RawReference(trainer.model)
  ours_pgd = attack.make_pgd(lambda v: trainer.model(v, training=False), params)
  a, b = ours_pgd(x, y).numpy(), reference.pgd(x, y, params).numpy()
  print(f'PGD-40 outputs: max |ours - reference| = {np.abs(a - b).max():.2e}, '
        f'{np.mean(a == b) * 100:.3f}% of pixels identical')
  medians = interleaved({'ours': lambda: ours_pgd(x, y),
                         'reference': lambda: reference.pgd(x, y, params)}, args.repeats)
  print(f'PGD-40, batch {args.attack_batch}: ours {args.attack_batch / medians["ours"]:.0f} '
        f'examples/s, reference {args.attack_batch / medians["reference"]:.0f} examples/s, '
        f'time ratio ours/reference = {medians["ours"] / medians["reference"]:.3f} '
        f'(median of {args.repeats} interleaved runs)')

  # --- one training step: PGD-40 + Adam update on a batch of 50 -------------------------
  xb, yb = x[:config.training_batch_size], y[:config.training_batch_size]
  trainer.train_step((xb, yb))
  reference.train_step(xb, yb, params)
  drift = max(float(np.abs(u.numpy() - v.numpy()).max())
              for u, v in zip(trainer.model.trainable_variables, reference.w))
  print(f'training step: weights after one step from the same start differ by at most '
        f'{drift:.2e}')
  medians = interleaved({'ours': lambda: trainer.train_step((xb, yb)),
                         'reference': lambda: reference.train_step(xb, yb, params)},
                        args.repeats)
  batch = config.training_batch_size
  print(f'training step (PGD-40 + Adam), batch {batch}: ours {batch / medians["ours"]:.0f} '
        f'examples/s, reference {batch / medians["reference"]:.0f} examples/s, '
        f'time ratio ours/reference = {medians["ours"] / medians["reference"]:.3f}')


if __name__ == '__main__':
  main()
