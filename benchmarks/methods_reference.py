"""YOPO, bilateral adversarial training, MMA, TRADES, Jacobian and Cross-Lipschitz
regularisation against their authors' code: one training step
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
  departure there; see common/methods/mma.py), and with our AN-PGD's new ε and points in place of
  their attack's outputs (their loss and gradients at the points we train on).
* TRADES: yaodongyu/TRADES, trades.py's `trades_loss` (l_inf) run as written on the torch copy
  of Madry's CNN, its start x + 0.001·N(0, 1) drawn as ours (their torch.randn answers our
  draw, `.cuda()` an identity); their loss (CE mean + β · summed KL / n) differentiated.
  Madry's CNN has no batch norm or dropout: their three training-mode passes (x, x', x) are
  our one pass over x serving both terms.
* Jacobian: facebookresearch/jacobian_regularizer, jacobian/jacobian.py's JacobianReg run as
  written in their examples/mnist.py's step (CE mean + lambda_JR · R), their projections'
  draws (torch.randn(B, C), normalised per row) answered by ours; λ ours (the Jacobian of
  [0, 1] pixels on both sides); --jacobian_projections 0 compares their exact mode (n = -1).
* Cross-Lipschitz: max-andr/cross-lipschitz (TensorFlow 1): regularizers.py's
  `cross_lipschitz` and worker.py's loss and gradients (its graph block, taken from the file)
  run as written under tf.compat.v1 graph mode, on Madry's CNN written as a subclass of their
  BasicNN (their CNN classes do not run as published: the network is ours, the regulariser
  and loss theirs); given our batch trained on (the recipe's half of PGD examples: the
  comparison is of the regulariser and the loss, not of the attack), at the recipe's λ and
  at their flag's default 0.1, where the regulariser's share is larger.

Each reference runs twice, in float32 (compared with ours) and in float64 (Cross-Lipschitz:
their module's tf answers float64 for float32): how far its two runs are apart is the
rounding floor, shown beside every figure (sign steps on near-zero
gradients and the bisection's verdicts on margins near 0 amplify rounding over many steps).

Gradients: our MNIST loss is summed over the batch where theirs is a mean (and YOPO's is ours
averaged over its m passes where theirs sums them): theirs are scaled by n (YOPO: n/m) before
the comparison; "relative" is ||ours - theirs|| / ||theirs|| per variable.

The references run in their own process, under another Python that has torch (what else
their code imports is stubbed: their config module, tqdm, advertorch's torchvision and PIL,
none used on this path; Cross-Lipschitz's under this Python's TensorFlow), from local copies
of the repositories; none is a dependency of the project or its tests. Without them this
prints why and exits 0.

  python3 -m venv /tmp/reference && /tmp/reference/bin/pip install "torch==2.13.0+cpu" numpy
  git clone https://github.com/a1600012888/YOPO-You-Only-Propagate-Once /tmp/yopo
  git clone https://github.com/wjyouch/bilateral-adversarial-training /tmp/bilateral
  git clone https://github.com/BorealisAI/mma_training /tmp/mma
  git clone https://github.com/BorealisAI/advertorch /tmp/advertorch
  git clone https://github.com/yaodongyu/TRADES /tmp/trades
  git clone https://github.com/facebookresearch/jacobian_regularizer /tmp/jacobian
  git clone https://github.com/max-andr/cross-lipschitz /tmp/cross_lipschitz
  python benchmarks/methods_reference.py --yopo /tmp/yopo --bilateral /tmp/bilateral \\
      --mma /tmp/mma --advertorch /tmp/advertorch --trades /tmp/trades \\
      --jacobian /tmp/jacobian --cross_lipschitz /tmp/cross_lipschitz \\
      --reference_python /tmp/reference/bin/python
"""
import argparse
import ast
import os
import subprocess
import sys
import tempfile
import types
import warnings

import numpy as np

