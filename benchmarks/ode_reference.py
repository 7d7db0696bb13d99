"""The neural ODEs of Yan et al. 2020 (ODENet and TisODE, common/ode.py) against their
authors' code: the same weights and images through ours and through their networks, solved by
their copy of torchdiffeq. Prints, per network, how far apart the logits (inference, and
training mode), TisODE's steady-state term and the weight gradients of one training step
are.

* Theirs: HanshuYAN/TisODE, mnist/networks.py's ODENet_MNIST and ODENet_tisode as written,
  with the repository's own modified torchdiffeq (its `odeint`, 'euler' and 'euler_abs'),
  under the settings of their runs (the training logs checkpoints/MNIST_*_gaus_1/
  train_result.txt and attack_mnist/run_test.sh): the ODENet at TimePeriod 0_1, step_size 0.1
  in training and at test time; TisODE at TimePeriod 0_0.9_1_1.5 in training and
  0_0.75_1_1.05 at test time, step_size 0.05 (its prediction is z(1) after 20 Euler steps
  either way; the steady-state term is integrated from z(0.9) to 1.5 in training). Their
  options module (argparse at import) is stubbed with those values, nothing else.
* Their training loss: the body of the training loop of mnist/main_ode_gaus.py (the
  cross-entropy's mean) and of mnist/main_tisode_gaus.py (at an epoch >= epoch_steady: the
  cross-entropy's mean + w_steady (0.01) x nn.L1Loss(x_steady_diff, 0), a mean over every
  element), taken from the files and run as written on one batch (`.cuda()` an identity, an
  optimizer that records the gradients in place of their Adam).
* Ours: the recipes' networks (mnist_challenge/configs/ode.json, tisode.json; built with the
  recipe's seed, or restored from --model_dir) at inference (model(x, training=False)), in
  training mode through `stateless_call(..., return_losses=True)` (the logits and the
  steady-state term the block adds), and the gradients of our training loss (the summed
  cross-entropy + the added term) twice: differentiated here, and by the trainer's own
  (compiled) step of the natural method. Then the same network and weights again under Keras'
  float64 dtype policy (its logits layer float32 by construction, the steady-state term cast
  to float32), against their float64 run: where float32 leaves ours further from theirs than
  their own float32 run, this says whether the two compute the same function.

Weights: Keras NHWC kernels as torch OIHW, the dense kernel transposed, group norm's gamma and
beta as its weight and bias; the time channel of the ODENet's convolutions is the first input
channel on both sides (their ConcatConv2d: torch.cat([t, x], 1); ours: concatenated in front),
so the kernels map as they are (a line shows how far theirs moves with it mapped last).

Their float32 run is compared with ours; their float64 run beside it is the rounding floor.
Gradients: our MNIST loss is summed over the batch where theirs is a mean, and our
steady-state term sums the examples' means where theirs is the mean over the batch: theirs
are scaled by n; "relative" is ||ours - theirs|| / ||theirs|| per variable.

Their code runs in its own process, under another Python that has torch, from a local copy of
the repository; it is no dependency of the project or its tests. Without them this prints why
and exits 0.

  python3 -m venv /tmp/reference && /tmp/reference/bin/pip install "torch==2.13.0+cpu" numpy
  git clone https://github.com/HanshuYAN/TisODE /tmp/tisode
  python benchmarks/ode_reference.py --tisode /tmp/tisode \\
      --reference_python /tmp/reference/bin/python
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
from methods_reference import apart, gradients, pixels, relative, stub_module
from torch_reference import python_with_torch, skip


HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NETWORKS = ('odenet', 'tisode')
CONFIGS = {'odenet': 'ode.json', 'tisode': 'tisode.json'}  # the recipes (mnist_challenge/configs)
NEEDED = (os.path.join('mnist', 'networks.py'),
          os.path.join('torchdiffeq', '_impl', 'fixed_grid.py'))
# Their runs' settings: {network: (class, training script, step_size, TimePeriod in training,
# TimePeriod at test time)} (train_result.txt's logged args; attack_mnist/run_test.sh).
THEIRS = {'odenet': ('ODENet_MNIST', 'main_ode_gaus.py', 0.1, [0.0, 1.0], [0.0, 1.0]),
          'tisode': ('ODENet_tisode', 'main_tisode_gaus.py', 0.05, [0.0, 0.9, 1.0, 1.5],
                     [0.0, 0.75, 1.0, 1.05])}
W_STEADY, EPOCH_STEADY = 0.01, 5  # their options.py under --isSS True (and the log)
# Our layers (names as below) and their modules.
THEIR_MODULES = {
    'odenet': {'down_conv1': 'net.0', 'down_norm1': 'net.1', 'down_conv2': 'net.3',
               'down_norm2': 'net.4', 'ode/conv1': 'net.6.odefunc.conv1._layer',
               'ode/norm1': 'net.6.odefunc.norm1', 'ode/conv2': 'net.6.odefunc.conv2._layer',
               'ode/norm2': 'net.6.odefunc.norm2', 'logits': 'net.9'},
    'tisode': {'down_conv1': 'downsampling_layers.0', 'down_norm1': 'downsampling_layers.1',
               'down_conv2': 'downsampling_layers.3', 'down_norm2': 'downsampling_layers.4',
               'ode/conv1': 'feature_layers.conv1', 'ode/norm1': 'feature_layers.norm1',
               'ode/conv2': 'feature_layers.conv2', 'ode/norm2': 'feature_layers.norm2',
               'logits': 'fc_layers.2'}}
ODE_FUNCTION = {'odenet': 'net.6.odefunc', 'tisode': 'feature_layers'}
TORCH_KIND = {'kernel': 'weight', 'bias': 'bias', 'gamma': 'weight', 'beta': 'bias'}


# --- their side (runs under --reference_python; imports torch, not TensorFlow) --------------

def to_torch(torch, kind, array):
  tensor = torch.from_numpy(np.ascontiguousarray(array))
  if kind == 'kernel':
    return tensor.permute(3, 2, 0, 1) if tensor.ndim == 4 else tensor.t()
  return tensor


def to_keras(kind, tensor):
  tensor = tensor.detach()
  if kind == 'kernel':
    tensor = tensor.permute(2, 3, 1, 0) if tensor.ndim == 4 else tensor.t()
  return tensor.numpy()


def their_parameters(network, model):
  """{our name: their parameter} (every one of theirs, once)."""
  modules = dict(model.named_modules())
  out = {}
  for ours, path in THEIR_MODULES[network].items():
    for kind, torch_kind in TORCH_KIND.items():
      parameter = getattr(modules[path], torch_kind, None)
      if parameter is None:
        continue
      is_norm = 'norm' in ours
      if (kind in ('gamma', 'beta')) == is_norm:
        out[f'{ours}/{kind}'] = parameter
  assert sorted(map(id, out.values())) == sorted(map(id, model.parameters())), network
  return out


def their_model(network, arrays, dtype, args, time_period, t_last=False):
  """Their network as their scripts build it (args.TimePeriod set first) with our weights;
  t_last: our time channel given to their last input channel instead of their first."""
  import torch
  import networks as their_networks
  args.TimePeriod = list(time_period)
  model = getattr(their_networks, THEIRS[network][0])()
  with torch.no_grad():
    for name, parameter in their_parameters(network, model).items():
      array = arrays[name]
      if t_last and name.startswith('ode/conv') and name.endswith('kernel'):
        array = np.roll(array, -1, axis=2)  # Keras [h, w, in, out]: in 0 (t) -> last
      value = to_torch(torch, name.rsplit('/', 1)[1], array)
      assert tuple(value.shape) == tuple(parameter.shape), (name, value.shape, parameter.shape)
      parameter.copy_(value)
  return model.to(dtype)


def recorded_times(network, model):
  """The times their solver gives the field, appended to a list as it is called."""
  times = []
  dict(model.named_modules())[ODE_FUNCTION[network]].register_forward_pre_hook(
      lambda module, inputs: times.append(float(inputs[0])))
  return times


def training_loop(copy, script):
  """The body of their training script's `for _, batch_tr in enumerate(train_loader):`."""
  path = os.path.join(copy, 'mnist', script)
  with open(path) as f:
    tree = ast.parse(f.read())
  loops = [node for node in ast.walk(tree) if isinstance(node, ast.For)
           and ast.unparse(node.iter) == 'enumerate(train_loader)']
  assert len(loops) == 1, f'{path}: {len(loops)} training loops'
  return compile(ast.Module(body=loops, type_ignores=[]), path, 'exec')


