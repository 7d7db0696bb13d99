"""AutoAttack (standard or rand version, ℓ∞ or ℓ2) against its reference implementation,
fra31/auto-attack in PyTorch on the CPU: the same weights, images, norm, ε and batch size, one
after the other on this machine. Prints each attack's cumulative robust accuracy for both, how
many examples end alike (robust or broken) after each attack, and both wall times with their
ratio.

Three models:
* `shipped`: the model at --model_dir (by default the PGD-3 recipe's, checkpoints/mnist/fast:
  the model shipped until 2026-12-05, Madry's CNN; or the shipped Small CNN,
  checkpoints/mnist/fast_robust: both are ported to PyTorch in torch_reference.py);
* `masked`: the same weights behind a binarising input layer (pixels > 0.5 -> 1, else 0)
  whose input gradient is exactly zero: a model that masks its gradients, where APGD and FAB
  cannot move and Square decides (and where FAB's treatment of zero-gradient pixels shows);
* `randomised`: the same weights behind random resizing and padding (Xie et al. 2018, scaled
  to 28 pixels: common/defences/random_resize_pad.py; on the reference's side the same
  transform written in PyTorch, drawing from torch's generator, which the reference seeds),
  for the rand version (--version rand: APGD-CE and APGD-DLR with EOT over 20 draws). The
  draws differ between the sides by construction; compare with the reference's spread over
  seeds (--seeds 0,1,2).

The reference runs in its own process, under another Python that has torch (the reference
needs nothing else), from a local copy of its repository; it is no dependency of the project
or its tests. Without either, this prints why and exits 0.

  python3 -m venv /tmp/reference && /tmp/reference/bin/pip install "torch==2.13.0+cpu" numpy
  git clone https://github.com/fra31/auto-attack /tmp/auto-attack     # or any local copy
  python benchmarks/autoattack_reference.py --reference /tmp/auto-attack \\
      --reference_python /tmp/reference/bin/python --num_examples 1000
  python benchmarks/autoattack_reference.py --reference /tmp/auto-attack \\
      --reference_python /tmp/reference/bin/python --norm l2 --num_examples 200
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# Beside this script (torch-free until a network is built).
from torch_reference import (PORTED, keras_weights, mnist_network, python_with_torch,
                             require_ported_network, skip)


HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STANDARD = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
RAND = ('apgd-ce', 'apgd-dlr')
VERSIONS = {'standard': STANDARD, 'rand': RAND}
VARIANTS = ('shipped', 'masked', 'randomised')
REFERENCE_NORMS = {'linf': 'Linf', 'l2': 'L2'}


# --- the reference's side (runs under --reference_python; imports torch, not TensorFlow) ---

def resize_and_pad(x):
  """common/defences/random_resize_pad.py in PyTorch, on NCHW images, drawing from torch's
  global generator: r uniform in [round(S·299/331), S − 1], the image shrunk to r × r by
  nearest neighbour (source ⌊(i − offset)·S / r⌋) and zero-padded to S × S at offsets uniform
  in [0, S − r]."""
  import torch
  n, c, s, _ = x.shape
  r = torch.randint(int(round(s * 299 / 331)), s, (n,))
  unit = torch.rand(2, n)
  room = (s - r + 1).float()
  top = torch.minimum((unit[0] * room).floor().long(), s - r)
  left = torch.minimum((unit[1] * room).floor().long(), s - r)
  positions = torch.arange(s)[None, :]

  def source(offset):
    inside = (positions >= offset[:, None]) & (positions < (offset + r)[:, None])
    index = torch.div((positions - offset[:, None]) * s, r[:, None], rounding_mode='floor')
    return index.clamp(0, s - 1), inside

  rows, rows_inside = source(top)
  columns, columns_inside = source(left)
  picked = x.gather(2, rows[:, None, :, None].expand(n, c, s, s))
  picked = picked.gather(3, columns[:, None, None, :].expand(n, c, s, s))
  return picked * (rows_inside[:, None, :, None] & columns_inside[:, None, None, :]).float()


def reference_side(arrays_path, variant, reference_dir, batch_size, seed, norm, attacks,
                   out_path, version, iterations):
  import torch
  sys.path.insert(0, reference_dir)
  from autoattack import AutoAttack
  from autoattack import state as reference_state

  arrays = np.load(arrays_path)
  tensor = lambda name: torch.from_numpy(arrays[name])

  masked = lambda x: (x > 0.5).float().detach() + 0.0 * x  # the gradient is exactly zero
  preprocess = {'masked': masked, 'randomised': resize_and_pad}.get(variant)
  model = mnist_network(arrays, str(arrays['network']), preprocess).eval()

  # The robust flags after each attack, read where the reference records an attack as run.
  after = {}
  record = reference_state.EvaluationState.add_run_attack

  def add_run_attack(self, attack):
    after[attack] = (self.robust_flags.numpy().copy(), time.perf_counter())
    return record(self, attack)
  reference_state.EvaluationState.add_run_attack = add_run_attack

  images = tensor('images').reshape(-1, 1, 28, 28)
  labels = tensor('labels')
  # The version's settings (standard: one restart, 9 targets, 5,000 queries; rand: EOT 20)
  # for a part of the chain too: its 'custom' version would leave APGD-CE and FAB at 5
  # restarts.
  adversary = AutoAttack(model, norm=REFERENCE_NORMS[norm], eps=float(arrays['epsilon']),
                         version=version, seed=seed, device='cpu', verbose=False)
  adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = adversary.fab.n_iter = iterations
  adversary.square.n_queries = 50 * iterations
  adversary.attacks_to_run = list(attacks)
  began = time.perf_counter()
  adversary.run_standard_evaluation(images, labels, bs=batch_size)
  seconds = time.perf_counter() - began
  with open(out_path, 'w') as f:
    json.dump({'seconds': seconds, 'threads': torch.get_num_threads(),
               'torch': torch.__version__,
               'robust': {a: flags.tolist() for a, (flags, _) in after.items()},
               'at': {a: at - began for a, (_, at) in after.items()}}, f)


# --- ours, and the comparison --------------------------------------------------------------

def ours(model_fn, images, labels, epsilon, batch_size, seed, norm, attacks, version,
         iterations):
  from common.attacks import autoattack
  seconds_per_attack, began = {}, time.perf_counter()
  attacker = autoattack.AutoAttack(model_fn, epsilon, 0.0, 1.0, (28, 28, 1), attacks,
                                   batch_size, seed, log=lambda *a, **k: None, norm=norm,
                                   version=version, **autoattack.budget(iterations))
  robust = {}
  report = attacker.run(images, labels)
  seconds = time.perf_counter() - began
  # Per attack: robust if no attack up to it broke the example (and clean-correct).
  clean = report.robust | (report.broken_by != '')
  order = {name: i for i, name in enumerate(attacks)}
  for name in attacks:
    broken_by_now = np.array([b != '' and order[b] <= order[name] for b in report.broken_by])
    robust[name] = clean & ~broken_by_now
  for outcome in report.outcomes:
    seconds_per_attack[outcome.attack] = outcome.seconds
  return robust, seconds, seconds_per_attack


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--reference', default='',
                      help='a local copy of github.com/fra31/auto-attack (its autoattack/ package)')
  parser.add_argument('--reference_python', default='',
                      help='a Python with torch for the reference (default: this one)')
  parser.add_argument('--model_dir', default=os.path.join(REPO, 'checkpoints', 'mnist', 'fast'),
                      help='a Madry-CNN or Small-CNN checkpoint (default: the one '
                           'configs/fast.json trains; checkpoints/mnist/fast_robust is the '
                           'shipped Small CNN)')
  parser.add_argument('--data_dir', default=os.path.join(REPO, '..', 'shared', 'data', 'mnist'))
  parser.add_argument('--num_examples', type=int, default=1000)
  parser.add_argument('--batch_size', type=int, default=500)
  parser.add_argument('--seeds', default='0',
                      help='comma-separated: each variant runs once per seed, on both sides')
  parser.add_argument('--version', default='standard', choices=tuple(VERSIONS))
  parser.add_argument('--iterations', type=int, default=100,
                      help='APGD\'s and FAB\'s iterations, Square\'s queries / 50, on both sides '
                           '(the versions\': 100)')
  parser.add_argument('--attacks', default='',
                      help='a part of the version\'s chain, in its order (default: all)')
  parser.add_argument('--norm', default='linf', choices=tuple(REFERENCE_NORMS))
  parser.add_argument('--epsilon', type=float, default=0.0,
                      help='the radius (default: the challenge\'s for the norm: 0.3, 2.0)')
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--reference_side', nargs=3, metavar=('ARRAYS', 'VARIANT', 'OUT'),
                      help=argparse.SUPPRESS)
  options = parser.parse_args()
  chain = VERSIONS[options.version]
  asked = options.attacks.split(',') if options.attacks else list(chain)
  attacks = [a for a in chain if a in asked]
  if not attacks or len(attacks) != len(asked):
    sys.exit(f'error: --attacks "{options.attacks}": use a part of ' + ','.join(chain))
  seeds = [int(seed) for seed in options.seeds.split(',')]
  if options.reference_side:
    arrays, variant, out = options.reference_side
    reference_side(arrays, variant, options.reference, options.batch_size, seeds[0],
                   options.norm, attacks, out, options.version, options.iterations)
    return

  if not os.path.isfile(os.path.join(options.reference, 'autoattack', 'autoattack.py')):
    skip(f'no copy of the reference at --reference "{options.reference}" (it needs '
         'autoattack/autoattack.py: git clone https://github.com/fra31/auto-attack)')
  python = python_with_torch(options.reference_python)
  network = require_ported_network(
      options.model_dir, 'the default is the PGD-3 recipe\'s: python mnist_challenge/train.py '
      '--config mnist_challenge/configs/fast.json --data_dir ../shared/data/mnist makes it, '
      'about 14 minutes on a 2-core CPU; or pass checkpoints/mnist/fast_robust, the shipped '
      'model')
  variants = options.variants.split(',')
  unknown = set(variants) - set(VARIANTS)
  if unknown:
    sys.exit(f'error: unknown variant(s) {", ".join(sorted(unknown))}; use: '
             + ', '.join(VARIANTS))

  sys.path.insert(0, REPO)
  sys.path.insert(0, HERE)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from common import cli  # noqa: F401  (TensorFlow starts quietly)
  import tensorflow as tf
  from common import checkpoints, defences, runtime
  from mnist_challenge.challenge import MNIST
  from timing import machine

  runtime.start()
  print(machine())
  config = MNIST.load_config(os.path.join(options.model_dir, 'config.json'),
                             overrides={'model_dir': options.model_dir,
                                        'data_dir': options.data_dir, 'norm': options.norm})
  model = MNIST.build_model(config)
  path = checkpoints.latest(options.model_dir)
  checkpoints.restore_model(model, path)
  test = MNIST.load_data(config).test
  n = options.num_examples
  images, labels = test.images[:n], test.labels[:n].astype(np.int64)
  epsilon = options.epsilon or MNIST.attack_params(config).epsilon
  batch_size = min(options.batch_size, n)
  weights = keras_weights(model, PORTED[network])
  print(f'{path}, the first {n} test images, {options.norm} ε {epsilon:g}, batch {batch_size}, '
        f'seeds {options.seeds}, {options.version} version, {options.iterations} iterations; '
        f'the reference: {options.reference} under {python}')

  with tempfile.TemporaryDirectory() as scratch:
    arrays = os.path.join(scratch, 'arrays.npz')
    np.savez(arrays, images=images, labels=labels, epsilon=np.float32(epsilon),
             network=network, **weights)
    for variant in variants:
      finals = []  # per seed: (the reference's robust flags, ours) after the last attack
      for seed in seeds:
        out = os.path.join(scratch, f'{variant}-{seed}.json')
        subprocess.run([python, os.path.abspath(__file__), '--reference', options.reference,
                        '--batch_size', str(batch_size), '--seeds', str(seed),
                        '--norm', options.norm, '--attacks', ','.join(attacks),
                        '--version', options.version, '--iterations', str(options.iterations),
                        '--reference_side', arrays, variant, out], check=True)
        with open(out) as f:
          theirs = json.load(f)
        randomised = defences.Defended(model, defences.RandomResizePad((28, 28, 1), 1.0),
                                       seed=seed)

        def model_fn(x, variant=variant):
          if variant == 'masked':
            x = tf.stop_gradient(tf.cast(x > 0.5, tf.float32)) + 0.0 * x
          if variant == 'randomised':
            return randomised(x)
          return model(x, training=False)
        robust, seconds, per_attack = ours(model_fn, images, labels, epsilon, batch_size,
                                           seed, options.norm, attacks, options.version,
                                           options.iterations)
        finals.append(report(f'{variant}, seed {seed}', n, theirs, robust, seconds,
                             per_attack, attacks))
      if len(seeds) > 1:
        spread(variant, finals, attacks[-1])


def spread(variant, finals, last):
  """Over the seeds: both sides' mean robust accuracy after the last attack, and how alike
  the reference's runs are among themselves (its own randomness) beside ours against it."""
  references = np.array([theirs for theirs, _ in finals])
  ourselves = np.array([ours for _, ours in finals])
  pairs = [(i, j) for i in range(len(finals)) for j in range(i + 1, len(finals))]
  among = np.mean([np.mean(references[i] == references[j]) for i, j in pairs])
  across = np.mean([np.mean(ourselves[i] == references[j]) for i in range(len(finals))
                    for j in range(len(finals))])
  per_seed = lambda flags: ', '.join(f'{100 * f.mean():.1f}' for f in flags)
  print(f'\n{variant}, over {len(finals)} seeds, after {last}: reference '
        f'{100 * references.mean():.2f}% ({per_seed(references)}), ours '
        f'{100 * ourselves.mean():.2f}% ({per_seed(ourselves)}); examples alike: the '
        f'reference\'s runs among themselves {100 * among:.1f}%, ours with the reference\'s '
        f'{100 * across:.1f}%')