# Beside this script (torch-free until a network is built).
from torch_reference import (LAYERS, keras_gradients, keras_weights, madry_mnist,
                             python_with_torch, require_madry_cnn, skip)


HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
METHODS = ('yopo', 'bilateral', 'mma', 'trades', 'jacobian', 'cross_lipschitz')
IN_TENSORFLOW = ('cross_lipschitz',)  # references run under this Python, not torch's
# What must be in each copy: {method: (option, a file it needs)}.
COPIES = {'yopo': ('yopo', os.path.join('experiments', 'MNIST', 'YOPO-5-10',
                                        'training_function.py')),
          'bilateral': ('bilateral', 'train.py'),
          'mma': ('mma', 'anpgd.py'),
          'trades': ('trades', 'trades.py'),
          'jacobian': ('jacobian', os.path.join('jacobian', 'jacobian.py')),
          'cross_lipschitz': ('cross_lipschitz', 'regularizers.py')}
KERAS_NAMES = tuple(f'{layer}/{kind}' for layer in LAYERS for kind in ('kernel', 'bias'))
CL_DEFAULT_LAMBDA = 0.1  # their --lmbd's default (worker.py)


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


def reference_trades(arrays, copy, dtype):
  import torch
  sys.path.insert(0, copy)
  import trades as their_trades
  warnings.filterwarnings('ignore', 'size_average and reduce args')  # their KLDivLoss's
  x, y = nchw(torch, arrays['images']).to(dtype), torch.from_numpy(arrays['labels']).long()
  out = {}
  # As written, from our start; and their loss at our x' (their search run for 0 steps from
  # a start of (our x' - x) / 0.001, so that x + 0.001 · it is our x' up to rounding).
  for suffix, steps, noise in (
      ('', int(arrays['num_steps']), nchw(torch, arrays['noise']).to(dtype)),
      ('_given', 0, (nchw(torch, arrays['ours_x_adv']).to(dtype) - x) / 0.001)):

    class Drawn:  # what their torch.randn(...) answers: .cuda() (no GPU here) gives the draw
      def cuda(self, noise=noise):
        return noise.clone()

    class TorchDrawingOurNoise:  # their start: x + 0.001 * torch.randn(x.shape).cuda()
      def randn(self, shape, noise=noise):
        assert tuple(shape) == tuple(noise.shape), (tuple(shape), tuple(noise.shape))
        return Drawn()

      def __getattr__(self, name):
        return getattr(torch, name)
    their_trades.torch = TorchDrawingOurNoise()
    trained_on = {}

    def variable(tensor, trained_on=trained_on, **kwargs):  # their x_adv before the loss
      trained_on['x_adv'] = torch.autograd.Variable(tensor, **kwargs)
      return trained_on['x_adv']
    their_trades.Variable = variable

    model = madry_mnist(arrays).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # they only zero its gradients
    loss = their_trades.trades_loss(
        model, x, y, optimizer, step_size=float(arrays['step_size']),
        epsilon=float(arrays['epsilon']), perturb_steps=steps, beta=float(arrays['beta']),
        distance='l_inf')
    loss.backward()
    out.update({f'x_adv{suffix}': nhwc(trained_on['x_adv']), f'loss{suffix}': loss.item(),
                **{f'grad{suffix}/{k}': v for k, v in keras_gradients(model).items()}})
  return out