def reference_network(network, arrays, copy, dtype):
  import torch
  _, script, step_size, train_period, test_period = THEIRS[network]
  # Their options module (argparse over sys.argv at import), with their runs' values.
  args = types.SimpleNamespace(rtol=1e-3, atol=1e-3, adjoint=False, step_size=step_size,
                               TimePeriod=list(train_period), device_ids=[0],
                               epoch_steady=EPOCH_STEADY, w_steady=W_STEADY)
  stub_module('options', args=args)
  sys.path[:0] = [copy, os.path.join(copy, 'mnist')]
  sys.modules.pop('networks', None)
  x = torch.from_numpy(arrays['images'].reshape(-1, 1, 28, 28)).to(dtype)
  y = torch.from_numpy(arrays['labels']).long()
  out = {}

  # (a) inference at their test-time integration times.
  model = their_model(network, arrays, dtype, args, test_period).eval()
  times = recorded_times(network, model)
  with torch.no_grad():
    logits = model(x)
  out['logits_eval'] = (logits[0] if isinstance(logits, tuple) else logits).numpy()
  out['times_eval'] = np.array(times)
  if network == 'odenet' and dtype == torch.float32:
    with torch.no_grad():
      out['logits_t_last'] = their_model(network, arrays, dtype, args, test_period,
                                         t_last=True).eval()(x).numpy()

  # (b), (c): one step of their training loop, as written.
  model = their_model(network, arrays, dtype, args, train_period).train()
  times = recorded_times(network, model)
  parameters = their_parameters(network, model)
  captured, grads = {}, {}
  model.register_forward_hook(lambda module, inputs, output: captured.update(output=output))

  class Batch:  # their .cuda(...): the CPU tensor itself
    def __init__(self, tensor):
      self.tensor = tensor

    def cuda(self, *unused):
      return self.tensor

  class RecordingOptimizer:  # their Adam's place: step() records the gradients
    def zero_grad(self):
      model.zero_grad(set_to_none=True)

    def step(self):
      grads.update({name: to_keras(name.rsplit('/', 1)[1], p.grad)
                    for name, p in parameters.items()})

  namespace = dict(model=model, optimizer=RecordingOptimizer(), args=args,
                   train_loader=[(Batch(x), Batch(y))], epoch=EPOCH_STEADY,
                   criterion=torch.nn.CrossEntropyLoss(), criterion_ss=torch.nn.L1Loss())
  exec(training_loop(copy, script), namespace)  # pylint: disable=exec-used
  output = captured['output']
  out.update(logits_train=(output[0] if isinstance(output, tuple) else output).detach().numpy(),
             times_train=np.array(times), loss=namespace['loss'].item(),
             **{f'grad/{k}': v for k, v in grads.items()})
  if network == 'tisode':
    out.update(ce=namespace['l1'].item(), steady=namespace['l2'].item())
    # The steady-state term's gradients alone (their w_steady x L1 of their forward pass).
    model.zero_grad(set_to_none=True)
    _, target, difference = model(x)
    (args.w_steady * torch.nn.L1Loss()(difference, target)).backward()
    out.update({f'grad_steady/{k}': (to_keras(k.rsplit('/', 1)[1], p.grad) if p.grad is not None
                                     else np.zeros(arrays[k].shape))
                for k, p in parameters.items()})
  sys.path[:2] = []
  return out


