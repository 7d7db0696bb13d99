"""The input defences through the commands: training behind a thermometer code (BPDA in the
training attack), every evaluation command behind a defence, AutoAttack's rand version from
autoattack.py, and the scripts' one-line refusals (common/defences;
docs/obfuscated_gradients.md)."""
import json

import numpy as np
import pytest

from common import commands, training
from common.errors import ChallengeError
from conftest import MNIST, quiet, run_script, tiny_config


def test_training_refuses_a_randomised_defence_and_yopo_behind_one(tmp_path, mnist_dir):
  with pytest.raises(ChallengeError, match='evaluation only'):
    training.Trainer(MNIST, tiny_config(tmp_path, mnist_dir, defence='random_resize_pad'),
                     log=quiet)
  with pytest.raises(ChallengeError, match='YOPO differentiates'):
    training.Trainer(MNIST, tiny_config(tmp_path, mnist_dir, defence='bit_depth',
                                        training_attack='yopo'), log=quiet)


def test_thermometer_training_through_the_trainer_and_evaluation_behind_it(tmp_path, mnist_dir):
  """PGD training with BPDA behind a thermometer: the network takes the codes; eval.py,
  attack.py and autoattack.py read it behind the same defence, and refuse it without."""
  config = tiny_config(tmp_path, mnist_dir, defence='thermometer', thermometer_levels=4,
                       bpda='on', num_eval_examples=20)
  # The training attack (no random start here) moves through the defence with BPDA only.
  for backward, moves in (('off', False), ('on', True)):
    trainer = training.Trainer(MNIST, config.replace(bpda=backward, random_start=False),
                               log=quiet)
    assert trainer.model.input_shape == (None, 784 * 4)
    batch = next(iter(trainer._input(MNIST.load_data(config).train, 0)))
    _, _, x_adv = trainer.train_step(batch)
    x_adv = trainer.strategy.experimental_local_results(x_adv)[0].numpy()
    x = trainer.strategy.experimental_local_results(batch[0])[0].numpy()
    assert (np.abs(x_adv - x).max() > 0.1) == moves, backward  # 3 steps of 0.05
  training.train(MNIST, config, log=quiet)
  results = commands.evaluate(MNIST, config, once=True, log=quiet)
  assert results.num_examples == 20
  summary = commands.run_named_attack(MNIST, config, attack='apgd-ce', iterations=2,
                                      output_dir=str(tmp_path / 'a'), log=quiet)
  assert summary['num_examples'] == 20
  with pytest.raises(ChallengeError, match='takes inputs of shape'):
    commands.evaluate(MNIST, config.replace(defence='none', bpda='off'), once=True, log=quiet)
  with pytest.raises(ChallengeError, match='trained behind thermometer'):
    commands.export_model(MNIST, config, output=str(tmp_path / 'net.keras'), log=quiet)
  assert not (tmp_path / 'net.keras').exists()


def test_a_randomised_defence_through_autoattack_py_and_eval_py(tmp_path, mnist_dir):
  config = tiny_config(tmp_path, mnist_dir, max_num_training_steps=2, num_eval_examples=12)
  training.train(MNIST, config, log=quiet)
  behind = config.replace(defence='random_resize_pad', eot_samples=2)
  out = tmp_path / 'aa'
  report = commands.run_autoattack(MNIST, behind, version='rand', iterations=2,
                                   output_dir=str(out), log=quiet)
  summary = json.loads((out / 'autoattack.json').read_text())
  assert summary['attacks'] == ['apgd-ce', 'apgd-dlr'] and summary['version'] == 'rand'
  assert summary['eot samples'] == 2 and summary['defence'] == 'random_resize_pad'
  assert 0 <= report.robust_accuracy <= report.clean_accuracy
  results = commands.evaluate(MNIST, behind, once=True, log=quiet)
  assert results.num_examples == 12
  # The same seed, the same figures.
  again = commands.evaluate(MNIST, behind, once=True, log=quiet)
  assert (again.nat_correct, again.adv_correct) == (results.nat_correct, results.adv_correct)
  # attack.py's apgd-dlr with EOT, evaluate.py's rows and landscape.py behind the defence.
  summary = commands.run_named_attack(MNIST, behind, attack='apgd-dlr', iterations=2,
                                      output_dir=str(tmp_path / 'dlr'), log=quiet)
  assert summary['num_examples'] == 12
  with pytest.raises(ChallengeError, match='takes one pass per gradient'):
    commands.run_named_attack(MNIST, behind, attack='fab-t', iterations=2,
                              output_dir=str(tmp_path / 'fab'), log=quiet)
  table = commands.evaluate_table(MNIST, behind.replace(k=2), num_examples=12,
                                  method=('natural', 'FGSM', 'apgd-ce'), attack=('apgd-ce:2',),
                                  output_dir=str(tmp_path / 'table'), log=quiet)
  assert [r.accuracy is not None for r in table].count(True) >= 3
  squeezed = config.replace(defence='bit_depth', bpda='on', k=2)
  traces = commands.loss_landscape(MNIST, squeezed, num_examples=2, restarts=2,
                                   output_dir=str(tmp_path / 'landscape'), log=quiet)
  assert np.isfinite(traces['model']).all()