def reference_jacobian(arrays, copy, dtype):
  import torch
  warnings.filterwarnings('ignore', 'This overload of addcdiv is deprecated')  # theirs
  sys.path.insert(0, copy)
  import jacobian.jacobian as their_jacobian
  count = int(arrays['projections'])
  draws = [torch.from_numpy(v).to(dtype) for v in arrays['directions']] if count else []

  class TorchDrawingOurProjections:  # their v = torch.randn(B, C), then normalised per row
    used = 0

    def randn(self, *shape):
      draw = draws[self.used]
      assert tuple(shape) == tuple(draw.shape), (shape, tuple(draw.shape))
      self.used += 1
      return draw.clone()

    def __getattr__(self, name):
      return getattr(torch, name)
  proxy = their_jacobian.torch = TorchDrawingOurProjections()
  saved = torch.get_default_dtype()
  torch.set_default_dtype(dtype)  # their torch.zeros(B, C) (the exact mode's) follows it
  try:
    reg = their_jacobian.JacobianReg(n=count or -1)  # 0: their exact mode, n = -1
    lambda_JR = float(arrays['lambda'])
    model = madry_mnist(arrays).to(dtype).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    criterion = torch.nn.CrossEntropyLoss()
    data = nchw(torch, arrays['trained']).to(dtype)
    target = torch.from_numpy(arrays['labels']).long()
    # Their examples/mnist.py's training step (lines 173-183), optimizer.step() left out.
    data.requires_grad = True  # this is essential!
    optimizer.zero_grad()
    output = model(data)  # forward pass
    loss_super = criterion(output, target)  # supervised loss
    loss_JR = reg(data, output)  # Jacobian regularization
    loss = loss_super + lambda_JR * loss_JR  # full loss
    loss.backward()  # computes gradients
  finally:
    torch.set_default_dtype(saved)
  assert proxy.used == len(draws), 'not every given projection was drawn'
  out = dict(loss=loss.item(), ce=loss_super.item(), R=loss_JR.item(),
             **{f'grad/{k}': v for k, v in keras_gradients(model).items()})
  model.zero_grad()  # the cross-entropy's alone: how much the regulariser adds
  criterion(model(data), target).backward()
  out.update({f'grad_ce/{k}': v for k, v in keras_gradients(model).items()})
  return out


