"""What the three Carlini–Wagner attacks (Carlini & Wagner, IEEE S&P 2017; the authors' code,
carlini/nn_robust_attacks: `l2_attack.py`, `li_attack.py`, `l0_attack.py`) share, as their
code computes it (the reference's behaviour is the specification; written anew from it, not
copied):

* The change of variables: an image of the pixel box [lo, hi] is tanh(w)·(hi - lo)/2 +
  (hi + lo)/2, so that any w gives a valid image; the clean image's w is
  artanh((x - (hi + lo)/2) / ((hi - lo)/2) · s), the factor s keeping it finite: 0.999999 in
  their ℓ2 attack, 0.9999995 in their ℓ∞ and ℓ0 attacks (which multiply their [-0.5, 0.5]
  pixels by 1.999999), so a pixel at the box's edge starts at w = ±7.25 or ±7.6, where
  tanh's slope differs by half. Their code fixes the box at [-0.5, 0.5]; ours takes the
  challenge's pixel range.
* The objective's misclassification term on the logits z (not probabilities):
  untargeted max(0, z_y - max_{i≠y} z_i + κ), targeted max(0, max_{i≠t} z_i - z_t + κ),
  the maximum over the other classes taken as max((1 - onehot)·z - 10,000·onehot).
* Success (`succeeded`): untargeted, the argmax of z with κ added to z_y is not y;
  targeted, the argmax of z with κ taken from z_t is t.
* The optimiser: Adam as TF1's AdamOptimizer computes it (β1 0.9, β2 0.999, ε̂ 1e-8):
  m += (g - m)(1 - β1), v += (g² - v)(1 - β2), w -= lr·√(1 - β2^t)/(1 - β1^t)·m/(√v + ε̂),
  the bias correction in float64 (in float32, 1 - β2 loses five digits to cancellation,
  which TF1's kernel does not); its state is reset where the authors reset it.

Their pixel range is 1 wide: every distance term here is in units of the pixel range
(divided by its width, and squared distances by its square), and so are their thresholds, so
that an attack on the challenge's [0, 255] pixels computes what theirs does on the same
images in [-0.5, 0.5] (on [0, 1] the division is by 1: nothing changes).

Each attack returns (x_adv, success): x_adv the adversarial example found (x itself where
none was: the authors' code returns a grey image or None there), success per example.
"""
import tensorflow as tf

from common.errors import ChallengeError

BETA_1, BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-8
L2_SHRINK = 0.999999  # the authors' factor inside artanh: ℓ2
LINF_L0_SHRINK = 1.999999 / 2  # ℓ∞ and ℓ0: their artanh(x · 1.999999) on [-0.5, 0.5]
OTHER_CLASS_MASK = 10000.0  # the authors' mask of the true (or target) class in the maximum


def number_of_classes(model_fn, x, attack):
  """The model's number of classes, from one pass on x; raises ChallengeError where its
  logits have no gradient with respect to the input (a stop_gradient, a non-differentiable
  op): the C&W attacks would then only shrink the distance and report failure."""
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(x)
    logits = model_fn(x)
  if tape.gradient(logits, x) is None:
    raise ChallengeError(f'{attack} needs the gradient of the model\'s logits with respect to '
                         'its input, and this model has none: attack it with square '
                         '(score-based), behind a defence with --bpda on, or make its forward '
                         'pass differentiable')
  return logits.shape[-1]


def goal_of(model_fn, x, labels, targets, attack):
  """(targeted, the class per example to reach or leave, its one-hot): towards `targets`
  when given, else away from `labels`; the model checked as `number_of_classes` checks it."""
  targeted = targets is not None
  goal = tf.cast(targets if targeted else labels, tf.int64)
  return targeted, goal, tf.one_hot(goal, number_of_classes(model_fn, x, attack),
                                    dtype=tf.float32)


def to_tanh_space(x, clip_min, clip_max, shrink=L2_SHRINK):
  """The images' w: artanh((x - centre) / half-width · shrink), computed in float64 as the
  authors' numpy does (near the box's edge float32 would move w by a few hundredths)."""
  half, centre = (clip_max - clip_min) / 2.0, (clip_max + clip_min) / 2.0
  scaled = (tf.cast(x, tf.float64) - centre) / half * shrink
  return tf.cast(tf.atanh(scaled), x.dtype)


def from_tanh_space(w, clip_min, clip_max):
  half, centre = (clip_max - clip_min) / 2.0, (clip_max + clip_min) / 2.0
  return tf.tanh(w) * half + centre


def margin_loss(logits, goal_onehot, targeted, confidence):
  """The misclassification term per example (see the module's docstring)."""
  logits = tf.cast(logits, tf.float32)
  real = tf.reduce_sum(goal_onehot * logits, axis=1)
  other = tf.reduce_max((1.0 - goal_onehot) * logits - goal_onehot * OTHER_CLASS_MASK, axis=1)
  if targeted:
    return tf.maximum(0.0, other - real + confidence)
  return tf.maximum(0.0, real - other + confidence)


def succeeded(logits, goal, goal_onehot, targeted, confidence):
  """The authors' `compare` on a score vector, per example."""
  logits = tf.cast(logits, tf.float32)
  if targeted:
    return tf.equal(tf.argmax(logits - confidence * goal_onehot, axis=1), goal)
  return tf.not_equal(tf.argmax(logits + confidence * goal_onehot, axis=1), goal)


def next_iteration(works, step, const, max_iterations, const_factor, largest_const):
  """The ℓ∞ and ℓ0 attacks' schedule of c, per example, after an iteration: a success starts
  a new solve (step 0); otherwise the step count goes on, and after max_iterations c grows by
  const_factor (the solve goes on); the solve fails once c reaches largest_const. Returns
  (step, const, failed)."""
  step = tf.where(works, 0, step + 1)
  next_const = step >= max_iterations
  const = tf.where(next_const, const * const_factor, const)
  step = tf.where(next_const, 0, step)
  return step, const, ~works & (const >= largest_const)


class Adam:
  """TF1's Adam on one tensor, with its state as values (for loops): `start(like)` gives the
  state, `step(w, g, state, lr)` the new w and state. The state's powers may be reset per
  example (`reset`), as the authors reset their optimiser per image."""

  @staticmethod
  def start(like):
    zeros = tf.zeros_like(like)
    powers = tf.ones([tf.shape(like)[0]], tf.float64)
    return (zeros, zeros, powers * BETA_1, powers * BETA_2)

  @staticmethod
  def step(w, g, state, learning_rate):
    m, v, beta_1_power, beta_2_power = state
    shape = [-1] + [1] * (len(w.shape) - 1)
    rate = tf.cast(learning_rate * tf.sqrt(1.0 - beta_2_power) / (1.0 - beta_1_power),
                   w.dtype)
    m = m + (g - m) * (1.0 - BETA_1)
    v = v + (g * g - v) * (1.0 - BETA_2)
    w = w - (m * tf.reshape(rate, shape)) / (tf.sqrt(v) + ADAM_EPSILON)
    return w, (m, v, beta_1_power * BETA_1, beta_2_power * BETA_2)

  @staticmethod
  def reset(state, where):
    """The state started afresh for the examples where `where` holds."""
    fresh = Adam.start(state[0])
    shape = [-1] + [1] * (len(state[0].shape) - 1)
    select = lambda new, old, s: tf.where(tf.reshape(where, s), new, old)
    return (select(fresh[0], state[0], shape), select(fresh[1], state[1], shape),
            select(fresh[2], state[2], [-1]), select(fresh[3], state[3], [-1]))
