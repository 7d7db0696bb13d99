"""YOPO, bilateral adversarial training and MMA against their authors' code: one training step
of each MNIST recipe (mnist_challenge/configs/<method>.json) on the same weights, images and
random draws, ours (the trainer's compiled replica step) beside theirs, one after the other
on this machine. Prints, per method, how far apart the examples trained on, the per-example
quantities (the bilateral labels, MMA's new ε) and the weight gradients are.

* YOPO: a1600012888/YOPO-You-Only-Propagate-Once, experiments/MNIST/YOPO-5-10
  (training_function.py's `train_one_epoch` over one batch, FastGradientLayerOneTrainer, their
  loss.py), on Madry's network split after conv1 + ReLU; η is theirs drawn as ours. Their
  first layer's gradient is compared twice: its Hamiltonian share (what the paper and ours
  use) and their total (with what their code lets the cross-entropy add to it).
* Bilateral: wjyouch/bilateral-adversarial-training, train.py's `adv_attack` and `adv_labels`
  (taken from the file and run as written; their session answers with the torch copy of our
  network; their pixels are in [-1, 1]: ours are mapped), the start drawn as ours; their loss
  (the mean soft-label cross-entropy of their graph) differentiated in torch.
* MMA: BorealisAI/mma_training (trainer.py's `Trainer.train_one_batch`, anpgd.py's ANPGD) with
  advertorch's LinfPGDAttack, each example's remembered ε and the random start given as ours;
  compared as written, with the trained point clipped to the pixel range (our one deliberate
  departure there; see common/mma.py), and with our AN-PGD's new ε and points in place of
  their attack's outputs (their loss and gradients at the points we train on).

Each reference runs twice, in float32 (compared with ours) and in float64: how far its two
runs are apart is the rounding floor, shown beside every figure (sign steps on near-zero
gradients and the bisection's verdicts on margins near 0 amplify rounding over many steps).

Gradients: our MNIST loss is summed over the batch where theirs is a mean (and YOPO's is ours
averaged over its m passes where theirs sums them): theirs are scaled by n (YOPO: n/m) before
the comparison; "relative" is ||ours - theirs|| / ||theirs|| per variable.

The references run in their own process, under another Python that has torch (what else
their code imports is stubbed: their config module, tqdm, advertorch's torchvision and PIL,
none used on this path), from local copies of the repositories; none is a dependency of the
project or its tests. Without them this prints why and exits 0.

  python3 -m venv /tmp/reference && /tmp/reference/bin/pip install "torch==2.13.0+cpu" numpy
  git clone https://github.com/a1600012888/YOPO-You-Only-Propagate-Once /tmp/yopo
  git clone https://github.com/wjyouch/bilateral-adversarial-training /tmp/bilateral
  git clone https://github.com/BorealisAI/mma_training /tmp/mma
  git clone https://github.com/BorealisAI/advertorch /tmp/advertorch
  python benchmarks/methods_reference.py --yopo /tmp/yopo --bilateral /tmp/bilateral \\
      --mma /tmp/mma --advertorch /tmp/advertorch --reference_python /tmp/reference/bin/python
"""
import argparse
import ast
import os
import subprocess
import sys
import tempfile
import types

import numpy as np

# Beside this script (torch-free until a network is built).
from torch_reference import (keras_gradients, keras_weights, madry_mnist, python_with_torch,
                             require_madry_cnn, skip)


HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
METHODS = ('yopo', 'bilateral', 'mma')
# What must be in each copy: {method: (option, a file it needs)}.
COPIES = {'yopo': ('yopo', os.path.join('experiments', 'MNIST', 'YOPO-5-10',
                                        'training_function.py')),
          'bilateral': ('bilateral', 'train.py'),
          'mma': ('mma', 'anpgd.py')}


# --- the references' side (runs under --reference_python; imports torch, not TensorFlow) ---

def nchw(torch, array):
  """Images, flat ([n, 784], as MNIST's data holds them) or NHWC, as a torch NCHW batch."""
  array = np.ascontiguousarray(array).reshape(len(array), 28, 28, -1)
  return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def nhwc(tensor):
  return tensor.detach().permute(0, 2, 3, 1).numpy()


