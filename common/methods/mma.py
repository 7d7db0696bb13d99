"""MMA training (Ding, Sharma, Lui & Huang, ICLR 2020, "MMA training: direct input space
margin maximization through adversarial training"), a training objective of the shared
trainer (`training_method: "mma"`), ℓ∞ and ℓ2, as the authors' code computes it
(BorealisAI/mma_training: anpgd.py, trainer.py, config.py, train.py's --norm, with
advertorch's LinfPGDAttack and L2PGDAttack; the specification, written anew):

* Each training example i remembers ε_i across epochs (a variable of the training split's
  size, checkpointed with the training state); a step attacks from max(ε_min, ε_i)
  (ε_min = `mma_min_epsilon`; the first visit starts there).
* AN-PGD (adaptive-norm PGD), the model in inference mode: PGD at the example's ε,
  `training_num_steps` (0: the configured k) sign steps of 2.5 ε / steps on the soft logit
  margin logsumexp_{k≠y} z_k - z_y (summed), from x + U(-ε, ε) clipped to the pixel range,
  each step projected onto the example's ε-ball, then the pixel range. Then a bisection along
  the ray x + t u, u = (x_pgd - x) / (ε + 1e-12), for the smallest t at which the margin is
  ≥ 0: t in [0, 1.05 d_max] (d_max = `mma_max_epsilon`); the first judgement is x_pgd's at
  t = ε; each of `mma_search_steps` (the authors' 10) rounds moves the bound the last
  judgement allows (a success lowers the upper one to t, a failure raises the lower one),
  sets t to the interval's middle and judges x + t u, clipped to the pixel range. The new
  ε_i is that last t (not itself judged, as the authors'); a failed PGD ends near 1.05 d_max.
* ℓ2 (`norm: "l2"`; d_max and ε_min are then `mma_l2_max_epsilon`, `mma_l2_min_epsilon`:
  the authors' MNIST MMA-2.0 and 0.5, CIFAR-10 MMA-1.0 and 0.5 on [0, 1] images, i.e. 255
  and 127.5 on the challenge's pixels): AN-PGD is advertorch's L2PGDAttack as the authors
  run it: the start is a uniform random image of the pixel range minus x, scaled down to
  ‖δ‖₂ ≤ ε; each step δ += (2.5 ε / steps) ∇/‖∇‖₂, then x + δ to the pixel range, then δ
  scaled down to the ε-ball (pixel range first, ball second, as advertorch orders them; its
  ∇/max(‖∇‖₂, 1e-6) is ∇/(‖∇‖₂ + 1e-10) here). The bisection and the loss are the same.
* "Correct" examples are those whose natural soft logit margin is < 0 (training-mode
  logits). Per example, with c = `mma_clean_weight` (the authors' 1/3):
  (1 - c) · [correct: CE(f(x + ε_i u), y) if ε_i < d_max, else 0 (margin large enough);
             wrong: CE(f(x), y)]  +  c · CE(f(x), y),
  the first term from one training-mode pass over the batch with the correct examples
  replaced, the second from a training-mode pass over the natural batch (both update batch
  norm's averages). Reduced as the challenge reduces its loss (MNIST: the sum, CIFAR-10: the
  mean over the global batch, plus the weight decay); the authors' mean over the batch of
  the first term counts the hinged-off examples in the denominator, as this does.
* ε_i is then remembered: the new ε for correct examples, 0 for wrong ones (an example
  twice in a global batch, which spans two epochs: its later value).
* A run started from a checkpoint without this memory (another method's, a converted one)
  starts every example at ε_min, as the authors' first epoch does.

Where this differs from the authors' code, deliberately: the trained point x + ε_i u is
clipped to the pixel range (theirs is not, though the bisection judged the clipped point);
the bisection runs in inference mode like the attack (theirs runs the model in training
mode there, so with batch norm its eleven passes update the moving averages; MNIST's network
has none).
"""
import dataclasses

import tensorflow as tf

