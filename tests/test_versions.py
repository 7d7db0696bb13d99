"""The tested TensorFlow/Keras ranges: declared once in setup.cfg and common/versions.py (held
together here), and checked by every command at start-up."""
import configparser
import os

import pytest

from common import versions
from conftest import REPO, run_script

pytestmark = pytest.mark.versions


def test_setup_cfg_declares_the_ranges_the_commands_check():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO, 'setup.cfg'))
  declared = [line.strip() for line in parser['options']['install_requires'].splitlines()]
  for name in versions.SUPPORTED:
    assert versions.requirement(name) in declared, (name, declared)
  assert versions.requirement('tensorflow') == 'tensorflow>=2.18.1,<2.22'


def test_the_installed_releases_are_in_range():
  assert versions.problem(versions.installed()) is None, versions.installed()


@pytest.mark.parametrize('tensorflow, keras, inside', [
    ('2.18.1', '3.14.0', True), ('2.21.0', '3.15.1', True), ('2.19.0', '3.14.1', True),
    ('2.18.0', '3.14.0', False), ('2.16.2', '3.3.3', False), ('2.18.1', '3.13.2', False),
    ('2.21.0', '3.6.0', False), ('2.20.0', '3.11.3', False),
    ('2.22.0', '3.15.1', False), ('2.22.0rc0', '3.15.1', False), ('2.21.0', '3.16.0', False),
    ('2.21.0', '(not installed)', False), ('2.15.1', '2.15.0', False)])
def test_releases_inside_and_outside_the_ranges(tensorflow, keras, inside):
  reason = versions.problem({'tensorflow': tensorflow, 'keras': keras})
  assert (reason is None) == inside
  if not inside:
    assert reason == (
        f'tensorflow {tensorflow} and keras {keras} are installed; this project is tested with '
        'tensorflow>=2.18.1,<2.22 and keras>=3.14.0,<3.16 only: pip install '
        '"tensorflow>=2.18.1,<2.22" "keras>=3.14.0,<3.16"')


@pytest.mark.slow
def test_a_command_outside_the_ranges_stops_in_one_line_before_any_work(tmp_path):
  # train.py in a process whose TensorFlow says it is 2.16.2.
  model_dir = tmp_path / 'model'
  program = ('import runpy, sys\n'
             'import tensorflow\n'
             'tensorflow.__version__ = "2.16.2"\n'
             f'sys.argv = ["train.py", "--model_dir", "{model_dir}"]\n'
             'runpy.run_path("mnist_challenge/train.py", run_name="__main__")\n')
  result = run_script(['-c', program])
  assert result.returncode == 1
  # (This program imports TensorFlow before the script does, so its start-up lines show.)
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == 'error: ' + versions.problem(
      {'tensorflow': '2.16.2', 'keras': versions.installed()['keras']})
  assert result.stdout == '' and not model_dir.exists()
