"""The loss landscape of the inner maximisation (the paper's §3, Figures 1 and 2): for a few
test examples, PGD from many random starts, recording the loss after every iteration of
every restart (Figure 2) and the final loss of each restart (Figure 1's histogram of local
maxima). Written as an .npz and TensorBoard histograms/scalars; summarised in print."""
import dataclasses
import os
from typing import Dict

import numpy as np
import tensorflow as tf

from common import files, losses
from common.attacks import pgd
from common.data import Split
from common.errors import NonFiniteLogits

# A final loss this many interquartile ranges beyond the quartiles is an outlier (Tukey's
# "far out"): a restart that found a much better (or worse) maximum than the others.
OUTLIER_IQRS = 3.0
OUTPUT_FILE = 'landscape.npz'  # in output_dir


def trace_losses(model, split: Split, params: pgd.PGDParams, restarts: int, seed: int,
                 batch_size: int, jit_compile: bool = False,
                 name: str = 'the model') -> np.ndarray:
  """xent after each PGD iteration of each restart: [examples, restarts, steps + 1].
  jit_compile: the traced steps compiled by XLA (the random starts drawn before, by TF)."""
  params = dataclasses.replace(params, random_start=True)
  model_fn = lambda x: model(x, training=False)
  trace = tf.function(lambda x, y, start: pgd.pgd_trace(
      model_fn, x, y, params, loss_fn=losses.xent, start=start)[1], jit_compile=jit_compile)

  @tf.function(reduce_retracing=True)
  def run(x, y, chunk):
    seed_of_chunk = tf.stack([tf.constant(seed, tf.int64), chunk])
    return trace(x, y, pgd.starting_points(x, params, seed_of_chunk)[0])

  # Every (example, restart) pair is one row of a batch: example-major order.
  x = np.repeat(split.images, restarts, axis=0)
  y = np.repeat(split.labels, restarts, axis=0)
  traces = [run(x[i:i + batch_size], y[i:i + batch_size],
                tf.constant(i, tf.int64)).numpy()
            for i in range(0, len(x), batch_size)]
  traces = np.concatenate(traces, axis=1).T.reshape(len(split), restarts, -1)
  not_finite = int(np.sum(~np.isfinite(traces).all(axis=(1, 2))))
  if not_finite:  # the cross-entropy of finite logits is finite
    raise NonFiniteLogits(name, not_finite, len(split), 'examples (their losses along PGD)')
  return traces


def summarise(final: np.ndarray) -> Dict[str, np.ndarray]:
  """Per example: min, median and max of the final losses, and the number of outliers."""
  q1, median, q3 = np.percentile(final, [25, 50, 75], axis=1)
  spread = OUTLIER_IQRS * (q3 - q1)
  outliers = ((final < (q1 - spread)[:, None]) | (final > (q3 + spread)[:, None])).sum(1)
  return {'min': final.min(1), 'median': median, 'max': final.max(1), 'outliers': outliers}


def write(traces: Dict[str, np.ndarray], labels: np.ndarray, output_dir: str) -> None:
  """landscape.npz ({name}_losses [examples, restarts, steps + 1], {name}_final, labels)
  and TensorBoard logs in output_dir/<name>: per example, a histogram of the losses at each
  iteration (step = iteration; Figure 2), their mean, and the final losses' histogram
  (Figure 1)."""
  os.makedirs(output_dir, exist_ok=True)
  arrays = {'labels': labels}
  for name, losses_ in traces.items():
    arrays[f'{name}_losses'] = losses_
    arrays[f'{name}_final'] = losses_[:, :, -1]
    writer = tf.summary.create_file_writer(os.path.join(output_dir, name))
    with writer.as_default():
      for example, per_restart in enumerate(losses_):
        for iteration in range(per_restart.shape[1]):
          tf.summary.histogram(f'example {example}/loss over restarts',
                               per_restart[:, iteration], step=iteration)
          tf.summary.scalar(f'example {example}/mean loss', per_restart[:, iteration].mean(),
                            step=iteration)
        tf.summary.histogram(f'example {example}/final loss (local maxima)',
                             per_restart[:, -1], step=0, buckets=50)
    writer.close()
  files.save_npz(os.path.join(output_dir, OUTPUT_FILE), **arrays)