def report(variant, n, theirs, robust, seconds, per_attack, attacks):
  """Prints the comparison; returns the reference's and our robust flags after the last
  attack."""
  print(f'\n{variant} (torch {theirs["torch"]}, {theirs["threads"]} threads)')
  print(f'  {"after":<8} {"reference":>10} {"ours":>8} {"difference":>11} {"alike":>12}')
  previous_at, reference_robust = 0.0, None
  for name in attacks:
    # The reference records no run of an attack when no example is left to it.
    if name in theirs['robust']:
      reference_robust = np.array(theirs['robust'][name], bool)
    else:
      theirs['at'][name] = previous_at
    difference = 100 * (robust[name].mean() - reference_robust.mean())
    alike = int(np.sum(robust[name] == reference_robust))
    reference_seconds = theirs['at'][name] - previous_at
    previous_at = theirs['at'][name]
    print(f'  {name:<8} {100 * reference_robust.mean():9.2f}% {100 * robust[name].mean():7.2f}% '
          f'{difference:+10.2f} {alike:6d} of {n}   ({reference_seconds:.0f} s, ours '
          f'{per_attack[name]:.0f} s)')
  print(f'  time: reference {theirs["seconds"]:.0f} s, ours {seconds:.0f} s: ours '
        f'{theirs["seconds"] / seconds:.2f}x faster')
  return reference_robust, robust[attacks[-1]]


if __name__ == '__main__':
  main()
