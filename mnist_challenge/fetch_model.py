"""Downloads a released model of the original challenge, checks its SHA-256 and unpacks it
under checkpoints/mnist: python fetch_model.py {natural,adv_trained,secret} [--url URL]."""
from common import cli  # noqa: F401  (first: it starts TensorFlow quietly)
from common import fetch

if __name__ == '__main__':
  fetch.main('mnist')
