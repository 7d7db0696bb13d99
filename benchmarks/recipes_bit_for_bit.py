"""Does every training recipe train as it did at another revision, bit for bit? Each recipe
(each challenge's default config.json, every configs/*.json and the shipped models'
config.json files) is trained for a few steps on the same small generated data at this
checkout and at `--against` (a git revision, unpacked to a scratch directory), each in its
own process, one after the other; the final weights, optimizer slots and method state are
hashed and compared. A recipe only one side has is listed as such.

  python benchmarks/recipes_bit_for_bit.py --against 0f5b143
  python benchmarks/recipes_bit_for_bit.py --against 0f5b143 \\
      --set 'cifar10_challenge/configs/trades.json:trades_passes="one"' ...

`--set RECIPE:KEY=JSON` changes a key of one recipe on this side only (to show that a recipe
changed on purpose still computes the old step with the old settings).
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STEPS = 3


def recipes(root):
  found = [('mnist', None), ('cifar10', None)]
  for challenge, folder in (('mnist', 'mnist_challenge'), ('cifar10', 'cifar10_challenge')):
    configs = os.path.join(root, folder, 'configs')
    found += [(challenge, f'{folder}/configs/{name}') for name in sorted(os.listdir(configs))
              if name.endswith('.json')]
  shipped = os.path.join(root, 'checkpoints')
  for directory, _, names in sorted(os.walk(shipped)):
    if 'config.json' in names:
      challenge = os.path.relpath(directory, shipped).split(os.sep)[0]
      found.append((challenge, os.path.relpath(os.path.join(directory, 'config.json'), root)))
  return found


def hash_side(root, changes):
  """{recipe: sha256 of its weights after STEPS steps} for the tree at `root` (run there)."""
  sys.path[:0] = [root, os.path.join(root, 'tests')]
  os.chdir(root)
  from conftest import NON_WIDE, quiet, write_cifar, write_mnist  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from cifar10_challenge.challenge import CIFAR10  # pylint: disable=import-outside-toplevel
  from common import training  # pylint: disable=import-outside-toplevel
  from mnist_challenge.challenge import MNIST  # pylint: disable=import-outside-toplevel
  scratch = tempfile.mkdtemp()
  data = {'mnist': write_mnist(os.path.join(scratch, 'mnist')),
          'cifar10': write_cifar(os.path.join(scratch, 'cifar'))}
  hashes = {}
  for challenge_name, path in recipes(root):
    challenge = MNIST if challenge_name == 'mnist' else CIFAR10
    work = tempfile.mkdtemp(dir=scratch)
    overrides = dict(model_dir=os.path.join(work, 'model'), max_num_training_steps=STEPS,
                     num_output_steps=2, num_summary_steps=2, num_checkpoint_steps=STEPS,
                     training_batch_size=8, num_eval_examples=20, eval_batch_size=20,
                     robustness_check_steps=0, store_adv_path=os.path.join(work, 'a.npy'),
                     pred_path=os.path.join(work, 'p.npy'))
    if challenge is MNIST:
      overrides['data_dir'] = data['mnist']
    else:
      overrides.update(data_path=data['cifar10'], filters=NON_WIDE)
    name = path or f'{challenge_name} defaults'
    overrides.update(changes.get(name, {}))
    config = challenge.load_config(path or challenge.default_config_path, overrides)
    training.train(challenge, config, log=quiet)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(config.model_dir))
    digest = hashlib.sha256()
    for key in sorted(reader.get_variable_to_shape_map()):
      if key.startswith('save_counter') or '_CHECKPOINTABLE_OBJECT_GRAPH' in key:
        continue
      digest.update(key.encode())
      digest.update(np.ascontiguousarray(reader.get_tensor(key)).tobytes())
    hashes[name] = digest.hexdigest()
  return hashes


def run_side(root, changes):
  with tempfile.NamedTemporaryFile('r', suffix='.json') as out:
    subprocess.run([sys.executable, os.path.abspath(__file__), '--side', root, out.name,
                    json.dumps(changes)], check=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES=''))
    return json.load(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--against', help='a git revision')
  parser.add_argument('--set', action='append', default=[], metavar='RECIPE:KEY=JSON')
  parser.add_argument('--side', nargs=3, help=argparse.SUPPRESS)
  options = parser.parse_args()
  if options.side:
    root, out, changes = options.side
    hashes = hash_side(root, json.loads(changes))
    with open(out, 'w') as f:
      json.dump(hashes, f)
    return
  if not options.against:
    parser.error('--against REVISION is required')
  changes = {}
  for item in options.set:
    recipe, _, setting = item.partition(':')
    key, _, value = setting.partition('=')
    changes.setdefault(recipe, {})[key] = json.loads(value)
  with tempfile.TemporaryDirectory() as old_root:
    archive = subprocess.run(['git', '-C', REPO, 'archive', options.against],
                             check=True, capture_output=True).stdout
    with tempfile.TemporaryFile() as f:
      f.write(archive)
      f.seek(0)
      with tarfile.open(fileobj=f) as tar:
        tar.extractall(old_root, filter='data')
    theirs = run_side(old_root, {})
  ours = run_side(REPO, changes)
  print(f'{STEPS} training steps per recipe, this checkout against {options.against}:')
  different = 0
  for name in sorted(set(ours) | set(theirs)):
    if name not in theirs or name not in ours:
      verdict = 'only here' if name in ours else f'only at {options.against}'
    else:
      verdict = 'same' if ours[name] == theirs[name] else 'DIFFERENT'
      different += verdict == 'DIFFERENT'
    setting = f' (with {json.dumps(changes[name])})' if name in changes else ''
    print(f'  {verdict:>10}  {name}{setting}')
  sys.exit(1 if different else 0)


if __name__ == '__main__':
  main()
