"""The Carlini–Wagner ℓ0 attack (Carlini & Wagner, IEEE S&P 2017) as the authors'
`l0_attack.py` (carlini/nn_robust_attacks) computes it; the reference's behaviour is the
specification (written anew from it, not copied). Shared pieces: `carlini_wagner`. It counts
pixels (all channels of a pixel change together: their `independent_channels=False`).

Per example (theirs runs one image at a time; ours runs a batch, each example on its own
schedule), with a set of pixels allowed to change (at first all) and the last solution p
(at first the clean image x):
* A solve from p: w = 0 and a fresh Adam (learning rate 1e-2); x' = the tanh map of
  (w + artanh-map(p)) on the allowed pixels, x on the others; minimise c·f(x') + ‖x' - x̃‖₂²
  (f the margin term with κ 0.01; x̃ the clean image through the tanh maps), c from the last
  solve's (first 1e-3). At each iteration, where f before the step is below 1e-4 the solve
  succeeds with that point and the objective's gradient there (with respect to w). After
  1,000 iterations without success c doubles (w and Adam go on); once c reaches 2·10⁶ the
  solve fails.
* After a success: the pixels allowed are ranked by |Σ_channels (x' - x)| · Σ_channels |∇|,
  smallest first, and fixed (no longer allowed) in that order, stopping after the first
  whose value exceeds 0.01 or once as many as 0.3·√(pixels changed) are fixed (a pixel counts
  as changed where a channel moved by 1e-4 or more); p becomes the solution, and a new solve
  follows. A failure ends the example: the result is the last solution.
* Success of the attack: a solve ever succeeded (else x: the authors return None there).
  Ties in the ranking fall in index order (numpy's argsort, which the authors use, leaves
  their order unspecified); where every pixel is fixed the last solution stands (the authors
  return the clean image there, which is no adversarial example).

Targeted towards `targets` when given, else untargeted against `labels`.
"""
import tensorflow as tf

from common.attacks import carlini_wagner as cw
from common.attacks.threat import ThreatModel

MAX_ITERATIONS = 1000
LEARNING_RATE = 1e-2
INITIAL_CONST = 1e-3
LARGEST_CONST = 2e6
CONST_FACTOR = 2.0
CONFIDENCE = 0.01  # the authors' fixed margin in f
WORKS = 1e-4  # a solve succeeds once f is below this
LARGE_CHANGE = 0.01  # fixing stops after a pixel whose rank value exceeds this
FIX_FRACTION = 0.3  # ... or after this times √(pixels changed)
UNCHANGED = 1e-4  # a pixel whose every channel moved by less counts as unchanged


def pixels_to_fix(value, allowed, changed):
  """Which allowed pixels a success fixes [n, P]: `value` the rank value per pixel, `allowed`
  the pixels still allowed, `changed` the number of pixels the solution changed [n]."""
  pixels = tf.shape(value)[1]
  ranked = tf.where(allowed, value, float('inf'))
  order = tf.argsort(ranked, axis=1, stable=True)
  sorted_value = tf.gather(ranked, order, batch_dims=1)
  count = tf.range(1, pixels + 1, dtype=tf.float32)[None, :]
  stop = (sorted_value > LARGE_CHANGE) | (
      count >= FIX_FRACTION * tf.sqrt(tf.cast(changed, tf.float32))[:, None])
  available = tf.reduce_sum(tf.cast(allowed, tf.int32), axis=1)
  # Fixed: the first k in order, k the first count at which a stop holds (or all allowed).
  first_stop = tf.where(tf.reduce_any(stop, axis=1),
                        tf.cast(tf.argmax(tf.cast(stop, tf.int32), axis=1), tf.int32) + 1,
                        pixels)
  k = tf.minimum(first_stop, available)
  fixed_in_order = tf.range(pixels)[None, :] < k[:, None]
  # Back from the order to the pixels.
  positions = tf.stack([tf.repeat(tf.range(tf.shape(value)[0]), pixels),
                        tf.reshape(order, [-1])], axis=1)
  return tf.scatter_nd(positions, tf.reshape(fixed_in_order, [-1]), tf.shape(value))


