"""The CIFAR-10 config (the original file loads unchanged) and its scripts as users run them."""
import json
import os

import numpy as np
import pytest

from cifar10_challenge.challenge import CIFAR10
from common.errors import ChallengeError
from conftest import CIFAR_TEST, NON_WIDE, REPO, as_flags, check_attack_and_scores, run_script

# MadryLab/cifar10_challenge config.json, as released.
ORIGINAL = '''{
  "_comment": "===== MODEL CONFIGURATION =====",
  "model_dir": "models/a_very_robust_model",

  "_comment": "===== DATASET CONFIGURATION =====",
  "data_path": "cifar10_data",

  "_comment": "===== TRAINING CONFIGURATION =====",
  "tf_random_seed": 451760341,
  "np_random_seed": 216105420,
  "max_num_training_steps": 80000,
  "num_output_steps": 100,
  "num_summary_steps": 100,
  "num_checkpoint_steps": 1000,
  "training_batch_size": 128,
  "step_size_schedule": [[0, 0.1], [40000, 0.01], [60000, 0.001]],
  "weight_decay": 0.0002,
  "momentum": 0.9,

  "_comment": "===== EVAL CONFIGURATION =====",
  "num_eval_examples": 10000,
  "eval_batch_size": 100,
  "eval_on_cpu": false,

  "_comment": "=====ADVERSARIAL EXAMPLES CONFIGURATION=====",
  "epsilon": 8.0,
  "num_steps": 10,
  "step_size": 2.0,
  "random_start": true,
  "loss_func": "xent",
  "store_adv_path": "attack.npy"
}
'''


def test_original_config_loads_unchanged(tmp_path):
  (tmp_path / 'config.json').write_text(ORIGINAL)
  config = CIFAR10.load_config(str(tmp_path / 'config.json'))
  original = {k: v for k, v in json.loads(ORIGINAL).items() if not k.startswith('_')}
  for key, value in original.items():
    if key in ('model_dir', 'data_path', 'store_adv_path'):
      assert config[key] == os.path.join(str(tmp_path), value)
    else:
      assert config[key] == value and type(config[key]) is type(value), key
  # Keys the original did not have take the original's behaviour.
  assert config.filters == [16, 160, 320, 640]
  assert config.training_attack_batch_norm == 'batch'


def test_shipped_config_holds_the_original_defaults():
  config = CIFAR10.load_config()
  for key, value in json.loads(ORIGINAL).items():
    if not key.startswith('_') and key not in ('model_dir', 'data_path', 'store_adv_path'):
      assert config[key] == value, key
  assert config.model_dir.endswith(os.path.join('checkpoints', 'cifar10', 'a_very_robust_model'))


def test_list_keys_are_type_checked(tmp_path):
  text = ORIGINAL.replace('"weight_decay": 0.0002', '"weight_decay": [0.0002]')
  (tmp_path / 'config.json').write_text(text)
  with pytest.raises(ChallengeError, match='"weight_decay" must be a number'):
    CIFAR10.load_config(str(tmp_path / 'config.json'))


@pytest.mark.slow
def test_scripts_train_attack_and_score_and_reject_a_bad_submission(tmp_path, cifar_dir):
  settings = dict(data_path=cifar_dir, model_dir=str(tmp_path / 'model'), filters=NON_WIDE,
                  max_num_training_steps=1, training_batch_size=8, num_steps=2,
                  eval_batch_size=25, num_eval_examples=CIFAR_TEST,
                  step_size_schedule=[[0, 0.05]], store_adv_path=str(tmp_path / 'attack.npy'),
                  pred_path=str(tmp_path / 'pred.npy'))
  flags = as_flags(settings)
  trained = run_script(['cifar10_challenge/train.py'] + flags)
  assert trained.returncode == 0, trained.stderr
  assert 'training adv accuracy' in trained.stdout
  with open(tmp_path / 'model' / 'config.json') as f:
    assert json.load(f)['filters'] == NON_WIDE
  attacked = run_script(['pgd_attack.py'] + flags, cwd=os.path.join(REPO, 'cifar10_challenge'))
  assert attacked.returncode == 0, attacked.stderr
  scored = run_script(['-m', 'cifar10_challenge.run_attack'] + flags)
  assert scored.returncode == 0, scored.stderr
  assert np.load(tmp_path / 'pred.npy').shape == (CIFAR_TEST,)
  # ε 8 and [0, 255] from the shipped config.json.
  check_attack_and_scores(CIFAR10, CIFAR10.load_config(overrides=settings), attacked.stdout,
                          scored.stdout)

  np.save(tmp_path / 'attack.npy', np.load(tmp_path / 'attack.npy') + 20.0)
  os.remove(tmp_path / 'pred.npy')
  rejected = run_script(['cifar10_challenge/run_attack.py'] + flags)
  assert rejected.returncode == 2
  assert 'error: Invalid pixel range. Expected [0, 255]' in rejected.stderr
  assert not os.path.exists(tmp_path / 'pred.npy')
