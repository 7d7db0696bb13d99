"""The Carlini–Wagner attacks against their authors' code, carlini/nn_robust_attacks
(`l2_attack.py`, `li_attack.py`, `l0_attack.py`, TF1), on the same model, images and
settings, one after the other on this machine. Prints, per attack: how often both succeed or
both fail, the per-example distortion of each and the median relative difference where both
succeed (ℓ0: the mean relative difference of the changed-pixel counts), and both wall times
with their ratio.

The authors' modules run unchanged under TensorFlow 2 in graph mode: in their own process,
`tensorflow` resolves to `tensorflow.compat.v1` for them, with eager execution off. Their
pixels are in [-0.5, 0.5]: their model is ours behind a shift of 0.5 (the network's forward
pass written in TF ops from the same weights), and their results are shifted back; ours run
on the challenge's [0, 1] pixels, which the tanh change of variables maps to the same w.

Untargeted, as both are run (`targeted=False`: the labels are the true classes). The
settings are the authors' defaults except where --max_iterations (and the ℓ0 attack's
per-constant iterations) reduce the budget, on both sides alike; ℓ2 runs the batch whole on
both sides (its early abort is the batch's). Without a copy of the authors' code this prints
why and exits 0.

--floor runs the authors' code a second time, on the same images moved by at most 1e-6 of
the pixel range (uniform noise, clipped): how far the reference lands from itself under
float-rounding-sized changes, the floor for any agreement with it. (The ℓ∞ and ℓ0 attacks'
τ and pixel-fixing schedules branch on thresholds: a rounding difference early in a solve
can end it at another constant.)

  git clone https://github.com/carlini/nn_robust_attacks /tmp/nn_robust_attacks
  python benchmarks/cw_reference.py --reference /tmp/nn_robust_attacks --attacks l2 \\
      --num_examples 100 --max_iterations 1000
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODULES = {'l2': ('l2_attack', 'CarliniL2'), 'linf': ('li_attack', 'CarliniLi'),
           'l0': ('l0_attack', 'CarliniL0')}
SMALL_CNN = ('conv1', 'conv2', 'conv3', 'conv4', 'fc1', 'fc2', 'logits')
MADRY = ('conv1', 'conv2', 'fc1', 'logits')


def skip(reason):
  print(f'skipped: {reason}')
  sys.exit(0)


def graph_forward(weights, network):
  """The network's logits in TF ops (graph mode) from `weights` ({'conv1/kernel': ...}): the
  function x (N, 28, 28, 1) in [0, 1] -> logits."""
  import tensorflow as tf
  v1 = tf.compat.v1
  const = {k: v1.constant(v) for k, v in weights.items()}
  conv = lambda x, name, padding: tf.nn.relu(tf.nn.conv2d(
      x, const[f'{name}/kernel'], 1, padding) + const[f'{name}/bias'])
  dense = lambda x, name: tf.matmul(x, const[f'{name}/kernel']) + const[f'{name}/bias']
  pool = lambda x: tf.nn.max_pool2d(x, 2, 2, 'VALID')

  def forward(x):
    if network == 'small_cnn':
      x = pool(conv(conv(x, 'conv1', 'VALID'), 'conv2', 'VALID'))
      x = pool(conv(conv(x, 'conv3', 'VALID'), 'conv4', 'VALID'))
      x = tf.reshape(x, [-1, 4 * 4 * 64])
      x = tf.nn.relu(dense(tf.nn.relu(dense(x, 'fc1')), 'fc2'))
    else:
      x = pool(conv(pool(conv(x, 'conv1', 'SAME')), 'conv2', 'SAME'))
      x = tf.nn.relu(dense(tf.reshape(x, [-1, 7 * 7 * 64]), 'fc1'))
    return dense(x, 'logits')
  return forward


# --- the authors' side (its own process: graph mode, tensorflow as compat.v1) ---------------

def reference_side(arrays_path, attack, reference_dir, settings, out_path):
  import tensorflow as tf
  v1 = tf.compat.v1
  v1.disable_eager_execution()
  sys.modules['tensorflow'] = v1  # their `import tensorflow as tf` is TF1's API
  sys.path.insert(0, reference_dir)
  module_name, class_name = MODULES[attack]
  module = __import__(module_name)
  arrays = np.load(arrays_path)
  weights = {k: arrays[k] for k in arrays.files if '/' in k}
  forward = graph_forward(weights, str(arrays['network']))

  class Model:  # their interface: sizes, and predict(x in [-0.5, 0.5]) -> logits
    image_size, num_channels, num_labels = 28, 1, 10

    def predict(self, x):
      return forward(x + 0.5)

  images = arrays['images'].reshape(-1, 28, 28, 1) - 0.5
  labels = np.eye(10, dtype=np.float32)[arrays['labels']]
  with v1.Session() as session:
    kwargs = dict(targeted=False, **settings)
    if attack == 'l2':
      kwargs['batch_size'] = len(images)
    attacker = getattr(module, class_name)(session, Model(), **kwargs)
    began = time.perf_counter()
    if attack == 'l2':
      adversarial = attacker.attack(images, labels)
    else:  # their attack(), one image at a time; ℓ0 answers None where it found nothing
      adversarial = []
      for image, label in zip(images, labels):
        found = attacker.attack_single(image, label)
        adversarial.append(image if found is None else np.asarray(found).reshape(image.shape))
    seconds = time.perf_counter() - began
  # Their failures: a grey image (ℓ2) or the clean one / None (ℓ∞, ℓ0): judged below by the
  # model's prediction, as success is.
  np.savez(out_path, adversarial=np.asarray(adversarial, np.float32).reshape(len(images), -1)
           + 0.5, seconds=seconds)


# --- ours, and the comparison --------------------------------------------------------------

def distortion(attack, x_adv, x):
  delta = (x_adv - x).reshape(len(x), -1)
  if attack == 'l2':
    return np.sqrt(np.sum(delta.astype(np.float64) ** 2, 1))
  if attack == 'linf':
    return np.abs(delta).max(1)
  return np.sum(np.abs(delta) > 1e-4, 1)  # pixels changed (one channel)


def run_reference(reference, attack, images, labels, network, weights, settings):
  """The authors' attack on the images in its own process: (adversarial images, seconds)."""
  with tempfile.TemporaryDirectory() as scratch:
    arrays = os.path.join(scratch, 'arrays.npz')
    out = os.path.join(scratch, 'theirs.npz')
    np.savez(arrays, images=images, labels=labels, network=network, **weights)
    subprocess.run([sys.executable, os.path.abspath(__file__), '--reference', reference,
                    '--reference_side', arrays, attack, json.dumps(settings), out],
                   check=True, stdout=subprocess.DEVNULL)
    theirs = np.load(out)
    return theirs['adversarial'], float(theirs['seconds'])


