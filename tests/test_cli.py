"""The scripts as users run them: by path, from their directory, and with -m."""
import os

import numpy as np
import pytest

from conftest import REPO, TINY_TEST, as_flags, check_attack_and_scores, run_script
from mnist_challenge.challenge import MNIST

pytestmark = pytest.mark.slow


def common_settings(tmp_path, mnist_dir):
  return dict(data_dir=mnist_dir, model_dir=str(tmp_path / 'model'), max_num_training_steps=2,
              num_checkpoint_steps=1, training_batch_size=10, k=2, eval_batch_size=25,
              store_adv_path=str(tmp_path / 'attack.npy'), pred_path=str(tmp_path / 'pred.npy'))


def common_flags(tmp_path, mnist_dir):
  return as_flags(common_settings(tmp_path, mnist_dir))


@pytest.fixture(scope='module')
def trained_dir(tmp_path_factory, mnist_dir):
  tmp_path = tmp_path_factory.mktemp('cli')
  result = run_script(['mnist_challenge/train.py'] + common_flags(tmp_path, mnist_dir))
  assert result.returncode == 0, result.stderr
  assert 'training adv accuracy' in result.stdout
  return tmp_path


def test_train_by_path_writes_checkpoints(trained_dir):
  names = os.listdir(trained_dir / 'model')
  assert {'checkpoint-0.index', 'checkpoint-1.index', 'checkpoint-2.index',
          'config.json'} <= set(names)


def test_pgd_attack_from_its_directory_then_run_attack_with_dash_m(trained_dir, mnist_dir):
  flags = common_flags(trained_dir, mnist_dir)
  attack = run_script(['pgd_attack.py'] + flags, cwd=os.path.join(REPO, 'mnist_challenge'))
  assert attack.returncode == 0, attack.stderr
  assert f'Examples stored in {trained_dir / "attack.npy"}' in attack.stdout
  scored = run_script(['-m', 'mnist_challenge.run_attack'] + flags)
  assert scored.returncode == 0, scored.stderr
  assert np.load(trained_dir / 'pred.npy').shape == (TINY_TEST,)
  # ε 0.3 and [0, 1] from the shipped config.json.
  config = MNIST.load_config(overrides=common_settings(trained_dir, mnist_dir))
  check_attack_and_scores(MNIST, config, attack.stdout, scored.stdout)


def test_run_attack_rejects_an_invalid_submission_with_exit_code_2(trained_dir, mnist_dir):
  bad = trained_dir / 'bad.npy'
  np.save(bad, np.zeros((TINY_TEST, 28, 28), np.float32))
  flags = common_flags(trained_dir, mnist_dir) + ['--store_adv_path', str(bad)]
  result = run_script(['mnist_challenge/run_attack.py'] + flags)
  assert result.returncode == 2
  assert f'Invalid shape: expected ({TINY_TEST},784), found ({TINY_TEST}, 28, 28)' in result.stderr
  assert 'Traceback' not in result.stderr


def test_eval_once_on_an_empty_model_dir_exits_1(tmp_path, mnist_dir):
  result = run_script(['-m', 'mnist_challenge.eval', '--once', '--data_dir', mnist_dir,
                       '--model_dir', str(tmp_path / 'empty')])
  assert result.returncode == 1
  assert 'nothing to evaluate: no checkpoint in' in result.stderr
  assert 'Traceback' not in result.stderr


def test_a_bad_config_file_is_one_clear_line(tmp_path):
  config = tmp_path / 'config.json'
  config.write_text('{"k": "forty"}')
  result = run_script(['mnist_challenge/train.py', '--config', str(config)])
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'error: config key "k" must be an integer, found "forty" (str)')


def test_eval_loop_stops_cleanly_on_ctrl_c(tmp_path, mnist_dir):
  import signal
  import subprocess
  import sys
  import time
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  process = subprocess.Popen(
      [sys.executable, '-m', 'mnist_challenge.eval', '--data_dir', mnist_dir, '--model_dir',
       str(tmp_path / 'empty'), '--poll_seconds', '0.2'], cwd=REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      # Ctrl-C at a terminal: a suite started in the background (`cmd &` in a script)
      # passes SIGINT down as ignored, and Python then keeps ignoring it.
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    deadline = time.time() + 120
    while not os.path.isdir(tmp_path / 'empty') and time.time() < deadline:
      time.sleep(0.2)  # created once the config is read: the loop is about to wait
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
  finally:
    process.kill()
  assert process.returncode == 130
  assert 'No checkpoint yet, waiting' in out
  assert 'Traceback' not in err
