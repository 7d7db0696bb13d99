"""The Carlini–Wagner ℓ2 attack (Carlini & Wagner, IEEE S&P 2017) as the authors'
`l2_attack.py` (carlini/nn_robust_attacks) computes it; the reference's behaviour is the
specification (written anew from it, not copied). Shared pieces: `carlini_wagner`.

* Minimise ‖x' - x̃‖₂² + c·f(x') over w, x' = tanh(w + w₀)·(hi - lo)/2 + (hi + lo)/2
  (x̃ = the clean image through the same map: the distance the authors minimise), f the
  margin term with confidence κ, by Adam (learning rate 1e-2) from w = 0, for at most
  `max_iterations` (10,000) iterations per constant c.
* c by a binary search of `binary_search_steps` (9) steps from `initial_const` (1e-3), per
  example: after a step that found an adversarial example c's upper bound becomes c and c
  the middle of its bounds; after one that did not, the lower bound becomes c and c the
  middle, or 10c while no upper bound is known (below 1e9). With 10 or more steps the last
  one runs at the upper bound. Adam and w restart at every step.
* Early abort (`abort_early`): every max_iterations/10 iterations (from the first) the
  batch's total loss is compared with the last such one: the step ends when it is above
  0.9999 times it. The abort is the batch's, as in the authors' code, so results depend on
  the batch (run both at the same batch size to compare).
* Bookkeeping, at each iteration on the point before that iteration's update: where the
  point succeeds and is closer (in the minimised distance) than the best of the step, and
  of the whole search, it becomes their best. The result is the whole search's best.

Targeted towards `targets` when given, else untargeted against `labels`.
"""
import tensorflow as tf

from common.attacks import carlini_wagner as cw
from common.attacks.threat import ThreatModel

BINARY_SEARCH_STEPS = 9
MAX_ITERATIONS = 10000
ABORT_EARLY = True
LEARNING_RATE = 1e-2
CONFIDENCE = 0.0
INITIAL_CONST = 1e-3
NO_BOUND = 1e10  # the authors' "no upper bound yet" (an upper bound counts below 1e9)


def cw_l2(model_fn, x, labels, threat: ThreatModel, targets=None, confidence=CONFIDENCE,
          learning_rate=LEARNING_RATE, binary_search_steps=BINARY_SEARCH_STEPS,
          max_iterations=MAX_ITERATIONS, abort_early=ABORT_EARLY, initial_const=INITIAL_CONST):
  """(x_adv, success) for a batch: the closest adversarial example found per example in ℓ2
  (x where none), within the threat model's pixel range; its ε plays no part (C&W
  minimises the distance; judge success within ε afterwards)."""
  x = tf.convert_to_tensor(x, tf.float32)
  targeted, goal, goal_onehot = cw.goal_of(model_fn, x, labels, targets, 'C&W-ℓ2')
  lo, hi = threat.clip_min, threat.clip_max
  w0 = cw.to_tanh_space(x, lo, hi)
  original = cw.from_tanh_space(w0, lo, hi)
  axes = list(range(1, len(x.shape)))
  width = hi - lo  # distances in units of the pixel range, as theirs (see carlini_wagner)
  batch = tf.shape(x)[0]
  check_every = max(max_iterations // 10, 1)

  def search_step(const, overall_best_l2, overall_best):
    """One constant's run of Adam: (found one in this step, overall best l2, best)."""
    const32 = tf.cast(const, tf.float32)

    def iteration(i, w, adam, previous, stop, step_best_l2, overall_best_l2, overall_best):
      with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(w)
        image = cw.from_tanh_space(w + w0, lo, hi)
        logits = model_fn(image)
        distance = tf.reduce_sum(tf.square((image - original) / width), axis=axes)
        loss = tf.reduce_sum(const32 * cw.margin_loss(logits, goal_onehot, targeted,
                                                      confidence)) + tf.reduce_sum(distance)
      w_next, adam = cw.Adam.step(w, tape.gradient(loss, w), adam, learning_rate)
      check = tf.equal(i % check_every, 0) if abort_early else tf.constant(False)
      stop = check & (tf.cast(loss, tf.float64) > previous * 0.9999)
      previous = tf.where(check, tf.cast(loss, tf.float64), previous)
      works = ~stop & cw.succeeded(logits, goal, goal_onehot, targeted, confidence)
      step_best_l2 = tf.where(works & (distance < step_best_l2), distance, step_best_l2)
      closer = works & (distance < overall_best_l2)
      overall_best_l2 = tf.where(closer, distance, overall_best_l2)
      overall_best = tf.where(tf.reshape(closer, [-1] + [1] * len(axes)), image, overall_best)
      return (i + 1, w_next, adam, previous, stop, step_best_l2, overall_best_l2,
              overall_best)

    w = tf.zeros_like(x)
    state = (tf.constant(0), w, cw.Adam.start(w), tf.constant(float('inf'), tf.float64),
             tf.constant(False), tf.fill([batch], tf.constant(NO_BOUND, tf.float32)),
             overall_best_l2, overall_best)
    final = tf.while_loop(lambda i, *s: (i < max_iterations) & ~s[3], iteration, state)
    return final[5] < NO_BOUND, final[6], final[7]

  def binary_step(step, const, lower, upper, overall_best_l2, overall_best):
    if binary_search_steps >= 10:  # the authors repeat the search at the upper bound last
      const = tf.where(tf.equal(step, binary_search_steps - 1), upper, const)
    found, overall_best_l2, overall_best = search_step(const, overall_best_l2, overall_best)
    upper = tf.where(found, tf.minimum(upper, const), upper)
    lower = tf.where(found, lower, tf.maximum(lower, const))
    bounded = upper < 1e9
    const = tf.where(bounded, (lower + upper) / 2.0, tf.where(found, const, const * 10.0))
    return step + 1, const, lower, upper, overall_best_l2, overall_best

  start = (tf.constant(0), tf.fill([batch], tf.constant(initial_const, tf.float64)),
           tf.zeros([batch], tf.float64), tf.fill([batch], tf.constant(NO_BOUND, tf.float64)),
           tf.fill([batch], tf.constant(NO_BOUND, tf.float32)), tf.zeros_like(x))
  final = tf.while_loop(lambda step, *s: step < binary_search_steps, binary_step, start)
  success = final[4] < NO_BOUND
  x_adv = tf.where(tf.reshape(success, [-1] + [1] * len(axes)), final[5], x)
  return x_adv, success
