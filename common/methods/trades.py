"""TRADES (Zhang et al., ICML 2019, "Theoretically principled trade-off between robustness and
accuracy"), a training method of the shared trainer (`training_method: "trades"`), as the
authors' code computes it (yaodongyu/TRADES, trades.py; the specification, written anew):

* The inner search (`search`): x' from x + 0.001·N(0, 1) (0.001 of the pixel range: the
  authors' images are in [0, 1]), `num_steps` sign steps of `step_size` on the summed
  KL(softmax(f(x)) ‖ softmax(f(x'))), each projected onto the ε-ball, then the pixel range
  (PGD's three operations, `common.attacks.pgd`), f(x) held fixed; the model in inference
  mode throughout (the authors call `model.eval()`: batch norm uses its moving averages and
  updates nothing); x' is clipped to the pixel range at the end (with no step, too).
* The objective (`per_example_loss`), per example: CE(f₁(x), y) + β·KL(softmax(f₃(x)) ‖
  softmax(f₂(x'))), from the authors' three passes of the training-mode model, in their
  order: f₁ over x (the cross-entropy), f₂ over x', f₃ over x again (the KL's target); each
  pass updates batch norm's averages (so they see x, x', x) and draws its own dropout mask;
  the gradient flows through all three; logits and losses in float32 under every precision.
  A network whose training mode holds no state (no batch norm, no dropout: Madry's CNN)
  computes f₁(x) = f₃(x) exactly, so there one pass over x serves both terms (the same
  function, one pass fewer). `trades_passes: "one"` (not the authors': what this project
  computed before it followed their three passes) uses one pass over x for both terms on every network,
  and the pass over x' leaves the state as the pass over x left it (batch norm's averages
  see x alone).
  The authors average it over the batch; the trainer reduces it as the challenge reduces its
  training loss (`Challenge.make_training_loss`: MNIST sums over the batch, as the original
  sums its cross-entropy, which under Adam gives the mean's updates up to Adam's ε; CIFAR-10
  takes the mean over the global batch, plus the weight decay).
* β: `trades_beta`, by default the authors' for the data set (their training scripts: MNIST
  1, CIFAR-10 6); 0 is natural training.
"""
import tensorflow as tf

from common import losses
from common.attacks import pgd
from common.config import Key
from common.methods import base

NAME = 'trades'
SUMMARY = ('TRADES (Zhang et al. 2019): cross-entropy on the natural examples + trades_beta x '
           'KL(f(x) || f(x\')), x\' maximising the KL by training_num_steps sign steps of '
           'training_step_size (0: the configured PGD\'s) from x + 0.001 N(0, 1)')
OWN_SEARCH = 'training_num_steps sign steps of training_step_size on the KL'
BETA = {'mnist': 1.0, 'cifar10': 6.0}  # the authors' training scripts
PASSES = ('three', 'one')


def keys(challenge_name):
  beta = BETA[challenge_name]
  return (
      Key('trades_beta', float, beta, minimum=0,
          help=f'TRADES\'s β (the authors\': {beta:g} for this data set); new'),
      Key('trades_passes', str, 'three', choices=PASSES,
          help='TRADES\'s training-mode passes: "three" (the authors\': x for the '
               'cross-entropy, x\', x again for the KL; batch norm and dropout see each) or '
               '"one" (one pass over x serves both terms, and batch norm\'s averages see x alone); new'),
  )


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


def per_example_loss(labels, natural_logits, adversarial_logits, beta, target_logits=None):
  """CE(f(x), y) + β·KL(softmax(f(x)) ‖ softmax(f(x'))) per example; the KL's f(x) is
  `target_logits` where given (the authors' third pass), else `natural_logits`."""
  target = natural_logits if target_logits is None else target_logits
  return losses.xent(labels, natural_logits) + beta * kl(target, adversarial_logits)


class Trades(base.Method):
  """TRADES on the shared trainer: the search in inference mode, then the objective from the
  training-mode passes (see the module docstring)."""

  def __init__(self, params: pgd.PGDParams, beta: float, pixel_max: float,
               passes: str = 'three'):
    self.params, self.beta, self.pixel_max, self.passes = params, beta, pixel_max, passes

  def prepare(self, x, seed, rows, examples):
    return (start(x, self.pixel_max, seed, rows),)

  def gradients(self, step, x, y, inputs):
    x_adv = search(step.inference, x, self.params, inputs[0], loss_scale=step.loss_scale)

    three = self.passes == 'three'

    def loss():
      natural = step.forward(x, update_state=True)
      logits = step.forward(x_adv, update_state=three)
      target = step.forward(x, update_state=True) if three and step.stateful else natural
      return step.loss(y, natural, per_example_loss(y, natural, logits, self.beta,
                                                    target)), logits
    gradients, logits = base.descend(step, loss)
    return base.Result(gradients, logits, x_adv)


def build(challenge, config, params: pgd.PGDParams) -> Trades:
  # training_attack is "pgd" (methods.check): the configured PGD's steps, as PGD training's.
  return Trades(base.configured_attack(config, params), config.trades_beta, challenge.pixel_max,
                config.trades_passes)