def reference_side(network, arrays_path, out_path, copy):
  import torch
  torch.set_num_threads(min(2, os.cpu_count() or 1))
  arrays = dict(np.load(arrays_path))
  out = {}
  for dtype, suffix in ((torch.float32, ''), (torch.float64, '@float64')):
    results = reference_network(network, arrays, copy, dtype)
    # Scalars and times in float64 (their float64 run's digits kept), arrays in float32.
    out.update({k + suffix: np.asarray(v, np.float64 if np.ndim(v) == 0 or k.startswith('times')
                                       else np.float32) for k, v in results.items()})
  np.savez(out_path, torch=np.array(torch.__version__), **out)


# --- ours, and the comparison --------------------------------------------------------------

def our_variables(model):
  """{'down_conv1/kernel': variable, ...}: every trainable variable, named as THEIR_MODULES."""
  ode = model.get_layer('ode')
  layers = [(name, model.get_layer(name)) for name in
            ('down_conv1', 'down_norm1', 'down_conv2', 'down_norm2')]
  layers += [('ode/conv1', ode.convolutions[0]), ('ode/norm1', ode.norms[0]),
             ('ode/conv2', ode.convolutions[1]), ('ode/norm2', ode.norms[1]),
             ('logits', model.get_layer('logits'))]
  out = {f'{name}/{kind}': getattr(layer, kind) for name, layer in layers
         for kind in TORCH_KIND if getattr(layer, kind, None) is not None}
  assert sorted(map(id, out.values())) == sorted(map(id, model.trainable_variables))
  return out