def stub_module(name, **attributes):
  """A module in sys.modules holding `attributes` (with a spec: torch looks some up)."""
  import importlib.machinery
  module = types.ModuleType(name)
  module.__spec__ = importlib.machinery.ModuleSpec(name, None)
  module.__dict__.update(attributes)
  sys.modules[name] = module


def recording_step(optimizer, model, into):
  """optimizer, whose step() first stores every parameter's gradient (Keras layouts) in
  `into` (a learning rate of 0 leaves the weights alone)."""
  step = optimizer.step

  def record(*args, **kwargs):
    into.update(keras_gradients(model))
    return step(*args, **kwargs)
  optimizer.step = record
  return optimizer


def reference_yopo(arrays, copy, dtype):
  import torch
  experiment = os.path.join(copy, 'experiments', 'MNIST', 'YOPO-5-10')
  sys.path[:0] = [experiment, os.path.join(copy, 'lib')]
  epsilon, sigma = float(arrays['epsilon']), float(arrays['sigma'])
  outer, inner = int(arrays['outer']), int(arrays['inner'])
  # Their config module (argparse at import) and tqdm, stubbed with what the step reads.
  stub_module('config', config=types.SimpleNamespace(eps=epsilon))

  class Bar:
    def __init__(self, iterable):
      self.iterable = iterable

    def __iter__(self):
      return iter(self.iterable)

    set_description = set_postfix = lambda self, *args: None
  stub_module('tqdm', tqdm=Bar)
  import loss as their_loss
  import training_function as their_training

  x, y = nchw(torch, arrays['images']).to(dtype), torch.from_numpy(arrays['labels']).long()
  eta = nchw(torch, arrays['eta']).to(dtype)

  class TorchDrawingOurEta:  # their η ~ U(-ε, ε) is torch.FloatTensor(...).uniform_()
    class FloatTensor:
      def __init__(self, *shape):
        pass

      def uniform_(self, low, high):
        assert (low, high) == (-epsilon, epsilon)
        return eta.clone()

    def __getattr__(self, name):
      return getattr(torch, name)
  their_training.torch = TorchDrawingOurEta()

  net = madry_mnist(arrays).to(dtype).train()
  grads = {}
  # Their train.py: the cross-entropy with their weight penalty on the other layers, an
  # optimizer for those, another for the first layer (rates 0 here: nothing moves).
  criterion = their_loss.CrossEntropyWithWeightPenlty(net.other_layers, 'cpu', 5e-4)
  optimizer = recording_step(torch.optim.SGD(net.other_layers.parameters(), lr=0.0,
                                             momentum=0.9), net, grads)
  layer_one_optimizer = torch.optim.SGD(net.layer_one.parameters(), lr=0.0, momentum=0.9,
                                        weight_decay=5e-4)
  layer_one = their_training.FastGradientLayerOneTrainer(
      their_loss.Hamiltonian(net.layer_one, 5e-4), layer_one_optimizer, inner, sigma, epsilon)
  # The first layer's Hamiltonian share: what each call of their inner loop adds to conv1's
  # gradient (its backward reaches no other layer).
  shares, last = {'weight': 0.0, 'bias': 0.0}, {}
  inner_loop = layer_one.step

  def step(inp, p, eta_now):
    before = {k: (0.0 if getattr(net.conv1, k).grad is None
                  else getattr(net.conv1, k).grad.clone()) for k in shares}
    last['x'], eta_next = inner_loop(inp, p, eta_now)
    for k in shares:
      shares[k] = shares[k] + getattr(net.conv1, k).grad - before[k]
    return last['x'], eta_next
  layer_one.step = step
  their_training.train_one_epoch(net, [(x, y)], optimizer, criterion, layer_one, outer,
                                 DEVICE=torch.device('cpu'))
  return dict(x_adv=nhwc(last['x']),
              **{f'grad/{k}': v for k, v in grads.items()},
              **{'share/conv1/kernel': shares['weight'].permute(2, 3, 1, 0).numpy(),
                 'share/conv1/bias': shares['bias'].numpy()})