def reference_cross_lipschitz(arrays, copy, dtype):
  """Their graph (TF1, under tf.compat.v1 in graph mode; this Python, not torch): worker.py's
  graph block from tf.reset_default_graph() to `grads = tf.gradients(loss,
  trainable_variables)`, taken from the file and run as written, with their regularizers.py
  and models.py imported as they are; the network ours (Madry's CNN as a subclass of their
  BasicNN: their CNNs do not run as published). Their λ (hps.lmbd) is fed, so one graph
  serves every λ. float64: their module's `tf` answers float64 for float32 and "float"
  (their placeholders and n_summations' cast), nothing else changed."""
  import tensorflow
  tensorflow.get_logger().setLevel('ERROR')  # their TF 1.2 calls' deprecation notices
  tf = tensorflow.compat.v1
  tf.disable_eager_execution()
  sys.path.insert(0, copy)
  real = sys.modules['tensorflow']
  sys.modules['tensorflow'] = tf  # their `import tensorflow as tf` (TF 1.2)
  try:
    import models as their_models
    import regularizers as their_regularizers
  finally:
    sys.modules['tensorflow'] = real

  class Float64:
    float32 = tf.float64

    def placeholder(self, dtype, *args, **kwargs):
      return tf.placeholder(tf.float64 if dtype in ('float', tf.float32) else dtype, *args,
                            **kwargs)

    def __getattr__(self, name):
      return getattr(tf, name)
  their_tf = tf if dtype == np.float32 else Float64()
  their_regularizers.tf = their_tf

  path = os.path.join(copy, 'worker.py')
  with open(path) as f:
    tree = ast.parse(f.read())
  block = next(node for node in tree.body if isinstance(node, ast.With)
               and ast.unparse(node.items[0].context_expr) == 'tf.device(device)').body
  last = next(i for i, node in enumerate(block) if isinstance(node, ast.Assign)
              and ast.unparse(node.targets[0]) == 'grads')
  block = block[:last + 1]
  assert ast.unparse(block[0]) == 'tf.reset_default_graph()', ast.unparse(block[0])
  functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)
               and node.name in ('f_activation', 'gradients_for_matlab')]
  weights = {k: arrays[k].astype(dtype) for k in KERAS_NAMES}

  class MadryCnn(their_models.BasicNN):
    """Madry's CNN (ours: conv 32 5x5 same + ReLU, max-pool 2, conv 64 5x5 same + ReLU,
    max-pool 2, dense 1024 + ReLU, dense 10; NHWC) in their BasicNN's manner."""

    def __init__(self, flag_train, flag_take_grads, hps):
      super().__init__(flag_train, flag_take_grads, hps)
      self.vars = {k: tf.Variable(v, name='weights' if k.endswith('kernel') else 'biases')
                   for k, v in weights.items()}

    def build_graph(self, x):
      v, act = self.vars, self.hps.activation
      pool = lambda h: tf.nn.max_pool(h, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1],
                                      padding='SAME')
      h = pool(act(tf.nn.conv2d(x, v['conv1/kernel'], [1, 1, 1, 1], 'SAME') + v['conv1/bias']))
      h = pool(act(tf.nn.conv2d(h, v['conv2/kernel'], [1, 1, 1, 1], 'SAME') + v['conv2/bias']))
      h = act(tf.matmul(tf.reshape(h, [-1, 7 * 7 * 64]), v['fc1/kernel']) + v['fc1/bias'])
      self.f = tf.matmul(h, v['logits/kernel']) + v['logits/bias']
      return self.f

  # Their hps (worker.py's flags and lines 96-147) for MNIST, as the block reads it; their
  # adversarial training (a numpy attack outside the graph) off: the batch given is ours.
  hps = types.SimpleNamespace(
      nn_type='cnn', reg_type='cross_lipschitz', dataset='mnist', augm_flag=False,
      adv_train_flag=False, activation_type='relu', n_classes=10, height=28, width=28,
      n_colors=1, real_height=28, real_width=28, n_input_real=784, as_image=True,
      lr=0.2, lr_decay_scheme='manual', lr_decay_n_updates=[1, 2])  # lr: their unused lr_tf
  namespace = dict(tf=their_tf, np=np, hps=hps, models_dict={'cnn': MadryCnn},
                   regularizers=their_regularizers, augmentation=None)
  run = lambda body: exec(  # pylint: disable=exec-used
      compile(ast.Module(body=body, type_ignores=[]), path, 'exec'), namespace)
  run(functions)
  hps.activation = namespace['f_activation'](hps)  # Madry's ReLU (theirs: softplus)
  run(block[:1])  # tf.reset_default_graph()
  hps.lmbd = tf.placeholder(dtype, [], name='lmbd')  # their float: fed, one graph for all λ
  run(block[1:])
  model, trainable = namespace['model'], namespace['trainable_variables']
  assert len(trainable) == len(KERAS_NAMES), [v.name for v in trainable]
  index = {id(v): i for i, v in enumerate(trainable)}
  grads = [namespace['grads'][index[id(model.vars[k])]] for k in KERAS_NAMES]
  x = arrays['trained'].reshape(-1, 28, 28, 1).astype(dtype)
  labels = np.eye(10, dtype=dtype)[arrays['labels']]
  config = tf.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1)
  out = {}
  with tf.Session(config=config) as session:
    session.run(tf.global_variables_initializer())
    # The recipe's λ, their flag's default, and 0 (the cross-entropy's gradients alone).
    for name, lmbd in (('', arrays['lambda']), ('_default', arrays['default_lambda']),
                       ('_ce', 0.0)):
      loss, reg, values = session.run(
          (namespace['loss'], namespace['reg'], grads),
          {namespace['X']: x, namespace['Y']: labels, hps.lmbd: lmbd,
           namespace['flag_train']: True, namespace['flag_take_grads']: False})
      out.update({f'loss{name}': loss, f'reg{name}': reg,
                  **{f'grad{name}/{k}': v for k, v in zip(KERAS_NAMES, values)}})
  return out