def grid(times):
  """Their recorded field evaluations' times, solve by solve (a solve starts earlier than the
  last one ended)."""
  times = np.asarray(times)
  starts = [0] + [i for i in range(1, len(times)) if times[i] < times[i - 1]] + [len(times)]
  parts = []
  for begin, end in zip(starts[:-1], starts[1:]):
    part = times[begin:end]
    unique = np.unique(part)
    steps = np.diff(unique)
    text = (f'{len(part)} at t = {unique[0]:.4g}, {unique[1]:.4g}, ..., {unique[-1]:.4g}'
            if len(unique) > 2 else f'{len(part)} at t = ' + ', '.join(
                f'{t:.4g}' for t in unique))
    if len(part) == 2 * len(unique):
      text += ' (each twice)'
    if len(steps) and steps.max() - steps.min() > 1e-6:
      text += f' (steps {steps.min():.3g} .. {steps.max():.3g})'
    parts.append(text)
  return '; '.join(parts)


def rel(ours, theirs):
  """|ours - theirs| / |theirs| of scalars."""
  return abs(ours - theirs) / abs(theirs)


def against_float64(name, ours, theirs, prefix, scale):
  """Ours against their float64 run (ours's own float32 rounding, beside theirs)."""
  print(f'  {name}, ours against their float64 (theirs x {scale:g}; in brackets their float32 '
        'against their float64):')
  print('    ' + ', '.join(
      f'{k} {relative(v, scale * theirs[f"{prefix}/{k}@float64"]):.1e} '
      f'({relative(theirs[f"{prefix}/{k}"], theirs[f"{prefix}/{k}@float64"]):.1e})'
      for k, v in ours.items()))


def ours_computed(model, images, labels, losses, tf):
  """Ours: (a) inference logits; (b) training-mode logits and the model's added losses (the
  steady-state term) through stateless_call; (c) the gradients of the summed cross-entropy +
  the added losses, and of the added losses alone; by our_variables' names."""
  variables = our_variables(model)
  index = {id(v): i for i, v in enumerate(model.trainable_variables)}
  x, y = tf.constant(images.astype(model.compute_dtype)), tf.constant(labels)
  logits_eval = model(x, training=False)
  values = [v.value for v in model.trainable_variables]
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(values)
    logits_train, _, model_losses = model.stateless_call(
        values, [v.value for v in model.non_trainable_variables], x, training=True,
        return_losses=True)
    ce = tf.reduce_sum(losses.xent(y, logits_train))
    added = tf.add_n(model_losses) if model_losses else tf.constant(0.0)
    total = ce + added
  by_name = lambda grads: {name: (np.zeros(v.shape) if grads[index[id(v)]] is None
                                  else grads[index[id(v)]].numpy())
                           for name, v in variables.items()}
  out = dict(logits_eval=logits_eval.numpy(), logits_train=logits_train.numpy(),
             ce=float(ce), added=float(added), grads=by_name(tape.gradient(total, values)),
             steady=by_name(tape.gradient(added, values)) if model_losses else None,
             by_name=by_name)
  del tape
  return out


