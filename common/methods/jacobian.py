"""Jacobian regularisation (Hoffman, Roberts & Yaida 2019, "Robust learning with Jacobian
regularization"), a training method of the shared trainer (`training_method: "jacobian"`),
as the authors' code computes it (facebookresearch/jacobian_regularizer: jacobian.py's
JacobianReg, examples/mnist.py; the specification, written anew):

* The regulariser, from the training-mode pass that gives the cross-entropy's logits f(u)
  (u the image on [0, 1]: x / pixel_max), C classes, n = `jacobian_projections` (the
  authors' 1): n projections v ~ N(0, I_C) per example, each scaled to unit length over the
  classes (their draw, then normalisation per row); R = ½ · C / n · Σ_k ‖v_kᵀ ∂f/∂u‖² per
  example, an unbiased estimate of ½ ‖J‖²_F (the authors' J2 / 2 is its mean over the
  batch). `jacobian_projections: 0` is their exact mode (n = -1): the C unit vectors, R =
  ½ ‖J‖²_F. The product vᵀJ is the gradient of Σ v · f with respect to the batch's input,
  recorded for a second derivative (their torch.autograd.grad with create_graph); with
  batch norm in training mode it carries the batch's coupling, as theirs does.
* The objective, per example: CE(f(u), y) + λ R (λ = `jacobian_lambda`); the authors
  average it over the batch (loss_super + lambda_JR · R); the trainer reduces it as the
  challenge reduces its loss (MNIST: the sum, CIFAR-10: the mean over the global batch plus
  the weight decay). Logits, R and the losses in float32 under every precision.
* λ: the authors' MNIST example trains with λ = 0.1 on inputs standardised by MNIST's
  standard deviation 0.3081, where this project's networks read [0, 1] pixels; the same
  objective here is λ = 0.1 · 0.3081² ≈ 0.0095 (`DEFAULT_LAMBDA`, both challenges: the
  authors publish no CIFAR-10 setting).
* Adversarial training (`jacobian_adversarial_fraction`, 0: the authors' example, which has
  none): the global batch's first round(fraction · batch) examples are replaced by the
  configured training attack's (`training_attack`, as PGD training's), and both terms are
  computed on the mixed batch.
"""
import tensorflow as tf

from common import losses
from common.attacks import pgd
from common.config import Key
from common.methods import base

NAME = 'jacobian'
SUMMARY = ('Jacobian regularisation (Hoffman et al. 2019): cross-entropy + jacobian_lambda x '
           'the random-projection estimate of ½ ||∂f/∂x||²_F (jacobian_projections), on '
           'the natural batch or one mixed with the training attack\'s examples '
           '(jacobian_adversarial_fraction)')
STANDARD_DEVIATION = 0.3081  # of MNIST's pixels: the authors' standardisation
DEFAULT_LAMBDA = 0.1 * STANDARD_DEVIATION ** 2


def keys(challenge_name):
  del challenge_name
  return (
      Key('jacobian_lambda', float, DEFAULT_LAMBDA, minimum=0,
          help=f'Jacobian regularisation\'s λ, for the Jacobian of the image on [0, 1] (the '
               f'authors\' 0.1 on standardised MNIST: {DEFAULT_LAMBDA:.6g}); new'),
      Key('jacobian_projections', int, 1, minimum=0,
          help='Jacobian regularisation: random projections per example (the authors\' 1); '
               '0: the exact ||J||²_F from every class; new'),
      Key('jacobian_adversarial_fraction', float, 0.0, minimum=0, maximum=1,
          help='Jacobian regularisation: the fraction of each batch replaced by the '
               'training attack\'s examples (0: none, the authors\'); new'),
  )


def check(config):
  base.refuse_for_input_gradients(config)
  if not config.jacobian_adversarial_fraction:
    base.refuse_attack_settings(config, 'with jacobian_adversarial_fraction 0')


def projections(x, classes: int, count: int, seed, rows):
  """[count, batch, classes] directions: N(0, 1) rows (this replica's rows of the global
  batch's draw), each scaled to unit length; count 0: the classes' unit vectors."""
  if count == 0:
    return tf.tile(tf.eye(classes)[:, None, :], [1, tf.shape(x)[0], 1])
  # A seed of its own (the training attack's start is drawn from `seed` itself).
  seed = tf.random.experimental.stateless_fold_in(seed, 1)
  draw = pgd.rows_of_whole_batch(lambda whole: tf.random.stateless_normal(whole, seed),
                                 tf.zeros([tf.shape(x)[0], count, classes]), rows)
  draw = tf.transpose(draw, [1, 0, 2])
  return draw / tf.norm(draw, axis=-1, keepdims=True)


def regulariser(jacobian_products, classes: int, count: int):
  """½ · C / n · Σ_k ‖v_kᵀ J‖² per example (count 0: ½ Σ_c ‖e_cᵀ J‖² = ½ ‖J‖²_F)."""
  squares = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), [tf.shape(g)[0], -1]), axis=1)
                      for g in jacobian_products])
  return 0.5 * squares * (classes / count if count else 1.0)


class Jacobian(base.Method):
  """CE + λ R on the (possibly mixed) batch."""
  supports_xla = False  # base.refuse_for_input_gradients

  def __init__(self, params: pgd.PGDParams, lam: float, count: int, fraction: float,
               pixel_max: float, classes: int = 10):
    self.params, self.lam, self.count, self.fraction = params, lam, count, fraction
    self.pixel_max, self.classes = pixel_max, classes
    self.share = base.AdversarialShare(params, fraction)

  def prepare(self, x, seed, rows, examples):
    return (projections(x, self.classes, self.count, seed, rows),) + self.share.prepare(
        x, seed, rows)

  def gradients(self, step, x, y, inputs):
    directions = inputs[0]
    x = self.share.mix(step, x, y, inputs[1:])

    def loss():
      logits, products = base.input_gradients(
          step, x, [directions[k] for k in range(self.count or self.classes)], self.pixel_max)
      per_example = (losses.xent(y, logits)
                     + self.lam * regulariser(products, self.classes, self.count))
      return step.loss(y, logits, per_example), logits
    gradients, logits = base.descend(step, loss)
    return base.Result(gradients, logits, x)


def build(challenge, config, params: pgd.PGDParams) -> Jacobian:
  return Jacobian(base.configured_attack(config, params), config.jacobian_lambda,
                  config.jacobian_projections, config.jacobian_adversarial_fraction,
                  challenge.pixel_max)
