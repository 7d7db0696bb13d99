"""What the benchmarks that run a PyTorch reference implementation beside ours share: the
checks that one can run (else they say why and exit 0), and Madry et al.'s MNIST network in
PyTorch carrying our Keras model's weights. torch is imported only when a network is built,
under the reference's Python; the project never depends on it."""
import json
import os
import subprocess
import sys
from collections import OrderedDict

LAYERS = ('conv1', 'conv2', 'fc1', 'logits')


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


def keras_weights(model):
  """{'conv1/kernel': array, ...}: our MNIST model's weights in Keras layouts (for np.savez)."""
  return {f'{layer}/{kind}': getattr(model.get_layer(layer), kind).numpy()
          for layer in LAYERS for kind in ('kernel', 'bias')}


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
