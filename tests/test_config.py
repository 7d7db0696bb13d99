"""config.json: original files load unchanged; mistakes name the key."""
import json

import pytest

from common.errors import ChallengeError
from mnist_challenge.challenge import MNIST

# The original repository's config.json, byte for byte (with its repeated "_comment" keys).
ORIGINAL = '''{
  "_comment": "===== MODEL CONFIGURATION =====",
  "model_dir": "models/secret",

  "_comment": "===== TRAINING CONFIGURATION =====",
  "random_seed": 4557077,
  "max_num_training_steps": 100000,
  "num_output_steps": 100,
  "num_summary_steps": 100,
  "num_checkpoint_steps": 300,
  "training_batch_size": 50,

  "_comment": "===== EVAL CONFIGURATION =====",
  "num_eval_examples": 10000,
  "eval_batch_size": 200,
  "eval_on_cpu": true,

  "_comment": "=====ADVERSARIAL EXAMPLES CONFIGURATION=====",
  "epsilon": 0.3,
  "k": 40,
  "a": 0.01,
  "random_start": true,
  "loss_func": "xent",
  "store_adv_path": "submission_20171013_flat.npy"
}
'''


def write(tmp_path, text):
  path = tmp_path / 'config.json'
  path.write_text(text)
  return str(path)


def test_original_config_loads_unchanged(tmp_path):
  config = MNIST.load_config(write(tmp_path, ORIGINAL))
  assert config.model_dir == str(tmp_path / 'models' / 'secret')  # relative to the file
  assert config.store_adv_path == str(tmp_path / 'submission_20171013_flat.npy')
  assert (config.epsilon, config.k, config.a) == (0.3, 40, 0.01)
  assert config.random_seed == 4557077 and config.eval_on_cpu is True
  assert config.data_dir == str(tmp_path / 'MNIST_data')  # a new key, defaulted


def test_shipped_config_holds_the_original_defaults():
  with open(MNIST.default_config_path) as f:
    shipped = {k: v for k, v in json.load(f).items() if not k.startswith('_')}
  original = {k: v for k, v in json.loads(ORIGINAL).items() if not k.startswith('_')}
  changed = {k for k in original if shipped[k] != original[k]}
  assert changed == {'model_dir', 'store_adv_path'}
  assert shipped['store_adv_path'] == 'attack.npy'
  assert shipped['model_dir'].endswith('checkpoints/mnist/a_very_robust_model')
  defaults = MNIST.load_config()
  assert defaults.k == 40 and defaults.training_batch_size == 50


@pytest.mark.parametrize('key,value,message', [
    ('k', 40.5, 'config key "k" must be an integer'),
    ('k', True, 'config key "k" must be an integer'),
    ('random_start', 'yes', 'config key "random_start" must be a boolean'),
    ('epsilon', '0.3', 'config key "epsilon" must be a number'),
    ('loss_func', 1, 'config key "loss_func" must be a string'),
    ('num_checkpoint_steps', 0, 'config key "num_checkpoint_steps" must be at least 1'),
])
def test_wrong_type_names_the_key(tmp_path, key, value, message):
  config = json.loads(ORIGINAL)
  config[key] = value
  with pytest.raises(ChallengeError, match=message):
    MNIST.load_config(write(tmp_path, json.dumps(config)))


def test_unknown_key_names_the_key(tmp_path):
  text = ORIGINAL.replace('"k": 40,', '"k": 40,\n  "num_stepz": 7,')
  with pytest.raises(ChallengeError, match='unknown config key "num_stepz"'):
    MNIST.load_config(write(tmp_path, text))


def test_duplicate_real_key_is_an_error(tmp_path):
  text = ORIGINAL.replace('"k": 40,', '"k": 40,\n  "k": 100,')
  with pytest.raises(ChallengeError, match='config key "k" appears twice'):
    MNIST.load_config(write(tmp_path, text))


def test_missing_or_malformed_file(tmp_path):
  with pytest.raises(ChallengeError, match='does not exist'):
    MNIST.load_config(str(tmp_path / 'nope.json'))
  with pytest.raises(ChallengeError, match='not valid JSON'):
    MNIST.load_config(write(tmp_path, '{"k": 40,'))


def test_overrides_win_and_resolve_paths_against_the_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = MNIST.load_config(write(tmp_path, ORIGINAL),
                             {'k': 7, 'model_dir': 'elsewhere', 'random_start': False})
  assert config.k == 7 and config.random_start is False
  assert config.model_dir == str(tmp_path / 'elsewhere')
  with pytest.raises(ChallengeError, match='"epsilon" must be a number'):
    MNIST.load_config(write(tmp_path, ORIGINAL), {'epsilon': 'big'})
  # The effective config serialises back to a file that loads to the same values.
  again = MNIST.load_config(write(tmp_path, config.to_json()))
  assert dict(again) == dict(config)