def test_the_scripts_refuse_bad_defence_settings_in_one_line(tmp_path, mnist_dir):
  cases = [
      (['mnist_challenge/attack.py', '--attack', 'pgd', '--eot_samples', '2'],
       'nothing to average'),
      (['mnist_challenge/eval.py', '--once', '--bpda', 'on'], 'no defence is set'),
      (['mnist_challenge/autoattack.py', '--eot_samples', '0'],
       'config key "eot_samples" must be at least 1'),
  ]
  for args, match in cases:
    result = run_script(args + ['--data_dir', mnist_dir, '--model_dir',
                                str(tmp_path / 'none')], timeout=120)
    assert result.returncode == 1, (args, result.stderr)
    assert match in result.stderr and result.stderr.count('\n') == 1, result.stderr


def test_the_thermometer_recipe_trains_behind_its_code(tmp_path, mnist_dir):
  recipe = MNIST.load_config(f'{MNIST.package_dir}/configs/thermometer.json', {
      'data_dir': mnist_dir, 'model_dir': str(tmp_path / 'model'), 'max_num_training_steps': 2,
      'training_batch_size': 8, 'robustness_check_steps': 0, 'num_checkpoint_steps': 2})
  assert (recipe.defence, recipe.thermometer_levels, recipe.bpda) == ('thermometer', 16, 'on')
  training.train(MNIST, recipe, log=quiet)
  with open(tmp_path / 'model' / 'config.json') as f:
    assert json.load(f)['defence'] == 'thermometer'


def test_cifar_commands_behind_each_defence(tmp_path, cifar_dir):
  """CIFAR-10 (pixels in [0, 255], colour): training behind a thermometer code with BPDA,
  eval.py behind it and behind bit_depth, autoattack.py's rand version behind
  random_resize_pad."""
  from conftest import CIFAR10, tiny_cifar_config
  coded = tiny_cifar_config(tmp_path / 'coded', cifar_dir, max_num_training_steps=2,
                            defence='thermometer', thermometer_levels=4, bpda='on',
                            num_eval_examples=8)
  training.train(CIFAR10, coded, log=quiet)
  assert commands.evaluate(CIFAR10, coded, once=True, log=quiet).num_examples == 8
  plain = tiny_cifar_config(tmp_path / 'plain', cifar_dir, max_num_training_steps=2,
                            num_eval_examples=8)
  training.train(CIFAR10, plain, log=quiet)
  squeezed = commands.evaluate(CIFAR10, plain.replace(defence='bit_depth', bpda='on'),
                               once=True, log=quiet)
  assert squeezed.num_examples == 8
  report = commands.run_autoattack(
      CIFAR10, plain.replace(defence='random_resize_pad', eot_samples=2), version='rand',
      iterations=1, output_dir=str(tmp_path / 'aa'), log=quiet)
  assert 0 <= report.robust_accuracy <= report.clean_accuracy