def ours_in_float64(build, weights, images, labels, losses, tf):
  """ours_computed of the same network and weights under Keras' float64 dtype policy (its
  logits layer is float32 by construction, and the steady-state term is cast to float32)."""
  import keras
  floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
  keras.config.set_floatx('float64')
  keras.config.set_dtype_policy('float64')
  try:
    model = build()
  finally:
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)
  for name, variable in our_variables(model).items():
    variable.assign(weights[name].astype(variable.dtype))
  return ours_computed(model, images, labels, losses, tf)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--tisode', default='',
                      help='a local copy of github.com/HanshuYAN/TisODE (the authors\' code)')
  parser.add_argument('--reference_python', default='',
                      help='a Python with torch for the reference (default: this one)')
  parser.add_argument('--networks', default=','.join(NETWORKS))
  parser.add_argument('--model_dir', default='',
                      help='an odenet or tisode checkpoint to compare (default: each recipe\'s '
                           'network as its seed initialises it)')
  parser.add_argument('--data_dir', default=os.path.join(REPO, '..', 'shared', 'data', 'mnist'))
  parser.add_argument('--num_examples', type=int, default=100)
  parser.add_argument('--reference_side', nargs=3, metavar=('NETWORK', 'ARRAYS', 'OUT'),
                      help=argparse.SUPPRESS)
  options = parser.parse_args()
  if options.reference_side:
    reference_side(*options.reference_side, options.tisode)
    return

  networks = options.networks.split(',')
  unknown = set(networks) - set(NETWORKS)
  if unknown:
    sys.exit(f'error: unknown network(s) {", ".join(sorted(unknown))}; use: '
             + ', '.join(NETWORKS))
  for needed in NEEDED:
    if not os.path.isfile(os.path.join(options.tisode, needed)):
      skip(f'no copy of the TisODE authors\' code at --tisode "{options.tisode}" (it needs '
           f'{needed}; git clone https://github.com/HanshuYAN/TisODE)')
  python = python_with_torch(options.reference_python)
  path = None
  if options.model_dir:
    import json
    config_path = os.path.join(options.model_dir, 'config.json')
    if not os.path.isfile(config_path):
      skip(f'no model at --model_dir "{options.model_dir}"')
    with open(config_path) as f:
      network = json.load(f).get('model', 'madry')
    if network not in NETWORKS:
      sys.exit(f'error: {options.model_dir} holds the {network} network; this compares '
               + ' and '.join(NETWORKS))
    networks = [network]

  sys.path.insert(0, REPO)
  sys.path.insert(0, HERE)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from common import cli  # noqa: F401  (TensorFlow starts quietly)
  import tensorflow as tf
  from common import checkpoints, losses, runtime, training
  from mnist_challenge.challenge import MNIST
  from timing import machine

  runtime.start()
  print(machine())
  n = options.num_examples
  if options.model_dir:
    path = checkpoints.latest(options.model_dir)
    if path is None:
      skip(f'no checkpoint in --model_dir "{options.model_dir}"')
  with tempfile.TemporaryDirectory() as scratch:
    for network in networks:
      config = MNIST.load_config(
          os.path.join(REPO, 'mnist_challenge', 'configs', CONFIGS[network]),
          {'data_dir': options.data_dir, 'model_dir': os.path.join(scratch, network)})
      trainer = training.Trainer(MNIST, config, log=lambda *a, **k: None)  # seeds the weights
      model = trainer.model
      if path:
        checkpoints.restore_model(model, path)
      test = MNIST.load_data(config).test
      images, labels = test.images[:n], test.labels[:n].astype(np.int64)
      variables = our_variables(model)
      weights = {name: v.numpy() for name, v in variables.items()}
      arrays_path = os.path.join(scratch, f'{network}.npz')
      out_path = os.path.join(scratch, f'{network}_theirs.npz')
      np.savez(arrays_path, images=images, labels=labels, **weights)
      subprocess.run([python, os.path.abspath(__file__), '--reference_side', network,
                      arrays_path, out_path, '--tisode', options.tisode], check=True)
      theirs = dict(np.load(out_path))

      # Ours: (a) inference; (b) training mode with the block's own losses; (c) gradients;
      # then the trainer's own step, and the same network in float64.
      computed = ours_computed(model, images, labels, losses, tf)
      logits_eval, logits_train = computed['logits_eval'], computed['logits_train']
      ce, added, ours, ours_steady = (computed[k] for k in ('ce', 'added', 'grads', 'steady'))
      step = trainer._gradients(  # pylint: disable=protected-access
          tf.constant(images), tf.constant(labels), ())
      ours_step = computed['by_name'](step[0])
      in64 = ours_in_float64(lambda: MNIST.build_model(config), weights, images, labels,
                             losses, tf)

      step_size, train_period, test_period = THEIRS[network][2:]
      ode = model.get_layer('ode')
      source = path or f'the recipe\'s seed {config.random_seed}'
      print(f'\n{network} ({source}, the first {n} test images; torch {theirs["torch"]}, '
            f'their {THEIRS[network][0]} with their torchdiffeq)')
      print(f'  theirs: test time (TimePeriod {test_period}, step_size {step_size:g}): field '
            f'evaluations {grid(theirs["times_eval"])}')
      print(f'  theirs: training (TimePeriod {train_period}): field evaluations '
            f'{grid(theirs["times_train"])}')
      for when in ('eval', 'train'):
        if grid(theirs[f'times_{when}@float64']) != grid(theirs[f'times_{when}']):
          print(f'   (their float64 run, {when}: {grid(theirs[f"times_{when}@float64"])})')
      print(f'  ours: Euler {ode.steps} steps of {ode.step_size:g} over [0, {ode.end_time:g}]'
            + (f'; in training the steady-state term over [{ode.steady_from:g}, '
               f'{ode.steady_to:g}] (weight {ode.steady_state_weight:g})'
               if ode.adds_training_losses else ''))
      pixels('inference logits (theirs at test-time TimePeriod)', logits_eval, theirs,
             'logits_eval')
      if 'logits_t_last' in theirs:
        print(f'  (check: with our t channel given to their last input channel instead: max '
              f'|difference| {np.abs(logits_eval - theirs["logits_t_last"]).max():.2e})')
      pixels('training-mode logits', logits_train, theirs, 'logits_train')
      print(f'  ours: cross-entropy (summed) / n {ce / n:.7g}, the added loss / n '
            f'{added / n:.7g}')
      if network == 'tisode':
        steady, floor = (W_STEADY * theirs[k] for k in ('steady', 'steady@float64'))
        print(f'  theirs: loss {theirs["loss"]:.7g} = cross-entropy {theirs["ce"]:.7g} + '
              f'{W_STEADY:g} x L1(x_steady_diff, 0) {theirs["steady"]:.7g}')
        print(f'  steady-state term: ours / n {added / n:.7g}, theirs '
              f'{steady:.7g}: relative {rel(added / n, steady):.1e} (their '
              f'float32 against their float64: {rel(steady, floor):.1e})')
        print('  the steady-state term\'s share of their gradient (||its gradient|| / '
              '||gradient||):')
        norm = lambda key: np.linalg.norm(theirs[key])
        print('    ' + ', '.join(f'{k} {norm(f"grad_steady/{k}") / norm(f"grad/{k}"):.1e}'
                                 for k in ours))
      else:
        print(f'  theirs: loss (cross-entropy) {theirs["loss"]:.7g}')
      print(f'  ours: total loss / n {(ce + added) / n:.7g}, theirs {theirs["loss"]:.7g}: '
            f'relative {rel((ce + added) / n, theirs["loss"]):.1e} '
            f'(floor {rel(theirs["loss"], theirs["loss@float64"]):.1e})')
      gradients('gradients of the loss (ours differentiated here)', ours, theirs, 'grad', n)
      against_float64('gradients of the loss (ours differentiated here)', ours, theirs, 'grad',
                      n)
      gradients('gradients of the loss (the trainer\'s step)', ours_step, theirs, 'grad', n)
      if ours_steady is not None:
        reached = {k: v for k, v in ours_steady.items()
                   if np.any(theirs[f'grad_steady/{k}@float64'])}  # not the dense layer's
        gradients('gradients of the steady-state term alone', reached, theirs, 'grad_steady', n)
        against_float64('gradients of the steady-state term alone', reached, theirs,
                        'grad_steady', n)
        unreached = [k for k in ours_steady if k not in reached]
        print(f'  ({", ".join(unreached)}: no gradient from the term on either side: ours '
              f'{max(float(np.abs(ours_steady[k]).max()) for k in unreached):g})')

      print('  ours in float64 (Keras\' float64 dtype policy; the logits layer stays float32, '
            'the steady-state term is cast to float32) against their float64:')
      difference = lambda key: np.abs(in64[key] - theirs[f'{key}@float64']).max()
      print(f'    logits max |difference|: inference {difference("logits_eval"):.2e}, training '
            f'mode {difference("logits_train"):.2e}; loss relative '
            f'{rel((in64["ce"] + in64["added"]) / n, theirs["loss@float64"]):.1e}'
            + (f'; steady-state term relative '
               f'{rel(in64["added"] / n, W_STEADY * theirs["steady@float64"]):.1e}'
               if network == 'tisode' else ''))
      print('    gradients of the loss, relative per variable: ' + ', '.join(
          f'{k} {relative(v, n * theirs[f"grad/{k}@float64"]):.1e}'
          for k, v in in64['grads'].items()))

if __name__ == '__main__':
  main()