def cw_l0(model_fn, x, labels, threat: ThreatModel, image_shape, targets=None,
          learning_rate=LEARNING_RATE, max_iterations=MAX_ITERATIONS,
          initial_const=INITIAL_CONST, largest_const=LARGEST_CONST,
          const_factor=CONST_FACTOR):
  """(x_adv, success) for a batch of images of `image_shape` (H, W, C): per example the last
  solution (the fewest pixels changed found; x where none), within the threat model's pixel
  range; its ε plays no part."""
  x = tf.convert_to_tensor(x, tf.float32)
  targeted, goal, goal_onehot = cw.goal_of(model_fn, x, labels, targets, 'C&W-ℓ0')
  lo, hi = threat.clip_min, threat.clip_max
  span = hi - lo  # distances in units of the pixel range, as theirs (see carlini_wagner)
  height, width, channels = image_shape
  batch = tf.shape(x)[0]
  images = tf.reshape(x, [batch, height, width, channels])
  to_w = lambda z: cw.to_tanh_space(z, lo, hi, cw.LINF_L0_SHRINK)
  original = cw.from_tanh_space(to_w(images), lo, hi)
  as_input = lambda z: tf.reshape(z, tf.shape(x))
  per_example = lambda mask: tf.reshape(mask, [-1, 1, 1, 1])
  as_pixels = lambda t: tf.reshape(t, [batch, height * width])
  per_pixel = lambda mask: tf.reshape(tf.cast(mask, tf.float32), [batch, height, width, 1])

  def tick(w, adam, start, allowed, const, step, solution, found, running):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(w)
      keep = per_pixel(allowed)
      image = cw.from_tanh_space(w + start, lo, hi) * keep + (1.0 - keep) * images
      f = cw.margin_loss(model_fn(as_input(image)), goal_onehot, targeted, CONFIDENCE)
      loss = const * f + tf.reduce_sum(tf.square((image - original) / span), axis=[1, 2, 3])
      total = tf.reduce_sum(tf.where(running, loss, 0.0))
    grad = tape.gradient(total, w)
    works = running & (f < WORKS)
    # A success: fix the pixels that changed least (by the rank value), and solve again from
    # this solution with what is left.
    change = (image - images) / span
    changed = tf.reduce_sum(tf.cast(as_pixels(tf.reduce_any(tf.abs(change) >= UNCHANGED,
                                                            axis=-1)), tf.int32), axis=1)
    value = as_pixels(tf.abs(tf.reduce_sum(change, axis=-1))
                      * tf.reduce_sum(tf.abs(grad), axis=-1))
    fixed = pixels_to_fix(value, allowed, changed) & works[:, None]
    allowed = allowed & ~fixed
    solution = tf.where(per_example(works), image, solution)
    found = found | works
    w_next, adam = cw.Adam.step(w, grad, adam, learning_rate)
    start = tf.where(per_example(works), to_w(image), start)
    w = tf.where(per_example(works), tf.zeros_like(w), w_next)
    adam = cw.Adam.reset(adam, works)
    # Otherwise one more iteration at this c, or the next c after max_iterations.
    step, const, failed = cw.next_iteration(works, step, const, max_iterations, const_factor,
                                            largest_const)
    exhausted = works & ~tf.reduce_any(allowed, axis=1)
    return (w, adam, start, allowed, const, step, solution, found,
            running & ~failed & ~exhausted)

  w = tf.zeros_like(images)
  state = (w, cw.Adam.start(w), to_w(images),
           tf.ones([batch, height * width], tf.bool),
           tf.fill([batch], tf.constant(initial_const, tf.float32)), tf.zeros([batch], tf.int32),
           images, tf.zeros([batch], tf.bool), tf.ones([batch], tf.bool))
  final = tf.while_loop(lambda *s: tf.reduce_any(s[-1]), tick, state)
  return as_input(final[6]), final[7]