def compare(attack, whose, images, labels, their_adv, other_adv, predict):
  """Prints how often the reference and `whose` both succeed or both fail, and their
  distortions where both succeed."""
  clean = predict(images) == labels
  # The authors' ℓ2 code returns an all-zero (grey) image where it found nothing.
  returned = lambda adv: ~np.all(adv == 0.5, axis=1) if attack == 'l2' else np.ones(len(adv),
                                                                                     bool)
  their_success = clean & returned(their_adv) & (predict(their_adv) != labels)
  other_success = clean & returned(other_adv) & (predict(other_adv) != labels)
  both = their_success & other_success
  theirs_d, other_d = distortion(attack, their_adv, images), distortion(attack, other_adv,
                                                                        images)
  relative = np.abs(other_d[both] - theirs_d[both]) / np.maximum(theirs_d[both], 1e-12)
  print(f'  {whose}: success: reference {their_success.sum()} of {clean.sum()} '
        f'clean-correct, {whose} {other_success.sum()}; alike on '
        f'{np.mean(their_success == other_success) * 100:.1f}% of the examples')
  if both.any():
    figure = 'mean' if attack == 'l0' else 'median'
    middle = np.mean if attack == 'l0' else np.median
    print(f'    distortion where both succeed: reference mean {theirs_d[both].mean():.4f} '
          f'median {np.median(theirs_d[both]):.4f}; {whose} mean {other_d[both].mean():.4f} '
          f'median {np.median(other_d[both]):.4f}; {figure} relative difference '
          f'{100 * middle(relative):.2f}%')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--reference', default='',
                      help='a local copy of github.com/carlini/nn_robust_attacks')
  parser.add_argument('--model_dir', default=os.path.join(REPO, 'checkpoints', 'mnist',
                                                          'fast_robust'))
  parser.add_argument('--data_dir', default=os.path.join(REPO, '..', 'shared', 'data', 'mnist'))
  parser.add_argument('--attacks', default='l2,linf,l0')
  parser.add_argument('--num_examples', type=int, default=100,
                      help='test images (ℓ0: at most 20 of them)')
  parser.add_argument('--max_iterations', type=int, default=0,
                      help='Adam iterations per constant (0: the authors\' defaults: ℓ2 '
                           '10,000, ℓ∞ and ℓ0 1,000)')
  parser.add_argument('--floor', action='store_true',
                      help='also run the authors\' code on the images moved by 1e-6 (noise) '
                           'and compare it with itself')
  parser.add_argument('--reference_side', nargs=4, metavar=('ARRAYS', 'ATTACK', 'SETTINGS',
                                                            'OUT'), help=argparse.SUPPRESS)
  options = parser.parse_args()
  if options.reference_side:
    arrays, attack, settings, out = options.reference_side
    reference_side(arrays, attack, options.reference, json.loads(settings), out)
    return
  attacks = options.attacks.split(',')
  unknown = set(attacks) - set(MODULES)
  if unknown:
    sys.exit(f'error: unknown attack(s) {", ".join(sorted(unknown))}; use: '
             + ', '.join(MODULES))
  missing = [MODULES[a][0] for a in attacks
             if not os.path.isfile(os.path.join(options.reference, MODULES[a][0] + '.py'))]
  if missing:
    skip(f'no copy of the authors\' code at --reference "{options.reference}" (it needs '
         f'{", ".join(m + ".py" for m in missing)}: git clone '
         'https://github.com/carlini/nn_robust_attacks)')
  if not os.path.isfile(os.path.join(options.model_dir, 'config.json')):
    skip(f'no model at --model_dir "{options.model_dir}"')

  sys.path.insert(0, REPO)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from common import cli  # noqa: F401  (TensorFlow starts quietly)
  import tensorflow as tf
  from common import checkpoints, runtime
  from common.attacks import cw_l0, cw_l2, cw_linf
  from common.attacks.threat import ThreatModel
  from mnist_challenge.challenge import MNIST
  sys.path.insert(0, HERE)
  from timing import machine

  runtime.start()
  print(machine())
  config = MNIST.load_config(os.path.join(options.model_dir, 'config.json'),
                             overrides={'model_dir': options.model_dir,
                                        'data_dir': options.data_dir})
  network = config.model
  if network not in ('small_cnn', 'madry'):
    sys.exit(f'error: {options.model_dir} holds the {network} network; the graph forward '
             'pass here is the Small CNN\'s or Madry\'s')
  model = MNIST.build_model(config)
  path = checkpoints.latest(options.model_dir)
  if path is None:
    skip(f'no checkpoint in --model_dir "{options.model_dir}"')
  checkpoints.restore_model(model, path)
  layers = SMALL_CNN if network == 'small_cnn' else MADRY
  weights = {f'{layer}/{kind}': getattr(model.get_layer(layer), kind).numpy()
             for layer in layers for kind in ('kernel', 'bias')}
  test = MNIST.load_data(config).test
  model_fn = lambda v: model(v, training=False)
  box = ThreatModel('l2', 0.0)  # [0, 1]; C&W minimises the distance, ε plays no part
  ours = {'l2': lambda x, y, settings: cw_l2.cw_l2(model_fn, x, y, box, **settings),
          'linf': lambda x, y, settings: cw_linf.cw_linf(model_fn, x, y, box, **settings),
          'l0': lambda x, y, settings: cw_l0.cw_l0(model_fn, x, y, box, (28, 28, 1),
                                                   **settings)}

  for attack in attacks:
    n = min(options.num_examples, 20) if attack == 'l0' else options.num_examples
    images, labels = test.images[:n], test.labels[:n].astype(np.int64)
    settings = {'max_iterations': options.max_iterations} if options.max_iterations else {}
    described = settings or "the authors' defaults"
    print(f'\n{attack}: {path}, the first {n} test images, untargeted, settings {described}')
    their_adv, their_seconds = run_reference(options.reference, attack, images, labels,
                                             network, weights, settings)
    attack_fn = tf.function(lambda x, y: ours[attack](x, y, settings))
    began = time.perf_counter()
    our_adv, _ = attack_fn(tf.constant(images), tf.constant(labels))
    our_adv = our_adv.numpy()
    our_seconds = time.perf_counter() - began
    predict = lambda v: np.argmax(model_fn(tf.constant(v)).numpy(), 1)
    compare(attack, 'ours', images, labels, their_adv, our_adv, predict)
    if options.floor:
      moved = np.clip(images + np.random.default_rng(0).uniform(-1e-6, 1e-6, images.shape),
                      0.0, 1.0).astype(np.float32)
      again, _ = run_reference(options.reference, attack, moved, labels, network, weights,
                               settings)
      compare(attack, 'the reference on the images moved by 1e-6', images, labels, their_adv,
              again, predict)
    print(f'  time: reference {their_seconds:.1f} s, ours {our_seconds:.1f} s (with '
          f'tracing): ours {their_seconds / our_seconds:.2f}x faster')


if __name__ == '__main__':
  main()
