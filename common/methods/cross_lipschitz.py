"""Cross-Lipschitz regularisation (Hein & Andriushchenko, NIPS 2017, "Formal guarantees on
the robustness of a classifier against adversarial manipulation"), a training method of the
shared trainer (`training_method: "cross_lipschitz"`), as the authors' code computes it
(max-andr/cross-lipschitz: regularizers.py's `cross_lipschitz`, worker.py's loss; the
specification, written anew):

* The regulariser, per example, K classes, from the training-mode pass that gives the
  cross-entropy's logits f (the gradients with respect to the image on [0, 1], x /
  pixel_max, as the authors' images are): Ω = 1/K² · Σ_{l,m} ‖∇f_l − ∇f_m‖² (every ordered
  pair: twice the authors' sum over l < m, as they write it). Each ∇f_l is the gradient of
  Σ_batch f_l with respect to the batch's input (their tf.gradients(f[:, l], x)), recorded
  for a second derivative: with batch norm in training mode it carries the batch's coupling,
  as theirs does. (Their closed form for one hidden layer is the same number.)
* The objective, per example: CE(f, y) + λ Ω (λ = `cross_lipschitz_lambda`); the authors'
  mean over the batch of both (reduce_mean of the cross-entropy + lmbd · reg / n); the
  trainer reduces it as the challenge reduces its loss (MNIST: the sum, CIFAR-10: the mean
  over the global batch plus the weight decay). Logits, Ω and the losses in float32.
* λ: the authors' one MNIST command's 0.0001 (`--lmbd=0.0001`, with their adversarial
  training, on their one-hidden-layer network); their flag's default is 0.1.
* Adversarial training (`cross_lipschitz_adversarial_fraction`, 0: off; the authors'
  `--adv_train_flag` replaces half of each batch, alpha_adv 0.5): the global batch's first
  round(fraction · batch) examples are replaced by the configured training attack's
  (`training_attack`, as PGD training's), and both terms are computed on the mixed batch.
  The authors' own attack differs: a targeted ℓ2 step a random fraction of the way to the
  linearised boundary of the second most likely class, with no ε (their attacks.py); it is
  not built here.
"""
import tensorflow as tf

from common import losses
from common.attacks import pgd
from common.config import Key
from common.methods import base

NAME = 'cross_lipschitz'
SUMMARY = ('Cross-Lipschitz regularisation (Hein & Andriushchenko 2017): cross-entropy + '
           'cross_lipschitz_lambda x the mean over class pairs of ||∇f_l - ∇f_m||², on the '
           'natural batch or one mixed with the training attack\'s examples '
           '(cross_lipschitz_adversarial_fraction)')
DEFAULT_LAMBDA = 1e-4  # the authors' MNIST command


def keys(challenge_name):
  del challenge_name
  return (
      Key('cross_lipschitz_lambda', float, DEFAULT_LAMBDA, minimum=0,
          help='Cross-Lipschitz regularisation\'s λ, for gradients of the image on [0, 1] '
               f'(the authors\' MNIST {DEFAULT_LAMBDA:g}); new'),
      Key('cross_lipschitz_adversarial_fraction', float, 0.0, minimum=0, maximum=1,
          help='Cross-Lipschitz regularisation: the fraction of each batch replaced by the '
               'training attack\'s examples (0: none; the authors\' adversarial training: '
               '0.5, with their own attack); new'),
  )


def check(config):
  base.refuse_for_input_gradients(config)
  if not config.cross_lipschitz_adversarial_fraction:
    base.refuse_attack_settings(config, 'with cross_lipschitz_adversarial_fraction 0')


def regulariser(class_gradients):
  """1/K² · Σ_{l,m} ‖g_l − g_m‖² per example = 2/K · Σ_l ‖g_l − ḡ‖² (ḡ their mean)."""
  flat = tf.stack([tf.reshape(g, [tf.shape(g)[0], -1]) for g in class_gradients], axis=1)
  centred = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
  return 2.0 / len(class_gradients) * tf.reduce_sum(tf.square(centred), axis=[1, 2])


class CrossLipschitz(base.Method):
  """CE + λ Ω on the (possibly mixed) batch."""
  supports_xla = False  # base.refuse_for_input_gradients

  def __init__(self, params: pgd.PGDParams, lam: float, fraction: float, pixel_max: float,
               classes: int = 10):
    self.params, self.lam, self.fraction = params, lam, fraction
    self.pixel_max, self.classes = pixel_max, classes
    self.share = base.AdversarialShare(params, fraction)

  def prepare(self, x, seed, rows, examples):
    return self.share.prepare(x, seed, rows)

  def gradients(self, step, x, y, inputs):
    x = self.share.mix(step, x, y, inputs)
    directions = [tf.one_hot(tf.fill([tf.shape(x)[0]], k), self.classes)
                  for k in range(self.classes)]

    def loss():
      logits, class_gradients = base.input_gradients(step, x, directions, self.pixel_max)
      per_example = losses.xent(y, logits) + self.lam * regulariser(class_gradients)
      return step.loss(y, logits, per_example), logits
    gradients, logits = base.descend(step, loss)
    return base.Result(gradients, logits, x)


def build(challenge, config, params: pgd.PGDParams) -> CrossLipschitz:
  return CrossLipschitz(base.configured_attack(config, params), config.cross_lipschitz_lambda,
                        config.cross_lipschitz_adversarial_fraction, challenge.pixel_max)
