"""The Carlini–Wagner attacks (common/attacks/cw_*.py) on models whose answer is known in closed
form: on a linear model the minimal ℓ2 perturbation to the other class is |margin| / ‖g‖₂;
the optimiser is TF1's Adam step for step; failures return the clean image. Agreement with
the authors' TF1 code on a real model: benchmarks/cw_reference.py."""
import numpy as np
import pytest
import tensorflow as tf

from common.attacks import carlini_wagner as cw
from common.attacks import cw_l2
from common.attacks.threat import ThreatModel

RNG = np.random.default_rng(11)
BOX = ThreatModel('l2', 0.0)  # [0, 1] pixels; C&W minimises the distance, ε plays no part


def linear_problem(n=12, size=20, classes=2, seed=0):
  """A linear model on mid-range inputs (the box does not bind), its labels and the minimal
  ℓ2 distance of each example to the other class (two classes)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(0, 1, (size, classes)).astype(np.float32)
  x = rng.uniform(0.35, 0.65, (n, size)).astype(np.float32)
  logits = x @ w
  y = np.argmax(logits, 1)
  direction = (w[:, 1] - w[:, 0])
  minimal = np.abs(logits[:, 1] - logits[:, 0]) / np.linalg.norm(direction)
  return (lambda v: tf.matmul(v, w)), x, y, minimal


def test_adam_is_tf1s_adam_optimizer_step_for_step():
  v1 = tf.compat.v1
  start = RNG.normal(0, 1, (3, 5)).astype(np.float32)
  target = RNG.normal(0, 1, (3, 5)).astype(np.float32)
  graph = tf.Graph()
  with graph.as_default():
    variable = v1.Variable(start)
    loss = tf.reduce_sum(tf.square(variable - target) * tf.abs(variable))
    train = v1.train.AdamOptimizer(1e-2).minimize(loss)
    with v1.Session() as session:
      session.run(v1.global_variables_initializer())
      for _ in range(50):
        session.run(train)
      theirs = session.run(variable)
  w, state = tf.constant(start), cw.Adam.start(tf.constant(start))
  for _ in range(50):
    with tf.GradientTape() as tape:
      tape.watch(w)
      ours_loss = tf.reduce_sum(tf.square(w - target) * tf.abs(w))
    w, state = cw.Adam.step(w, tape.gradient(ours_loss, w), state, 1e-2)
  np.testing.assert_allclose(w.numpy(), theirs, rtol=1e-5, atol=1e-6)


def test_the_tanh_change_of_variables_maps_the_box_onto_the_reals():
  x = tf.constant([0.0, 0.25, 0.5, 1.0])
  w = cw.to_tanh_space(x, 0.0, 1.0)
  np.testing.assert_allclose(w.numpy()[1:3], np.arctanh(np.array([-0.5, 0.0]) * 0.999999))
  np.testing.assert_allclose(cw.from_tanh_space(w, 0.0, 1.0).numpy(), x.numpy(), atol=1e-6)
  assert np.isfinite(w.numpy()).all()
  # The challenge's CIFAR-10 scale: the same w for the same relative position.
  np.testing.assert_allclose(cw.to_tanh_space(x * 255, 0.0, 255.0).numpy(), w.numpy(),
                             rtol=1e-6)


@pytest.mark.parametrize('targeted', [False, True])
def test_cw_l2_finds_the_minimal_l2_perturbation_of_a_linear_model(targeted):
  model_fn, x, y, minimal = linear_problem()
  targets = (1 - y) if targeted else None
  run = tf.function(lambda: cw_l2.cw_l2(model_fn, tf.constant(x), y, BOX, targets=targets,
                                        max_iterations=1000))
  x_adv, success = (t.numpy() for t in run())
  found = np.linalg.norm(x_adv - x, axis=1)
  assert success.all()
  assert np.all(np.argmax(x_adv @ model_fn(np.eye(20, dtype=np.float32)).numpy(), 1) != y)
  assert np.all(found >= minimal * (1 - 1e-3))
  np.testing.assert_allclose(found, minimal, rtol=0.01)


def test_cw_l2_confidence_moves_past_the_boundary_by_kappa():
  model_fn, x, y, minimal = linear_problem()
  kappa = 2.0
  x_adv, success = tf.function(lambda: cw_l2.cw_l2(
      model_fn, tf.constant(x), y, BOX, confidence=kappa, max_iterations=1000))()
  logits = model_fn(x_adv).numpy()
  margins = logits[np.arange(len(y)), 1 - y] - logits[np.arange(len(y)), y]
  assert success.numpy().all() and np.all(margins >= kappa - 1e-3)
  # Farther than the boundary itself, by κ over the gradient's norm.
  found = np.linalg.norm(x_adv.numpy() - x, axis=1)
  slope = np.linalg.norm(model_fn(np.eye(20, dtype=np.float32)).numpy() @ [-1.0, 1.0])
  np.testing.assert_allclose(found, minimal + kappa / slope, rtol=0.01)


def test_cw_l2_returns_the_clean_image_where_it_fails():
  x = RNG.uniform(0, 1, (4, 10)).astype(np.float32)
  constant = lambda v: tf.constant([[5.0, 0.0]]) + 0.0 * v[:, :2]  # never fooled
  x_adv, success = tf.function(lambda: cw_l2.cw_l2(
      constant, tf.constant(x), np.zeros(4, np.int64), BOX, max_iterations=20,
      binary_search_steps=3))()
  assert not success.numpy().any()
  np.testing.assert_array_equal(x_adv.numpy(), x)


def test_cw_l2_stays_in_the_pixel_range_where_the_box_binds():
  model_fn, x, y, minimal = linear_problem(seed=3)
  x[:, :8] = np.where(RNG.uniform(size=(len(x), 8)) > 0.5, 1.0, 0.0)
  threat = ThreatModel('l2', 0.0, 0.0, 1.0)
  x_adv, success = tf.function(lambda: cw_l2.cw_l2(model_fn, tf.constant(x), y, threat,
                                                   max_iterations=300))()
  assert success.numpy().all()
  assert x_adv.numpy().min() >= 0.0 and x_adv.numpy().max() <= 1.0
