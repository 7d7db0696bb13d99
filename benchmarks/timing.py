"""Timing helpers shared by the benchmarks: interleaved repetitions, medians."""
import os
import platform
import statistics
import time

import tensorflow as tf


def machine():
  return (f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
          f'TensorFlow {tf.__version__}')


def timed(fn):
  began = time.perf_counter()
  out = fn()
  tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t, out)  # wait
  return time.perf_counter() - began


def interleaved(variants, repeats):
  times = {name: [] for name in variants}
  for name, fn in variants.items():  # warm-up: tracing and first-call costs
    fn()
  for _ in range(repeats):
    for name, fn in variants.items():
      times[name].append(timed(fn))
  return {name: statistics.median(t) for name, t in times.items()}