from common import losses
from common.attacks import pgd
from common.attacks.threat import ThreatModel
from common.config import Key
from common.errors import ChallengeError
from common.methods import base

NAME = 'mma'
SUMMARY = ('MMA training (Ding et al. 2020): each example\'s margin by AN-PGD (PGD at its '
           'remembered ε, then a bisection), the cross-entropy at the margin (up to '
           'mma_max_epsilon) mixed with the natural one (mma_clean_weight)')
OWN_SEARCH = 'AN-PGD at each example\'s own ε'
# The authors' d_max and ε_min in each challenge's pixel units (CIFAR-10: [0, 255]): ℓ∞
# MNIST MMA-0.45, CIFAR-10 MMA-12 (of 255); ℓ2 MNIST MMA-2.0, CIFAR-10 MMA-1.0 on [0, 1].
DEFAULTS = {'mnist': dict(max_epsilon=0.45, min_epsilon=0.1, l2_max_epsilon=2.0,
                          l2_min_epsilon=0.5),
            'cifar10': dict(max_epsilon=12.0, min_epsilon=0.005 * 255,
                            l2_max_epsilon=1.0 * 255, l2_min_epsilon=0.5 * 255)}


def keys(challenge_name):
  d = DEFAULTS[challenge_name]
  return (
      Key('mma_max_epsilon', float, d['max_epsilon'], minimum=0,
          help=f'MMA\'s d_max: margins beyond it are not trained on (the authors\': '
               f'{d["max_epsilon"]:g} for this data set); new'),
      Key('mma_min_epsilon', float, d['min_epsilon'], minimum=0,
          help=f'MMA: the smallest ε AN-PGD starts from (the authors\': '
               f'{d["min_epsilon"]:g}); new'),
      Key('mma_l2_max_epsilon', float, d['l2_max_epsilon'], minimum=0,
          help=f'MMA with norm l2: d_max, an ℓ2 length (the authors\': '
               f'{d["l2_max_epsilon"]:g} for this data set); new'),
      Key('mma_l2_min_epsilon', float, d['l2_min_epsilon'], minimum=0,
          help=f'MMA with norm l2: the smallest ε (the authors\': {d["l2_min_epsilon"]:g}); '
               'new'),
      Key('mma_clean_weight', float, 1.0 / 3.0, minimum=0, maximum=1,
          help='MMA: the natural cross-entropy\'s weight c, the margin loss\'s 1 - c (the '
               'authors\' 1/3); new'),
      Key('mma_search_steps', int, 10, minimum=0,
          help='MMA: AN-PGD\'s bisection steps (the authors\' 10); new'),
  )


def check(config):
  if config.training_epsilon:
    raise ChallengeError(
        f'training_epsilon is {config.training_epsilon:g}, but MMA trains each example at its '
        'own ε (up to mma_max_epsilon); set training_epsilon to 0 and choose mma_max_epsilon')
  if config.training_step_size:
    raise ChallengeError(
        f'training_step_size is {config.training_step_size:g}, but MMA\'s AN-PGD steps by '
        '2.5 ε / steps at each example\'s own ε (the authors\'); set training_step_size to 0')

SEARCH_CEILING = 1.05  # × d_max: the bisection's upper end (the authors')
STEP_SCALE = 2.5  # PGD's step: 2.5 ε / steps (the authors')
DIVISION_GUARD = 1e-12


def soft_logit_margin(labels, logits):
  """logsumexp of the wrong classes' logits - the true class's, per example (float32); ≥ 0
  counts as a successful attack."""
  logits = tf.cast(logits, tf.float32)
  true = tf.one_hot(tf.cast(labels, tf.int64), tf.shape(logits)[-1], dtype=tf.float32)
  others = tf.reduce_logsumexp(logits - 1e9 * true, axis=-1)
  return others - tf.reduce_sum(logits * true, axis=-1)


def _per_example(values, like):
  """[batch] -> broadcastable against `like` ([batch, ...])."""
  return tf.reshape(values, [-1] + [1] * (len(like.shape) - 1))


