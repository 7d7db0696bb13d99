"""Bilateral adversarial training, R-MC-LA (Wang & Zhang, ICCV 2019, "Bilateral adversarial
training: towards fast training of more robust models against adversarial attacks"), a
training method of the shared trainer (`training_method: "bilateral"`), as the authors'
code computes it (wjyouch/bilateral-adversarial-training, train.py: `adv_labels`,
`adv_attack` with train.sh's settings; the specification, written anew). Both the image and
the label are perturbed, from one inference-mode pass over the natural batch (batch norm's
moving averages, nothing updated):

* The adversarial label (LA), per example, n classes, c the true one, p = softmax(f(x)):
  v_k = -log(p_k + 1e-8) (the gradient of the soft-label cross-entropy with respect to
  y_k), v_MC = min_{k≠c} v_k (the most confusing class), v_LL = max_{k≠c} v_k, u_k =
  v_k - v_MC + γ for k ≠ c (γ = 0.01), D = Σ_{k≠c} u_k,
  ε_y = 1 / (1 + β (v_LL - v_MC + γ) / D),  y'_k = ε_y u_k / D (k ≠ c),  y'_c = 1 - ε_y.
  The label sums to one; the true class gives up ε_y, spread over the wrong classes in
  proportion to u_k, the least likely class getting most (the label moves up the loss's
  gradient) and the most confusing one least (γ / D of it); y'_c = β max_{k≠c} y'_k: β
  (`bilateral_beta`, the authors' 9) is the ratio of the true class's mass to the largest
  wrong one's, not a loss weight. (The paper's form, ε_y/(n-1) (v_k - v_MC + γ) /
  (Σ_{k≠c} v_k/(n-1) - v_MC + γ), is the same.)
* The adversarial image (R-MC): the target is the most confusing class of the natural
  logits (the highest wrong logit); from x + U(-ε, ε) (not clipped to the pixel range
  before the first gradient, as the authors'), `training_num_steps` (0: one, the authors')
  targeted sign steps of `training_step_size` (0: ε, the authors') descending the
  cross-entropy to the target, each projected onto the ε-ball, then the pixel range; the
  model in inference mode. With `norm: "l2"` (the authors' code is ℓ∞ only): the start on
  the sphere of radius ε and the threat model's ℓ2 steps (∇/‖∇‖₂) and ball.
* The objective: the soft-label cross-entropy -Σ_k y'_k log softmax(f(x'))_k of the
  training-mode model (batch statistics, the averages updated), reduced as the challenge
  reduces its loss (MNIST: the sum; CIFAR-10: the mean over the global batch, plus the
  weight decay, as the authors'). Only the adversarial batch is trained on. Logits, labels
  and losses are float32 under every precision.
"""
import dataclasses

import tensorflow as tf

from common import losses
from common.attacks import pgd
from common.config import Key
from common.methods import base

NAME = 'bilateral'
SUMMARY = ('bilateral adversarial training, R-MC-LA (Wang & Zhang 2019): the soft-label '
           'cross-entropy of an adversarial label (bilateral_beta) on an image moved by '
           'training_num_steps (0: one) targeted sign steps of training_step_size (0: ε) '
           'towards the most confusing class from a random start')
OWN_SEARCH = 'its targeted step(s) towards the most confusing class'


def keys(challenge_name):
  del challenge_name  # the authors' β for both
  return (Key('bilateral_beta', float, 9.0, minimum=0,
              help='bilateral: the adversarial label\'s true-class mass over its largest '
                   'wrong-class mass (the authors\' 9); new'),)


GAMMA = 0.01  # the authors' γ
STABILITY = 1e-8  # inside the log, as the authors'


def most_confusing(logits, labels):
  """The wrong class of highest logit, per example."""
  return pgd.choose_targets('most_likely', logits, labels)


def adversarial_labels(natural_logits, labels, beta, gamma=GAMMA):
  """The R-MC-LA label y' per example ([batch, classes], float32; see the docstring)."""
  logits = tf.cast(natural_logits, tf.float32)
  true = tf.one_hot(tf.cast(labels, tf.int64), tf.shape(logits)[-1], dtype=tf.float32)
  wrong = 1.0 - true
  v = -tf.math.log(tf.nn.softmax(logits) + STABILITY)
  v_mc = tf.reduce_min(v + true * 1e9, axis=-1, keepdims=True)
  v_ll = tf.reduce_max(v - true * 1e9, axis=-1, keepdims=True)
  u = (v - v_mc + gamma) * wrong
  total = tf.reduce_sum(u, axis=-1, keepdims=True)
  label_epsilon = 1.0 / (1.0 + beta * (v_ll - v_mc + gamma) / total)
  return label_epsilon * u / total + (1.0 - label_epsilon) * true


def soft_xent(soft_labels, logits):
  """-Σ_k y_k log softmax(logits)_k per example, in float32."""
  return tf.nn.softmax_cross_entropy_with_logits(labels=tf.cast(soft_labels, tf.float32),
                                                 logits=tf.cast(logits, tf.float32))


def image_params(params: pgd.PGDParams, num_steps: int, step_size: float) -> pgd.PGDParams:
  """R-MC's steps: `num_steps` (0: one) of `step_size` (0: ε) at params' ε and pixel range."""
  return dataclasses.replace(params, num_steps=num_steps or 1,
                             step_size=step_size or params.epsilon, random_start=True,
                             start_radius=None, project_to_ball=True)


def start(x, epsilon, seed, rows, norm='linf'):
  """x + U(-ε, ε) (ℓ2: a point of the sphere of radius ε), not clipped (as the authors'):
  rows (first, total) of the whole global batch's draw from `seed`. Draw outside XLA."""
  return x + pgd.uniform_noise(x, epsilon, seed, rows, norm)


def perturb_image(model_fn, x, targets, params: pgd.PGDParams, start_point, loss_scale=None):
  """R-MC: targeted sign steps towards `targets` from `start_point` (model_fn: inference
  mode); in the ε-ball and the pixel range."""
  return pgd.pgd(model_fn, x, targets, params, loss_fn=pgd.targeted(losses.xent),
                 loss_scale=loss_scale, start=start_point)


class Bilateral(base.Method):
  """R-MC-LA on the shared trainer."""

  def __init__(self, params: pgd.PGDParams, beta: float):
    self.params, self.beta = params, beta

  def prepare(self, x, seed, rows, examples):
    return (start(x, self.params.epsilon, seed, rows, self.params.norm),)

  def gradients(self, step, x, y, inputs):
    natural = tf.stop_gradient(tf.cast(step.inference(x), tf.float32))
    soft_labels = tf.stop_gradient(adversarial_labels(natural, y, self.beta))
    x_adv = perturb_image(step.inference, x, most_confusing(natural, y), self.params,
                          inputs[0], loss_scale=step.loss_scale)

    def loss():
      logits = step.forward(x_adv, update_state=True)
      return step.loss(y, logits, soft_xent(soft_labels, logits)), logits
    gradients, logits = base.descend(step, loss)
    return base.Result(gradients, logits, x_adv)


def build(challenge, config, params: pgd.PGDParams) -> Bilateral:
  del challenge
  return Bilateral(image_params(params, config.training_num_steps, config.training_step_size),
                   config.bilateral_beta)