def reference_bilateral(arrays, copy, dtype):
  import torch
  sys.path.insert(0, copy)
  from utils import one_hot  # theirs
  path = os.path.join(copy, 'train.py')
  with open(path) as f:
    tree = ast.parse(f.read())
  functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)
               and node.name in ('adv_attack', 'adv_labels')]
  epsilon, step_size = float(arrays['epsilon']), float(arrays['step_size'])
  # Their flags (train.sh), ε and the step in their units: /255·2 of their [-1, 1] pixels.
  flags = types.SimpleNamespace(
      epsilon=255 * epsilon, step_size=255 * step_size, num_steps=int(arrays['num_steps']),
      random_start=True, targeted=True, target_type='MC', num_classes=10,
      multi=float(arrays['beta']), loss_type='xent')
  model = madry_mnist(arrays, preprocess=lambda z: (z + 1) / 2).to(dtype).eval()
  as_tensor = lambda array: torch.from_numpy(array).to(dtype)
  x_pl, y_loss, is_train, grad = object(), object(), object(), object()

  class Session:
    """Their graph's `grad`: of Σ softmax cross-entropy(logits, y_loss) w.r.t. x_pl."""
    def run(self, fetch, feed_dict):
      assert fetch is grad and feed_dict[is_train] is False
      z = nchw(torch, feed_dict[x_pl]).to(dtype).requires_grad_()
      target = as_tensor(feed_dict[y_loss])
      loss = -(target * torch.log_softmax(model(z), 1)).sum()
      return torch.autograd.grad(loss, z)[0].permute(0, 2, 3, 1).double().numpy()  # NHWC

  namespace = dict(np=np, FLAGS=flags, one_hot=one_hot, sess=Session(), grad=grad, x_pl=x_pl,
                   y_loss=y_loss, is_train=is_train)
  exec(compile(ast.Module(body=functions, type_ignores=[]), path, 'exec'), namespace)  # pylint: disable=exec-used

  nhwc_shape = (len(arrays['images']), 28, 28, 1)  # their images' layout
  z = 2.0 * arrays['images'].reshape(nhwc_shape).astype(np.float64) - 1.0
  labels = arrays['labels'].astype(np.int64)
  with torch.no_grad():
    logits = model(nchw(torch, z).to(dtype))
  nat_logits, nat_prob = logits.double().numpy(), torch.softmax(logits, 1).double().numpy()
  uniform = np.random.uniform  # their start: np.random.uniform(-ε, ε, shape), given as ours
  np.random.uniform = lambda low, high, size: 2.0 * arrays['noise'].reshape(size).astype(
      np.float64)
  try:
    z_adv = namespace['adv_attack'](nat_logits.copy(), z, labels)
  finally:
    np.random.uniform = uniform
  soft_labels = namespace['adv_labels'](nat_prob, labels)
  model.train()
  target = as_tensor(soft_labels)
  loss = -(target * torch.log_softmax(model(nchw(torch, z_adv).to(dtype)), 1)).sum(1)
  loss.mean().backward()
  return dict(x_adv=(z_adv + 1.0) / 2.0, labels=soft_labels,
              **{f'grad/{k}': v for k, v in keras_gradients(model).items()})