def pgd_at(model_fn, x, labels, epsilon, num_steps, noise, clip_min, clip_max,
           loss_scale=None, norm='linf'):
  """PGD at each example's own ε ([batch]) on the soft logit margin, `num_steps` steps of
  2.5 ε / num_steps (noise U(-1, 1) in x's shape, drawn outside). ℓ∞: from x + noise·ε,
  sign steps, each projected onto the ball, then the pixel range. ℓ2 (advertorch's
  L2PGDAttack): from the uniform image clip_min + (noise + 1)/2 · (clip_max - clip_min)
  minus x scaled into the ball, normalised-gradient steps, each clipped to the pixel range,
  then scaled into the ball."""
  radius = _per_example(epsilon, x)
  threat = ThreatModel(norm, 0.0, clip_min, clip_max)
  step_size = STEP_SCALE * radius / num_steps
  if norm == 'linf':
    x_adv = tf.clip_by_value(x + noise * radius, clip_min, clip_max)
  else:
    uniform_image = clip_min + (noise + 1.0) / 2.0 * (clip_max - clip_min)
    x_adv = x + threat.shrink(uniform_image - x, radius)
  for _ in range(num_steps):
    grad = pgd.input_gradient(model_fn, x_adv, labels, soft_logit_margin, loss_scale)
    x_adv = threat.ascent_step(x_adv, grad, step_size)
    if norm == 'linf':
      x_adv = threat.project(x_adv, x, radius)
    else:
      x_adv = x + threat.shrink(tf.clip_by_value(x_adv, clip_min, clip_max) - x, radius)
  return tf.stop_gradient(x_adv)


def bisect(model_fn, x, labels, epsilon, x_pgd, max_epsilon, search_steps, clip_min,
           clip_max):
  """The bisection along x + t u, u = (x_pgd - x) / ε: (the new ε [batch], u)."""
  direction = (x_pgd - x) / _per_example(epsilon + DIVISION_GUARD, x)
  ceiling = SEARCH_CEILING * max_epsilon
  margin = soft_logit_margin(labels, model_fn(x_pgd))
  low, high, t = tf.zeros_like(epsilon), tf.fill(tf.shape(epsilon), ceiling), epsilon
  for _ in range(search_steps):
    fooled = margin >= 0
    low = tf.where(fooled, low, tf.maximum(t, low))
    high = tf.where(fooled, tf.minimum(t, high), high)
    t = (low + high) / 2
    margin = soft_logit_margin(labels, model_fn(tf.clip_by_value(
        x + _per_example(t, x) * direction, clip_min, clip_max)))
  return tf.stop_gradient(t), tf.stop_gradient(direction)


def an_pgd(model_fn, x, labels, epsilon, num_steps, noise, max_epsilon, search_steps,
           clip_min, clip_max, loss_scale=None, norm='linf'):
  """AN-PGD: (each example's new ε, x + ε u clipped to the pixel range)."""
  x_pgd = pgd_at(model_fn, x, labels, epsilon, num_steps, noise, clip_min, clip_max,
                 loss_scale, norm)
  new_epsilon, direction = bisect(model_fn, x, labels, epsilon, x_pgd, max_epsilon,
                                  search_steps, clip_min, clip_max)
  return new_epsilon, tf.clip_by_value(x + _per_example(new_epsilon, x) * direction,
                                       clip_min, clip_max)


def per_example_loss(labels, natural_logits, mixed_logits, correct, new_epsilon,
                     max_epsilon, clean_weight):
  """(1 - c) · [correct: CE at the margin point if ε < d_max, else 0; wrong: CE] + c · CE
  natural, per example (see the docstring)."""
  mixed = losses.xent(labels, mixed_logits)
  margin_term = tf.where(correct & (new_epsilon >= max_epsilon), tf.zeros_like(mixed), mixed)
  return (1.0 - clean_weight) * margin_term + clean_weight * losses.xent(labels,
                                                                         natural_logits)