def reference_side(method, arrays_path, out_path, copy, advertorch_copy):
  arrays = dict(np.load(arrays_path))
  out = {}
  if method == 'cross_lipschitz':  # TensorFlow, in graph mode
    for dtype, suffix in ((np.float32, ''), (np.float64, '@float64')):
      results = reference_cross_lipschitz(arrays, copy, dtype)
      out.update({k + suffix: np.asarray(v, np.float32) for k, v in results.items()})
    import tensorflow
    np.savez(out_path, tensorflow=np.array(tensorflow.__version__), **out)
    return
  import torch
  # Their float32 run is the one compared; their float64 run beside it shows how far float32
  # rounding alone moves their own results (sign steps on near-zero gradients flip).
  for dtype, suffix in ((torch.float32, ''), (torch.float64, '@float64')):
    if method == 'yopo':
      results = reference_yopo(arrays, copy, dtype)
    elif method == 'bilateral':
      results = reference_bilateral(arrays, copy, dtype)
    elif method == 'mma':
      results = reference_mma(arrays, copy, advertorch_copy, dtype)
    elif method == 'trades':
      results = reference_trades(arrays, copy, dtype)
    else:
      results = reference_jacobian(arrays, copy, dtype)
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


def share(name, theirs, prefix, natural):
  """How much of their gradient the regulariser gives: ||g - g_CE|| / ||g|| per variable."""
  print(f'  {name} (||gradient - the cross-entropy\'s|| / ||gradient||):')
  print('    ' + ', '.join(
      f'{k} {relative(theirs[f"{natural}/{k}"], theirs[f"{prefix}/{k}"]):.1e}'
      for k in KERAS_NAMES))


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
  parser.add_argument('--jacobian_projections', type=int, default=None,
                      help='Jacobian regularisation\'s projections instead of the recipe\'s '
                           '(0: the exact ||J||_F^2, their n = -1)')
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
  python = (python_with_torch(options.reference_python)
            if set(methods) - set(IN_TENSORFLOW) else sys.executable)
  require_madry_cnn(options.model_dir)

  sys.path.insert(0, REPO)
  sys.path.insert(0, HERE)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from common import cli  # noqa: F401  (TensorFlow starts quietly)
  import tensorflow as tf
  from common import checkpoints, runtime, training
  from common.methods import trades
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
      if method == 'jacobian' and options.jacobian_projections is not None:
        config = config.replace(jacobian_projections=options.jacobian_projections)
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
      elif method == 'trades':
        arrays.update(noise=rng.standard_normal(images.shape).astype(np.float32),
                      step_size=params.step_size, num_steps=params.num_steps,
                      beta=trainer.method.beta)
        inputs = (tf.constant(images + np.float32(trades.NOISE * trainer.method.pixel_max)
                              * arrays['noise']),)
        about = (f'β {trainer.method.beta:g}, {params.num_steps} sign steps of '
                 f'{params.step_size:g} on the KL from x + 0.001 N(0, 1), drawn as ours; '
                 'Madry\'s CNN has no batch norm or dropout, so their three training-mode '
                 'passes equal our one pass over x for both terms')
      elif method in ('jacobian', 'cross_lipschitz'):
        # Ours drawn by the method itself (the projections, the training attack's start).
        inputs = trainer.method.prepare(tf.constant(images), tf.constant(
            [options.seed, METHODS.index(method)], tf.int64), (0, n), None)
        regulariser = trainer.method
        if method == 'jacobian':
          count = regulariser.count
          arrays.update(directions=inputs[0].numpy(), projections=count,
                        **{'lambda': regulariser.lam})
          about = (f'λ {regulariser.lam:g}, '
                   + (f'{count} random projection(s) drawn as ours' if count else
                      'exact (their n = -1)'))
        else:
          arrays.update(default_lambda=CL_DEFAULT_LAMBDA, **{'lambda': regulariser.lam})
          about = f'λ {regulariser.lam:g} and their default {CL_DEFAULT_LAMBDA:g}'
        if regulariser.fraction:
          about += (f'; {regulariser.fraction:g} of the batch PGD-{params.num_steps} examples '
                    '(ours, given to theirs: the regulariser and loss are compared, not the '
                    'attack)')
        else:
          about += '; no adversarial examples'
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
      if method == 'trades':
        arrays.update(ours_x_adv=x_adv)
      if method in ('jacobian', 'cross_lipschitz'):
        arrays.update(trained=x_adv)  # the (possibly mixed) batch trained on
      if method == 'cross_lipschitz' and trainer.method.lam != CL_DEFAULT_LAMBDA:
        # Ours at their default λ too: the same draws, so the same batch (its gradients in the
        # same variables' order as trainer's, which ours_by_name reads).
        at_default = training.Trainer(
            MNIST, config.replace(cross_lipschitz_lambda=CL_DEFAULT_LAMBDA),
            log=lambda *a, **k: None)
        checkpoints.restore_model(at_default.model, path)
        default_result = at_default._gradients(  # pylint: disable=protected-access
            tf.constant(images), tf.constant(labels), inputs)
        assert np.array_equal(default_result[4].numpy(), x_adv)
      arrays_path = os.path.join(scratch, f'{method}.npz')
      out_path = os.path.join(scratch, f'{method}_theirs.npz')
      np.savez(arrays_path, **arrays)
      subprocess.run([sys.executable if method in IN_TENSORFLOW else python,
                      os.path.abspath(__file__), '--reference_side', method,
                      arrays_path, out_path, f'--{COPIES[method][0]}',
                      getattr(options, COPIES[method][0]), '--advertorch',
                      options.advertorch], check=True)
      theirs = dict(np.load(out_path))
      index = {id(v): i for i, v in enumerate(trainer.model.trainable_variables)}
      ours_by_name = lambda grads: {
          name: grads[index[id(getattr(trainer.model.get_layer(name.split('/')[0]),
                                       name.split('/')[1]))]].numpy() for name in weights}
      ours = ours_by_name(grads)
      theirs_version = (f'torch {theirs["torch"]}' if 'torch' in theirs else
                        f'TensorFlow {theirs["tensorflow"]}, tf.compat.v1 graph mode')
      print(f'\n{method} ({about}; ε {epsilon:g}; {path}, the first {n} test images; '
            f'{theirs_version})')
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
      elif method == 'trades':
        for suffix, what in (('', 'as written'),
                             ('_given', 'at our x\' (their search for 0 steps from it)')):
          print(f' theirs {what}:')
          pixels('x\' (the examples of the KL term)', x_adv, theirs, 'x_adv' + suffix)
          gradients('gradients', ours, theirs, 'grad' + suffix, n)
      elif method == 'jacobian':
        print(f'  theirs: loss {theirs["loss"]:.6g} = cross-entropy {theirs["ce"]:.6g} + '
              f'{trainer.method.lam:g} x R {theirs["R"]:.6g}')
        share('the regulariser\'s share of their gradient', theirs, 'grad', 'grad_ce')
        gradients('gradients', ours, theirs, 'grad', n)
      elif method == 'cross_lipschitz':
        mixed = int(np.sum(np.any(x_adv.reshape(n, -1) != images.reshape(n, -1), axis=1)))
        print(f'  the batch trained on: {mixed} of {n} examples moved by our PGD, given to '
              'theirs')
        for name, lam, our_grads in (
            ('', trainer.method.lam, ours),
            ('_default', CL_DEFAULT_LAMBDA,
             ours_by_name(default_result[0]) if trainer.method.lam != CL_DEFAULT_LAMBDA
             else None)):
          if our_grads is None:
            continue
          print(f' λ {lam:g}: theirs: loss {theirs["loss" + name]:.6g} = cross-entropy '
                f'{theirs["loss_ce"]:.6g} + {lam:g} x Ω {theirs["reg" + name]:.6g}')
          share('the regulariser\'s share of their gradient', theirs, 'grad' + name,
                'grad_ce')
          gradients('gradients', our_grads, theirs, 'grad' + name, n)
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
