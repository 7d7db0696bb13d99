"""The Carlini–Wagner ℓ∞ attack (Carlini & Wagner, IEEE S&P 2017) as the authors'
`li_attack.py` (carlini/nn_robust_attacks) computes it; the reference's behaviour is the
specification (written anew from it, not copied). Shared pieces: `carlini_wagner`.

Per example (theirs runs one image at a time; ours runs a batch, each example on its own
schedule):
* τ starts at the pixel range's width (1.0 on their [-0.5, 0.5] pixels); the last solution
  p starts as the clean image x.
* A solve at τ from p: w = 0 and a fresh Adam (learning rate 5e-3); x' = the tanh map of
  (w + artanh-map(p)); minimise c·f(x') + Σ max(0, |x' - x̃| - τ) (f the margin term, κ 0;
  x̃ the clean image through the tanh maps), c from the last solve's (first 1e-5). Each
  iteration takes Adam's step; where the objective before the step is below 1e-4·c, the
  point after the step is checked: if the model is fooled there, the solve succeeds with it.
  After 1,000 iterations without success c doubles (w and Adam go on); once c reaches 20 the
  solve fails.
* A success: τ becomes min(τ, the solution's ℓ∞ distance to x) · 0.9, p the solution; a new
  solve follows while τ > width/256. A failure ends the example: the result is p.
* Success of the attack: a solve ever succeeded (else p = x: the authors return x too).

Targeted towards `targets` when given, else untargeted against `labels`.
"""
import tensorflow as tf

from common.attacks import carlini_wagner as cw
from common.attacks.threat import ThreatModel

MAX_ITERATIONS = 1000
LEARNING_RATE = 5e-3
INITIAL_CONST = 1e-5
LARGEST_CONST = 2e1
DECREASE_FACTOR = 0.9
CONST_FACTOR = 2.0
SMALLEST_TAU = 1.0 / 256  # of the pixel range's width
WORKS = 1e-4  # a solve may succeed once its objective is below this times c


def cw_linf(model_fn, x, labels, threat: ThreatModel, targets=None,
            learning_rate=LEARNING_RATE, max_iterations=MAX_ITERATIONS,
            initial_const=INITIAL_CONST, largest_const=LARGEST_CONST,
            decrease_factor=DECREASE_FACTOR, const_factor=CONST_FACTOR):
  """(x_adv, success) for a batch: per example the last solution (the smallest ℓ∞ distortion
  found; x where none), within the threat model's pixel range; its ε plays no part."""
  x = tf.convert_to_tensor(x, tf.float32)
  targeted, goal, goal_onehot = cw.goal_of(model_fn, x, labels, targets, 'C&W-ℓ∞')
  lo, hi = threat.clip_min, threat.clip_max
  width = hi - lo
  to_w = lambda images: cw.to_tanh_space(images, lo, hi, cw.LINF_L0_SHRINK)
  original = cw.from_tanh_space(to_w(x), lo, hi)
  axes = list(range(1, len(x.shape)))
  per_example = lambda mask: tf.reshape(mask, [-1] + [1] * len(axes))
  batch = tf.shape(x)[0]

  def objective(w, start, tau, const):
    image = cw.from_tanh_space(w + start, lo, hi)
    logits = model_fn(image)
    excess = tf.reduce_sum(tf.maximum(0.0, tf.abs(image - original) - per_example(tau)),
                           axis=axes) / width  # in units of the pixel range, as theirs
    return const * cw.margin_loss(logits, goal_onehot, targeted, 0.0) + excess

  def tick(w, adam, start, tau, const, step, solution, found, running):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(w)
      loss = objective(w, start, tau, const)
      total = tf.reduce_sum(tf.where(running, loss, 0.0))
    w, adam = cw.Adam.step(w, tape.gradient(total, w), adam, learning_rate)
    checking = running & (loss < WORKS * const)

    def fooled_after_step():
      image = cw.from_tanh_space(w + start, lo, hi)
      works = checking & cw.succeeded(model_fn(image), goal, goal_onehot, targeted, 0.0)
      return works, image
    works, image = tf.cond(tf.reduce_any(checking), fooled_after_step,
                           lambda: (tf.zeros_like(checking), solution))
    # A success: the next solve from it at a smaller τ (or the end, τ small enough).
    distance = tf.reduce_max(tf.abs(image - x), axis=axes)
    solution = tf.where(per_example(works), image, solution)
    found = found | works
    tau = tf.where(works, tf.minimum(tau, distance) * decrease_factor, tau)
    start = tf.where(per_example(works), to_w(solution), start)
    w = tf.where(per_example(works), tf.zeros_like(w), w)
    adam = cw.Adam.reset(adam, works)
    # Otherwise one more iteration at this c, or the next c after max_iterations.
    step, const, failed = cw.next_iteration(works, step, const, max_iterations, const_factor,
                                            largest_const)
    running = running & ~failed & ~(works & (tau <= SMALLEST_TAU * width))
    return w, adam, start, tau, const, step, solution, found, running

  w = tf.zeros_like(x)
  state = (w, cw.Adam.start(w), to_w(x),
           tf.fill([batch], tf.constant(width, tf.float32)),
           tf.fill([batch], tf.constant(initial_const, tf.float32)), tf.zeros([batch], tf.int32),
           x, tf.zeros([batch], tf.bool), tf.ones([batch], tf.bool))
  final = tf.while_loop(lambda *s: tf.reduce_any(s[-1]), tick, state)
  return final[6], final[7]
