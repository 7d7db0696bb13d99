"""The README is a front door that keeps its promises: it stays short, every command of its
Quick start runs as written (with the shipped model; cheaper settings and outputs in a
temporary directory appended, which absl lets override the line's own), every relative link
in it and in docs/ resolves (anchors included), and every doc opens by saying what it
covers and is listed in docs/README.md."""
import glob
import os
import re
import shlex

import numpy as np
import pytest

from conftest import REPO, require_shared_mnist, run_script

README = os.path.join(REPO, 'README.md')
DOCS = sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
MAX_README_BYTES = 10 * 1024


def _prose(text):
  """The text without fenced code blocks and inline code (links there are not links)."""
  text = re.sub(r'^```.*?^```', '', text, flags=re.MULTILINE | re.DOTALL)
  return re.sub(r'`[^`\n]*`', '', text)


def _anchors(path):
  """GitHub's anchors of a markdown file's headings."""
  with open(path, encoding='utf-8') as f:
    text = re.sub(r'^```.*?^```', '', f.read(), flags=re.MULTILINE | re.DOTALL)
  anchors = set()
  for heading in re.findall(r'^#{1,6} +(.+?) *#* *$', text, flags=re.MULTILINE):
    slug = re.sub(r'[^\w\- ]', '', heading.strip().lower().replace('`', '')).replace(' ', '-')
    anchors.add(slug)
  return anchors


def test_the_readme_stays_short():
  assert os.path.getsize(README) <= MAX_README_BYTES, (
      f'README.md is {os.path.getsize(README)} bytes; the front door keeps to '
      f'{MAX_README_BYTES}: move the detail to docs/')


@pytest.mark.parametrize('page', [README] + DOCS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_resolves(page):
  with open(page, encoding='utf-8') as f:
    links = re.findall(r'\]\(([^)\s]+)\)', _prose(f.read()))
  if page == README:
    assert len(links) >= 15  # (so the pattern finds links at all)
  for link in links:
    if re.match(r'[a-z]+:', link):  # http:, https:, mailto:
      continue
    target, _, anchor = link.partition('#')
    path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
    assert os.path.exists(path), f'{link}: {path} does not exist'
    if anchor:
      assert path.endswith('.md'), f'{link}: an anchor into a file that is not markdown'
      assert anchor in _anchors(path), f'{link}: no heading of {path} has the anchor #{anchor}'


def test_every_doc_opens_with_what_it_covers_and_is_indexed():
  with open(os.path.join(REPO, 'docs', 'README.md'), encoding='utf-8') as f:
    index = f.read()
  for page in DOCS:
    with open(page, encoding='utf-8') as f:
      title, *rest = f.read().split('\n\n')
    first = next(block for block in rest if block.strip())
    assert title.startswith('# ') and not first.lstrip().startswith(
        ('```', '|', '* ', '- ', '#')), f'{page} does not open with a paragraph'
    name = os.path.basename(page)
    if name != 'README.md':
      assert f']({name})' in index, f'docs/README.md does not list {name}'


def _quick_start():
  """The Quick start's command lines, each as (argv, its comment)."""
  with open(README, encoding='utf-8') as f:
    text = f.read()
  section = text.split('## Quick start', 1)[1].split('\n## ', 1)[0]
  block = re.search(r'^```bash\n(.*?)^```', section, flags=re.MULTILINE | re.DOTALL).group(1)
  return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_quick_start_is_one_line_per_command():
  commands = _quick_start()
  scripts = [os.path.basename(argv[1]) for argv in commands]
  assert all(argv[0] == 'python' for argv in commands)
  for needed in ('train.py', 'eval.py', 'pgd_attack.py', 'run_attack.py', 'autoattack.py',
                 'export_model.py'):
    assert needed in scripts, f'the Quick start has no {needed}'


@pytest.mark.slow
@pytest.mark.realdata
def test_every_quick_start_command_runs(tmp_path):
  require_shared_mnist()
  model_dir = str(tmp_path / 'my_model')
  exported = str(tmp_path / 'fast_robust.keras')
  # Appended to the line: cheaper settings, and outputs in tmp_path (the last value wins).
  cheaper = {
      'train.py': ['--model_dir', model_dir, '--max_num_training_steps', '1',
                   '--robustness_check_examples', '20'],
      'eval.py': ['--once', '--model_dir', model_dir, '--num_eval_examples', '20', '--k', '1'],
      'pgd_attack.py': ['--store_adv_path', str(tmp_path / 'attack.npy'), '--k', '0'],
      'run_attack.py': ['--store_adv_path', str(tmp_path / 'attack.npy'),
                        '--pred_path', str(tmp_path / 'pred.npy')],
      'autoattack.py': ['--num_examples', '10', '--iterations', '1', '--store_adv_path',
                        str(tmp_path / 'aa.npy'), '--output_dir', str(tmp_path / 'aa')],
      'attack.py': ['--num_examples', '4', '--iterations', '10', '--store_adv_path',
                    str(tmp_path / 'cw.npy'), '--output_dir', str(tmp_path / 'cw')],
      'export_model.py': ['--output', exported],
  }
  for argv in _quick_start():
    script = os.path.basename(argv[1])
    extra = list(cheaper[script])
    if '--model_path' in argv:  # eval.py on the exported file
      extra = ['--model_path', exported, '--num_eval_examples', '20', '--k', '1']
    result = run_script(argv[1:] + extra, timeout=600)
    assert result.returncode == 0, (argv, result.stderr[-2000:])
  assert np.load(tmp_path / 'attack.npy').shape == (10000, 784)
  assert np.load(tmp_path / 'pred.npy').shape == (10000,)
  assert np.load(tmp_path / 'aa.npy').shape == (10000, 784)
  assert np.load(tmp_path / 'cw' / 'distances.npy').shape == (4,)
  assert os.path.exists(os.path.join(model_dir, 'checkpoint-1.index')) and os.path.isfile(exported)
  assert not os.path.exists(os.path.join(REPO, 'my_model'))  # nothing written in the checkout