def reference_mma(arrays, copy, advertorch_copy, dtype):
  import torch
  sys.path[:0] = [copy, advertorch_copy]
  # advertorch.functional imports torchvision's transforms and PIL (for its JPEG defence),
  # which nothing here uses.
  stub_module('torchvision', transforms=types.SimpleNamespace(ToPILImage=lambda: None,
                                                              ToTensor=lambda: None))
  stub_module('PIL', Image=None)
  import advertorch.attacks.iterative_projected_gradient as advertorch_pgd
  from advertorch.utils import batch_multiply
  import anpgd
  import trainer as their_trainer
  import utils as their_utils

  x, y = nchw(torch, arrays['images']).to(dtype), torch.from_numpy(arrays['labels']).long()
  noise = nchw(torch, arrays['noise']).to(dtype)
  hinge = float(arrays['max_epsilon'])
  search_loss = their_utils.get_none_loss_fn('slm')
  given_x = nchw(torch, arrays['ours_x_adv']).to(dtype)
  given_epsilon = torch.from_numpy(arrays['ours_epsilon']).to(dtype)
  out = {}
  # As written; with the trained point clipped (our departure); with our AN-PGD's outputs in
  # place of theirs (their loss and gradients at the very points we train on).
  for suffix in ('', '_clipped', '_given'):
    model = madry_mnist(arrays).to(dtype).train()
    with torch.no_grad():
      correct = search_loss(model(x), y) < 0
    started = noise[correct]

    def given_start(delta, x_, ord_, eps, clip_min, clip_max, started=started):
      delta.data = batch_multiply(eps, started.clone())  # perturb() then clips x + δ
      return delta.data
    advertorch_pgd.rand_init_delta = given_start
    pgd = advertorch_pgd.LinfPGDAttack(
        model, loss_fn=their_utils.get_sum_loss_fn('slm'), eps=0., nb_iter=int(arrays['nb_iter']),
        eps_iter=0., rand_init=True, clip_min=0., clip_max=1.)
    adversary = anpgd.ANPGD(pgdadv=pgd, mineps=float(arrays['min_epsilon']),
                            maxeps=hinge * 1.05, num_search_steps=int(arrays['search_steps']),
                            eps_iter_scale=2.5, search_loss_fn=search_loss)
    if suffix == '_clipped':
      perturb = adversary.perturb
      adversary.perturb = lambda *args: (lambda xadv, eps: (torch.clamp(xadv, 0., 1.), eps))(
          *perturb(*args))
    elif suffix == '_given':
      adversary.perturb = lambda *args, correct=correct: (given_x[correct],
                                                          given_epsilon[correct])
    grads = {}
    optimizer = recording_step(torch.optim.SGD(model.parameters(), lr=0.0), model, grads)
    trainer = their_trainer.Trainer(
        model, 'cpu', torch.nn.CrossEntropyLoss(reduction='mean'),  # their 'elementwise_mean'
        optimizer, types.SimpleNamespace(targets=y.clone()),
        their_utils.get_none_loss_fn('xent'), hinge_maxeps=hinge,
        clean_loss_coeff=float(arrays['clean_weight']), disp_interval=None,
        adversary=adversary, verbose=False)
    trainer.dct_eps = dict(enumerate(arrays['remembered'].tolist()))
    data = x.clone()  # train_one_batch writes the examples trained on into it
    _, _, new_epsilon = trainer.train_one_batch(data, torch.arange(len(y)), y)
    out.update({f'epsilon{suffix}': new_epsilon.numpy(), f'x_adv{suffix}': nhwc(data),
                **{f'grad{suffix}/{k}': v for k, v in grads.items()}})
  return out


def reference_side(method, arrays_path, out_path, copy, advertorch_copy):
  import torch
  arrays = dict(np.load(arrays_path))
  out = {}
  # Their float32 run is the one compared; their float64 run beside it shows how far float32
  # rounding alone moves their own results (sign steps on near-zero gradients flip).
  for dtype, suffix in ((torch.float32, ''), (torch.float64, '@float64')):
    if method == 'yopo':
      results = reference_yopo(arrays, copy, dtype)
    elif method == 'bilateral':
      results = reference_bilateral(arrays, copy, dtype)
    else:
      results = reference_mma(arrays, copy, advertorch_copy, dtype)
    out.update({k + suffix: np.asarray(v, np.float32) for k, v in results.items()})
  np.savez(out_path, torch=np.array(torch.__version__), **out)


# --- ours, and the comparison --------------------------------------------------------------

def relative(ours, theirs):
  return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))


def apart(ours, theirs, key):
  """Max |difference| and the count apart by more than 1e-5: ours against their float32 run,
  and their float32 run against their float64 run (the rounding floor)."""
  ours = np.asarray(ours).reshape(-1)
  first, second = theirs[key].reshape(-1), theirs[key + '@float64'].reshape(-1)
  return [(np.abs(a - b).max(), int(np.sum(np.abs(a - b) > 1e-5)))
          for a, b in ((ours, first), (first, second))]


def pixels(name, ours, theirs, key):
  (worst, count), (floor_worst, floor_count) = apart(ours, theirs, key)
  print(f'  {name}: max |difference| {worst:.2e}, values apart by more than 1e-5: {count:,} of '
        f'{np.size(ours):,} (their float32 against their float64: {floor_worst:.2e}, '
        f'{floor_count:,})')


