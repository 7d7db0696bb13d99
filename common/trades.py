"""TRADES (Zhang et al., ICML 2019, "Theoretically principled trade-off between robustness and
accuracy"), a training objective of the shared trainer (`training_loss: "trades"`), as the
authors' code computes it (yaodongyu/TRADES, trades.py; the specification, written anew):

* The inner search (`search`): x' from x + 0.001·N(0, 1) (0.001 of the pixel range: the
  authors' images are in [0, 1]), `num_steps` sign steps of `step_size` on the summed
  KL(softmax(f(x)) ‖ softmax(f(x'))), each projected onto the ε-ball, then the pixel range
  (PGD's three operations, `common.attacks.pgd`), f(x) held fixed; the model in inference
  mode throughout (the authors call `model.eval()`: batch norm uses its moving averages and
  updates nothing); x' is clipped to the pixel range at the end (with no step, too).
* The objective (`per_example_loss`), per example: CE(f(x), y) + β·KL(softmax(f(x)) ‖
  softmax(f(x'))), both logits from the training-mode model, the gradient flowing through
  f(x) in both terms and through f(x'); logits and losses in float32 under every precision.
  The authors average it over the batch; the trainer reduces it as the challenge reduces its
  training loss (`Challenge.make_training_loss`: MNIST sums over the batch, as the original
  sums its cross-entropy, which under Adam gives the mean's updates up to Adam's ε; CIFAR-10
  takes the mean over the global batch, plus the weight decay).
* β: `trades_beta`, by default the authors' for the data set (their training scripts: MNIST
  1, CIFAR-10 6); 0 is natural training.
"""
import tensorflow as tf

from common import losses, training_methods
from common.attacks import pgd

NOISE = 0.001  # the start's standard deviation, as a fraction of the pixel range


def kl(natural_logits, logits):
  """KL(softmax(natural_logits) ‖ softmax(logits)) per example, in float32."""
  natural = tf.nn.log_softmax(tf.cast(natural_logits, tf.float32))
  other = tf.nn.log_softmax(tf.cast(logits, tf.float32))
  return tf.reduce_sum(tf.exp(natural) * (natural - other), axis=-1)


def start(x, pixel_max, seed, rows):
  """x + 0.001·pixel_max·N(0, 1), not clipped (as the authors'); the noise is rows
  (first, total) of a draw for the whole global batch from `seed`, so a replica's examples
  start where they would on one device. Draw outside XLA."""
  return x + pgd.rows_of_whole_batch(lambda whole: tf.random.stateless_normal(
      whole, seed, stddev=NOISE * pixel_max, dtype=x.dtype), x, rows)


def search(model_fn, x, params: pgd.PGDParams, start_point, loss_scale=None):
  """x' maximising the KL from f(x) (model_fn: inference mode) by `params`' steps from
  `start_point`; in the ε-ball and the pixel range."""
  natural = tf.stop_gradient(tf.cast(model_fn(x), tf.float32))
  x_adv = pgd.pgd(model_fn, x, natural, params, loss_fn=kl, loss_scale=loss_scale,
                  start=start_point)
  return tf.clip_by_value(x_adv, params.clip_min, params.clip_max)


def per_example_loss(labels, natural_logits, adversarial_logits, beta):
  """CE(f(x), y) + β·KL(softmax(f(x)) ‖ softmax(f(x'))) per example."""
  return losses.xent(labels, natural_logits) + beta * kl(natural_logits, adversarial_logits)


class Trades(training_methods.Method):
  """TRADES on the shared trainer: the search in inference mode, then the objective on the
  natural batch (its pass updates batch norm's averages) and the search's (it does not)."""

  def __init__(self, params: pgd.PGDParams, beta: float, pixel_max: float):
    self.params, self.beta, self.pixel_max = params, beta, pixel_max

  def prepare(self, x, seed, rows, examples):
    return (start(x, self.pixel_max, seed, rows),)

  def gradients(self, step, x, y, inputs):
    x_adv = search(step.inference, x, self.params, inputs[0], loss_scale=step.loss_scale)

    def loss():
      natural = step.forward(x, update_state=True)
      logits = step.forward(x_adv, update_state=False)
      return step.loss(y, natural, per_example_loss(y, natural, logits, self.beta)), logits
    gradients, logits = training_methods.descend(step, loss)
    return training_methods.Result(gradients, logits, x_adv)
