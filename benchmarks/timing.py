"""Timing helpers shared by the benchmarks: interleaved repetitions, medians."""
import os
import platform
import statistics
import time

import keras
import tensorflow as tf


def _cpu():
  """The CPU's model name and its bfloat16 units, from /proc/cpuinfo where there is one."""
  try:
    with open('/proc/cpuinfo') as f:
      info = f.read()
  except OSError:
    return platform.processor() or platform.machine()
  name = next((line.split(':', 1)[1].strip() for line in info.splitlines()
               if line.startswith('model name')), platform.machine())
  flags = set(next((line.split(':', 1)[1].split() for line in info.splitlines()
                    if line.startswith('flags')), []))
  units = [unit for flag, unit in (('avx512_bf16', 'AVX-512 BF16'), ('amx_bf16', 'AMX BF16'))
           if flag in flags]
  return f'{name} ({", ".join(units) or "no bfloat16 units"})'


def _gpus():
  """The GPUs' names (TensorFlow's device details), or 'no GPU'."""
  names = [tf.config.experimental.get_device_details(gpu).get('device_name', gpu.name)
           for gpu in tf.config.list_physical_devices('GPU')]
  return ', '.join(names) or 'no GPU'


def machine():
  return (f'machine: {_cpu()}, {os.cpu_count()} cores, {_gpus()}, TensorFlow '
          f'{tf.__version__}, Keras {keras.__version__}')


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
