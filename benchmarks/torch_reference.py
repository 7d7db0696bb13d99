"""What the benchmarks that run a PyTorch reference implementation beside ours share: the
checks that one can run (else they say why and exit 0), and MNIST networks in PyTorch carrying
our Keras model's weights: Madry et al.'s CNN, and TRADES's Small CNN (the shipped model's).
torch is imported only when a network is built, under the reference's Python; the project
never depends on it."""
import json
import os
import subprocess
import sys
from collections import OrderedDict

LAYERS = ('conv1', 'conv2', 'fc1', 'logits')
SMALL_CNN_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'fc1', 'fc2', 'logits')
PORTED = {'madry': LAYERS, 'small_cnn': SMALL_CNN_LAYERS}  # the networks ported here


def skip(reason):
  """Ends the benchmark, saying why it cannot run (exit 0: nothing is wrong with ours)."""
  print(f'skipped: {reason}')
  sys.exit(0)


def require_madry_cnn(model_dir):
  """Skips unless model_dir holds a checkpoint; exits with an error unless its config.json
  names Madry's network (the one network ported to PyTorch here)."""
  config = os.path.join(model_dir, 'config.json')
  if not os.path.isfile(config):
    skip(f'no model at --model_dir "{model_dir}" (the default is the PGD-3 recipe\'s: python '
         'mnist_challenge/train.py --config mnist_challenge/configs/fast.json --data_dir '
         '../shared/data/mnist makes it, about 14 minutes on a 2-core CPU)')
  with open(config) as f:
    network = json.load(f).get('model', 'madry')
  if network != 'madry':
    sys.exit(f'error: {model_dir} holds the {network} network, and the PyTorch reference is '
             'Madry\'s CNN: pass --model_dir of a Madry-CNN checkpoint (the default, '
             'checkpoints/mnist/fast, is the one mnist_challenge/configs/fast.json trains)')


def python_with_torch(reference_python):
  """The Python to run the reference under (--reference_python, default this one); skips
  unless it can import torch."""
  python = reference_python or sys.executable
  probe = subprocess.run([python, '-c', 'import torch'], capture_output=True, text=True)
  if probe.returncode != 0:
    skip(f'{python} cannot import torch (pip install "torch==2.13.0+cpu" into a virtual '
         'environment and pass its python as --reference_python)')
  return python


def require_ported_network(model_dir, default_hint):
  """The network model_dir's config.json names (a key of PORTED); skips without a model,
  exits with an error for a network not ported to PyTorch here."""
  config = os.path.join(model_dir, 'config.json')
  if not os.path.isfile(config):
    skip(f'no model at --model_dir "{model_dir}" ({default_hint})')
  with open(config) as f:
    network = json.load(f).get('model', 'madry')
  if network not in PORTED:
    sys.exit(f'error: {model_dir} holds the {network} network; the PyTorch ports are '
             + ', '.join(PORTED) + ': pass --model_dir of such a checkpoint')
  return network


def keras_weights(model, layers=LAYERS):
  """{'conv1/kernel': array, ...}: our MNIST model's weights in Keras layouts (for np.savez)."""
  return {f'{layer}/{kind}': getattr(model.get_layer(layer), kind).numpy()
          for layer in layers for kind in ('kernel', 'bias')}


def _load(layer, arrays, name):
  import torch
  kernel = torch.from_numpy(arrays[f'{name}/kernel'])
  with torch.no_grad():
    layer.weight.copy_(kernel.permute(3, 2, 0, 1) if kernel.ndim == 4 else kernel.t())
    layer.bias.copy_(torch.from_numpy(arrays[f'{name}/bias']))


def small_cnn_mnist(arrays, preprocess=None):
  """TRADES's Small CNN (NCHW inputs, inference: dropout off) with the weights `arrays` holds
  (keras_weights' names for SMALL_CNN_LAYERS; fc1's rows in Keras's NHWC flatten order).
  `preprocess` is applied to the input first."""
  import torch

  class SmallCnn(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1, self.conv2 = torch.nn.Conv2d(1, 32, 3), torch.nn.Conv2d(32, 32, 3)
      self.conv3, self.conv4 = torch.nn.Conv2d(32, 64, 3), torch.nn.Conv2d(64, 64, 3)
      self.fc1, self.fc2 = torch.nn.Linear(64 * 4 * 4, 200), torch.nn.Linear(200, 200)
      self.logits = torch.nn.Linear(200, 10)
      for name in SMALL_CNN_LAYERS:
        _load(getattr(self, name), arrays, name)

    def forward(self, x):
      if preprocess is not None:
        x = preprocess(x)
      pool = lambda z: torch.nn.functional.max_pool2d(z, 2, 2)
      x = pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
      x = pool(torch.relu(self.conv4(torch.relu(self.conv3(x)))))
      x = torch.relu(self.fc1(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)))
      return self.logits(torch.relu(self.fc2(x)))

  return SmallCnn()


def mnist_network(arrays, network, preprocess=None):
  """The ported `network` ('madry' or 'small_cnn') carrying `arrays`' weights."""
  return (madry_mnist if network == 'madry' else small_cnn_mnist)(arrays, preprocess)


def madry_mnist(arrays, preprocess=None):
  """The network (NCHW inputs) with the weights `arrays` holds (keras_weights' names; fc1's
  rows in Keras's NHWC flatten order). `preprocess` is applied to the input first.
  `layer_one` is conv1 with its ReLU (YOPO's split, as the YOPO authors' `layer_one`); like
  their networks, forward() keeps its output in `layer_one_out` with the gradient retained;
  `other_layers` holds the rest."""
  import torch

  class MadryMnist(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = torch.nn.Conv2d(1, 32, 5, padding=2)
      self.layer_one = torch.nn.Sequential(OrderedDict([('conv1', self.conv1),
                                                        ('relu1', torch.nn.ReLU())]))
      self.conv2 = torch.nn.Conv2d(32, 64, 5, padding=2)
      self.fc1 = torch.nn.Linear(7 * 7 * 64, 1024)
      self.logits = torch.nn.Linear(1024, 10)
      self.other_layers = torch.nn.ModuleList([self.conv2, self.fc1, self.logits])
      with torch.no_grad():
        for name in LAYERS:
          layer, kernel = getattr(self, name), torch.from_numpy(arrays[f'{name}/kernel'])
          layer.weight.copy_(kernel.permute(3, 2, 0, 1) if kernel.ndim == 4 else kernel.t())
          layer.bias.copy_(torch.from_numpy(arrays[f'{name}/bias']))

    def forward(self, x):
      if preprocess is not None:
        x = preprocess(x)
      pool = lambda z: torch.nn.functional.max_pool2d(z, 2, 2)
      self.layer_one_out = self.layer_one(x)
      if self.layer_one_out.requires_grad:
        self.layer_one_out.retain_grad()
      x = pool(self.layer_one_out)
      x = pool(torch.relu(self.conv2(x)))
      x = torch.relu(self.fc1(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)))
      return self.logits(x)

  return MadryMnist()


def keras_gradients(model):
  """{'conv1/kernel': array, ...}: the torch network's parameter gradients in Keras layouts."""
  out = {}
  for name in LAYERS:
    layer = getattr(model, name)
    weight = layer.weight.grad.detach()
    out[f'{name}/kernel'] = (weight.permute(2, 3, 1, 0) if weight.ndim == 4
                             else weight.t()).numpy()
    out[f'{name}/bias'] = layer.bias.grad.detach().numpy()
  return out