class MMA(base.Method):
  """MMA on the shared trainer; remembers each training example's ε."""
  needs_examples = True

  def __init__(self, params: pgd.PGDParams, max_epsilon, min_epsilon, clean_weight,
               search_steps):
    self.params = params
    self.max_epsilon, self.min_epsilon = max_epsilon, min_epsilon
    self.clean_weight, self.search_steps = clean_weight, search_steps
    self.epsilon = None

  def state(self, num_train, strategy):
    # One value per training example, the same on every replica: each replica writes the
    # whole global batch's new values (gathered), the first replica's write is kept. Made
    # once: the compiled step holds on to it (a trainer may run again).
    if self.epsilon is not None:
      if self.epsilon.shape[0] != num_train:
        raise ChallengeError(f'MMA remembers {self.epsilon.shape[0]} training examples\' ε, '
                             f'but the training split now has {num_train}: train with a new '
                             'Trainer')
      return {'mma_epsilon': self.epsilon}
    with strategy.scope():
      self.epsilon = tf.Variable(tf.zeros([num_train]), trainable=False, name='mma_epsilon',
                                 synchronization=tf.VariableSynchronization.ON_WRITE,
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    return {'mma_epsilon': self.epsilon}

  def prepare(self, x, seed, rows, examples):
    noise = pgd.uniform_noise(x, 1.0, seed, rows)
    remembered = tf.gather(self.epsilon, examples)
    return noise, tf.maximum(remembered, self.min_epsilon)

  def gradients(self, step, x, y, inputs):
    noise, epsilon = inputs
    params = self.params
    new_epsilon, x_margin = an_pgd(step.inference, x, y, epsilon, params.num_steps, noise,
                                   self.max_epsilon, self.search_steps, params.clip_min,
                                   params.clip_max, step.loss_scale, params.norm)

    def loss():
      natural = step.forward(x, update_state=True)
      correct = tf.stop_gradient(soft_logit_margin(y, natural) < 0)
      mixed_input = tf.where(_per_example(correct, x), x_margin, x)
      mixed = step.forward(mixed_input, update_state=True)
      per_example = per_example_loss(y, natural, mixed, correct, new_epsilon,
                                     self.max_epsilon, self.clean_weight)
      return step.loss(y, mixed, per_example), (mixed, mixed_input, correct)
    gradients, (logits, x_adv, correct) = base.descend(step, loss)
    remembered = tf.where(correct, new_epsilon, tf.zeros_like(new_epsilon))
    return base.Result(gradients, logits, x_adv, outputs=(remembered,))

  def finish(self, examples, outputs):
    context = tf.distribute.get_replica_context()
    indices = context.all_gather(tf.cast(examples, tf.int64), axis=0)
    values = context.all_gather(outputs[0], axis=0)
    keep = last_occurrences(indices)
    self.epsilon.assign(tf.tensor_scatter_nd_update(
        self.epsilon.read_value(), tf.boolean_mask(indices, keep)[:, None],
        tf.boolean_mask(values, keep)))


def last_occurrences(indices):
  """Whether each entry is its index's last in `indices` ([n]): a global batch that spans two
  epochs may hold an example twice, and a scatter of both would leave either value."""
  same = tf.equal(indices[:, None], indices[None, :])
  n = tf.shape(indices)[0]
  later = tf.range(n)[None, :] > tf.range(n)[:, None]
  return ~tf.reduce_any(same & later, axis=1)


def build(challenge, config, params: pgd.PGDParams) -> MMA:
  del challenge
  l2 = params.norm == 'l2'  # d_max and ε_min in the norm's units
  return MMA(dataclasses.replace(params, num_steps=config.training_num_steps or params.num_steps),
             config.mma_l2_max_epsilon if l2 else config.mma_max_epsilon,
             config.mma_l2_min_epsilon if l2 else config.mma_min_epsilon,
             config.mma_clean_weight, config.mma_search_steps)