def gradients(name, ours, theirs, prefix, scale):
  print(f'  {name}, relative distance per variable (theirs x {scale:g}; in brackets their '
        'float32 against their float64):')
  print('    ' + ', '.join(
      f'{k} {relative(v, scale * theirs[f"{prefix}/{k}"]):.1e} '
      f'({relative(theirs[f"{prefix}/{k}"], theirs[f"{prefix}/{k}@float64"]):.1e})'
      for k, v in ours.items()))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  for method in METHODS:
    parser.add_argument(f'--{COPIES[method][0]}', default='',
                        help=f'a local copy of the {method} authors\' repository')
  parser.add_argument('--advertorch', default='',
                      help='a local copy of github.com/BorealisAI/advertorch (for MMA)')
  parser.add_argument('--reference_python', default='',
                      help='a Python with torch for the references (default: this one)')
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--model_dir', default=os.path.join(REPO, 'checkpoints', 'mnist', 'fast'),
                      help='a Madry-CNN checkpoint (default: the one configs/fast.json trains)')
  parser.add_argument('--data_dir', default=os.path.join(REPO, '..', 'shared', 'data', 'mnist'))
  parser.add_argument('--num_examples', type=int, default=100)
  parser.add_argument('--yopo_steps', default='',
                      help='m,n: YOPO-m-n instead of the recipe\'s (where trajectories part)')
  parser.add_argument('--mma_steps', type=int, default=0,
                      help='AN-PGD\'s PGD steps instead of the recipe\'s')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--reference_side', nargs=3, metavar=('METHOD', 'ARRAYS', 'OUT'),
                      help=argparse.SUPPRESS)
  options = parser.parse_args()
  if options.reference_side:
    method, arrays, out = options.reference_side
    reference_side(method, arrays, out, getattr(options, COPIES[method][0]),
                   options.advertorch)
    return

  methods = options.methods.split(',')
  unknown = set(methods) - set(METHODS)
  if unknown:
    sys.exit(f'error: unknown method(s) {", ".join(sorted(unknown))}; use: '
             + ', '.join(METHODS))
  for method in methods:
    option, needed = COPIES[method]
    if not os.path.isfile(os.path.join(getattr(options, option), needed)):
      skip(f'no copy of the {method} authors\' code at --{option} "{getattr(options, option)}"'
           f' (it needs {needed}; see this script\'s docstring for where to clone it)')
  if 'mma' in methods and not os.path.isfile(os.path.join(options.advertorch, 'advertorch',
                                                          'attacks', '__init__.py')):
    skip(f'no copy of advertorch at --advertorch "{options.advertorch}" (MMA\'s code needs it:'
         ' git clone https://github.com/BorealisAI/advertorch)')
  python = python_with_torch(options.reference_python)
  require_madry_cnn(options.model_dir)

  sys.path.insert(0, REPO)
  sys.path.insert(0, HERE)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from common import cli  # noqa: F401  (TensorFlow starts quietly)
  import tensorflow as tf
  from common import checkpoints, runtime, training
  from mnist_challenge.challenge import MNIST
  from timing import machine

  runtime.start()
  print(machine())
  n = options.num_examples
  path = checkpoints.latest(options.model_dir)
  with tempfile.TemporaryDirectory() as scratch:
    for method in methods:
      config = MNIST.load_config(
          os.path.join(REPO, 'mnist_challenge', 'configs', f'{method}.json'),
          {'data_dir': options.data_dir, 'model_dir': os.path.join(scratch, method)})
      if method == 'yopo' and options.yopo_steps:
        m, n_inner = (int(v) for v in options.yopo_steps.split(','))
        config = config.replace(yopo_outer_steps=m, yopo_inner_steps=n_inner)
      if method == 'mma' and options.mma_steps:
        config = config.replace(training_num_steps=options.mma_steps)
      trainer = training.Trainer(MNIST, config, log=lambda *a, **k: None)
      checkpoints.restore_model(trainer.model, path)
      test = MNIST.load_data(config).test
      images, labels = test.images[:n], test.labels[:n].astype(np.int64)
      params, weights = trainer.method.params, keras_weights(trainer.model)
      rng = np.random.default_rng([options.seed, METHODS.index(method)])  # the same alone
      epsilon = params.epsilon
      arrays = dict(images=images, labels=labels, epsilon=np.float32(epsilon), **weights)
      if method == 'yopo':
        arrays.update(eta=rng.uniform(-epsilon, epsilon, images.shape).astype(np.float32),
                      sigma=params.step_size, outer=trainer.method.outer_steps,
                      inner=trainer.method.inner_steps)
        inputs = (tf.constant(arrays['eta']),)
        about = (f'YOPO-{trainer.method.outer_steps}-{trainer.method.inner_steps}, '
                 f'σ {params.step_size:g}')
      elif method == 'bilateral':
        arrays.update(noise=rng.uniform(-epsilon, epsilon, images.shape).astype(np.float32),
                      step_size=params.step_size, num_steps=params.num_steps,
                      beta=trainer.method.beta)
        inputs = (tf.constant(images + arrays['noise']),)
        about = (f'R-MC-LA, β {trainer.method.beta:g}, {params.num_steps} step(s) of '
                 f'{params.step_size:g}')
      else:
        mma = trainer.method
        arrays.update(noise=rng.uniform(-1, 1, images.shape).astype(np.float32),
                      remembered=rng.uniform(0, mma.max_epsilon, n).astype(np.float32),
                      nb_iter=params.num_steps, min_epsilon=mma.min_epsilon,
                      max_epsilon=mma.max_epsilon, clean_weight=mma.clean_weight,
                      search_steps=mma.search_steps)
        inputs = (tf.constant(arrays['noise']),
                  tf.constant(np.maximum(arrays['remembered'], mma.min_epsilon)))
        about = (f'AN-PGD {params.num_steps} steps, {mma.search_steps} bisection steps, '
                 f'd_max {mma.max_epsilon:g}, remembered ε uniform in [0, d_max]')
      result = trainer._gradients(tf.constant(images), tf.constant(labels), inputs)  # pylint: disable=protected-access
      grads, x_adv, outputs = result[0], result[4].numpy(), result[5]
      if method == 'mma':
        arrays.update(ours_x_adv=x_adv, ours_epsilon=outputs[0].numpy())
      arrays_path = os.path.join(scratch, f'{method}.npz')
      out_path = os.path.join(scratch, f'{method}_theirs.npz')
      np.savez(arrays_path, **arrays)
      subprocess.run([python, os.path.abspath(__file__), '--reference_side', method,
                      arrays_path, out_path, f'--{COPIES[method][0]}',
                      getattr(options, COPIES[method][0]), '--advertorch',
                      options.advertorch], check=True)
      theirs = dict(np.load(out_path))
      index = {id(v): i for i, v in enumerate(trainer.model.trainable_variables)}
      ours = {name: grads[index[id(getattr(trainer.model.get_layer(name.split('/')[0]),
                                           name.split('/')[1]))]].numpy()
              for name in weights}
      print(f'\n{method} ({about}; ε {epsilon:g}; {path}, the first {n} test images; '
            f'torch {theirs["torch"]})')
      if method == 'yopo':
        m = trainer.method.outer_steps
        pixels('x + η after the last inner loop', x_adv, theirs, 'x_adv')
        gradients('gradients', {k: v for k, v in ours.items() if not k.startswith('conv1')},
                  theirs, 'grad', n / m)
        gradients('conv1 against their Hamiltonian share',
                  {k: v for k, v in ours.items() if k.startswith('conv1')}, theirs, 'share',
                  n / m)
        gradients('conv1 against their total',
                  {k: v for k, v in ours.items() if k.startswith('conv1')}, theirs, 'grad',
                  n / m)
      elif method == 'bilateral':
        from common.methods import bilateral
        natural = trainer.model(images, training=False)
        labels_ours = bilateral.adversarial_labels(natural, labels, trainer.method.beta).numpy()
        pixels('labels', labels_ours, theirs, 'labels')
        pixels('adversarial images', x_adv, theirs, 'x_adv')
        gradients('gradients', ours, theirs, 'grad', n)
      else:
        new_epsilon = outputs[0].numpy()
        for suffix, what in (('', 'as written'), ('_clipped', 'trained point clipped'),
                             ('_given', 'given our AN-PGD\'s new ε and points')):
          print(f' theirs {what}:')
          if suffix != '_given':
            print(f'  {int(np.sum(new_epsilon > 0))} examples attacked (correct), theirs '
                  f'{int(np.sum(theirs["epsilon" + suffix] > 0))}')
            pixels('new ε', new_epsilon, theirs, 'epsilon' + suffix)
            pixels('examples trained on', x_adv, theirs, 'x_adv' + suffix)
          gradients('gradients', ours, theirs, 'grad' + suffix, n)


if __name__ == '__main__':
  main()
