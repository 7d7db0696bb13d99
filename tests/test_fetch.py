"""fetch_model.py: download (from a local HTTP server or a file:// URL), digest check, safe
unpacking, and clean failure. Nothing touches the network."""
import functools
import hashlib
import http.server
import os
import stat
import threading
import zipfile

import pytest
import tensorflow as tf

from common import fetch
from common.errors import ChallengeError
from conftest import run_script

CHECKPOINT_FILES = {
    # As the original machine wrote the index: absolute paths that do not exist here.
    'models/natural/checkpoint':
        b'model_checkpoint_path: "/home/someone/models/natural/checkpoint-24900"\n'
        b'all_model_checkpoint_paths: "/home/someone/models/natural/checkpoint-24900"\n',
    'models/natural/checkpoint-24900.index': b'index bytes',
    'models/natural/checkpoint-24900.data-00000-of-00001': b'\x00' * 300_000,
    'models/natural/checkpoint-24900.meta': b'meta bytes',
}


def make_zip(path, entries):
  with zipfile.ZipFile(path, 'w') as archive:
    for name, data in entries.items():
      archive.writestr(name, data)
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
  """An HTTP server on 127.0.0.1 serving a directory; yields (directory, base URL)."""
  directory = tmp_path_factory.mktemp('served')

  class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(Quiet, directory=str(directory)))
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield directory, f'http://127.0.0.1:{httpd.server_address[1]}'
  httpd.shutdown()


@pytest.fixture
def release(server, monkeypatch):
  """Serves `entries` as a zip and makes it the release (challenge, name) with `digest`
  ('match', None or a wrong one)."""
  directory, base = server

  def make(name, entries, digest='match', challenge='mnist'):
    sha256 = make_zip(directory / f'{name}.zip', entries)
    published = sha256 if digest == 'match' else digest
    monkeypatch.setitem(fetch.RELEASES[challenge], name,
                        fetch.Release(f'{base}/{name}.zip', published))
    return sha256
  return make


def leftovers(parent):
  return sorted(n for n in os.listdir(parent) if n.startswith('.') or n.endswith('.part'))


def test_matching_digest_unpacks_the_checkpoint_directory(release, tmp_path):
  sha256 = release('secret', CHECKPOINT_FILES)
  lines = []
  model_dir = fetch.fetch('mnist', 'secret', checkpoints_dir=str(tmp_path),
                          log=lambda *a, **k: lines.append(a[0]))
  assert model_dir == str(tmp_path / 'mnist' / 'secret')
  assert sorted(os.listdir(model_dir)) == sorted(os.path.basename(n) for n in CHECKPOINT_FILES)
  # The index is rewritten to this place, so tf.train.latest_checkpoint finds it.
  assert tf.train.latest_checkpoint(model_dir) == os.path.join(model_dir, 'checkpoint-24900')
  assert f'SHA256 hash: {sha256}' in lines and 'The digest matches the published one.' in lines
  assert any('MiB' in line and '100%' in line for line in lines)  # progress
  assert lines[-1] == f'Use it with --model_dir {model_dir}'
  assert leftovers(tmp_path / 'mnist') == []


def test_an_unpublished_digest_is_printed_and_recorded(release, tmp_path):
  sha256 = release('natural', CHECKPOINT_FILES, digest=None)
  lines = []
  model_dir = fetch.fetch('mnist', 'natural', checkpoints_dir=str(tmp_path),
                          log=lambda *a, **k: lines.append(a[0]))
  with open(model_dir + '.sha256') as f:
    assert f.read().startswith(sha256)
  assert any('No digest was published' in line for line in lines)


def test_a_wrong_digest_is_an_error_and_nothing_is_unpacked(release, tmp_path):
  release('secret', CHECKPOINT_FILES, digest='0' * 64)
  with pytest.raises(ChallengeError, match='published digest of mnist secret is 0000'):
    fetch.fetch('mnist', 'secret', checkpoints_dir=str(tmp_path), log=lambda *a, **k: None)
  assert os.listdir(tmp_path / 'mnist') == []


def symlink(name, target):
  """A zip entry that unzip tools would create as a symbolic link to `target`."""
  info = zipfile.ZipInfo(name)
  info.create_system = 3  # Unix: external_attr holds the file mode
  info.external_attr = (stat.S_IFLNK | 0o777) << 16
  return info, target.encode()


HOSTILE_ENTRIES = {
    'parent': ('../../evil.txt', b'x'),
    'absolute': ('/tmp/evil.txt', b'x'),
    'windows-drive': ('C:/evil.txt', b'x'),
    'backslash-parent': ('..\\evil.txt', b'x'),
    'symlink-outside': symlink('models/natural/escape', '../../../../etc/passwd'),
    'symlink-inside': symlink('models/natural/alias', 'checkpoint-24900.index'),
}


@pytest.mark.parametrize('kind', list(HOSTILE_ENTRIES))
def test_entries_that_could_land_outside_are_refused(release, tmp_path, kind):
  # Beside a complete checkpoint directory, so that nothing but our own refusal can stop it:
  # zipfile.extractall itself strips '..' and a leading '/', and writes a symlink entry as a
  # plain file, so without the refusal this archive would unpack fine.
  entry, data = HOSTILE_ENTRIES[kind]
  release('natural', {**CHECKPOINT_FILES, entry: data}, digest=None)
  with pytest.raises(ChallengeError, match='outside the target') as raised:
    fetch.fetch('mnist', 'natural', checkpoints_dir=str(tmp_path), log=lambda *a, **k: None)
  name = entry.filename if isinstance(entry, zipfile.ZipInfo) else entry
  assert repr(name) in str(raised.value)
  assert not os.path.exists(tmp_path / 'mnist' / 'natural')
  assert leftovers(tmp_path / 'mnist') == []
  assert not os.path.exists(tmp_path / 'evil.txt') and not os.path.exists('/tmp/evil.txt')


@pytest.mark.parametrize('entries, message', [
    ({'models/readme.txt': b'no checkpoint here'}, 'found 0'),
    (None, 'not a valid zip'),
])
def test_bad_archives_are_refused_and_leave_nothing(release, server, tmp_path, entries, message):
  if entries is None:
    release('natural', {}, digest=None)
    (server[0] / 'natural.zip').write_bytes(b'PK\x03\x04 this is not a zip file at all')
  else:
    release('natural', entries, digest=None)
  with pytest.raises(ChallengeError, match=message):
    fetch.fetch('mnist', 'natural', checkpoints_dir=str(tmp_path), log=lambda *a, **k: None)
  assert not os.path.exists(tmp_path / 'mnist' / 'natural')
  assert leftovers(tmp_path / 'mnist') == []


def test_no_network_names_the_url_and_leaves_nothing(tmp_path, reserve_ports):
  port = reserve_ports(1)[0]  # a port nobody listens on
  url = f'http://127.0.0.1:{port}/natural.zip'
  with pytest.raises(ChallengeError, match=f'downloading {url} failed'):
    fetch.fetch('cifar10', 'natural', url=url, checkpoints_dir=str(tmp_path),
                log=lambda *a, **k: None)
  assert os.listdir(tmp_path / 'cifar10') == []


def test_an_existing_model_dir_is_not_overwritten(release, tmp_path):
  release('natural', CHECKPOINT_FILES, digest=None)
  fetch.fetch('mnist', 'natural', checkpoints_dir=str(tmp_path), log=lambda *a, **k: None)
  with pytest.raises(ChallengeError, match='already exists'):
    fetch.fetch('mnist', 'natural', checkpoints_dir=str(tmp_path), log=lambda *a, **k: None)


@pytest.mark.slow  # two fresh interpreters
def test_the_script_takes_a_file_url(tmp_path):
  make_zip(tmp_path / 'mirror.zip', CHECKPOINT_FILES)
  result = run_script(['cifar10_challenge/fetch_model.py', 'adv_trained', '--url',
                       f'file://{tmp_path / "mirror.zip"}', '--checkpoints_dir',
                       str(tmp_path / 'checkpoints')])
  assert result.returncode == 0, result.stderr
  model_dir = tmp_path / 'checkpoints' / 'cifar10' / 'adv_trained'
  assert f'Use it with --model_dir {model_dir}' in result.stdout
  assert (model_dir / 'checkpoint-24900.index').exists()
  wrong = run_script(['mnist_challenge/fetch_model.py', 'robust'])
  assert wrong.returncode == 2 and 'natural' in wrong.stderr


def test_a_checkpoints_dir_of_the_wrong_kind_is_refused_before_the_download(tmp_path):
  regular = tmp_path / 'file'
  regular.write_text('kept')
  fifo = tmp_path / 'fifo'
  os.mkfifo(fifo)
  never = 'http://127.0.0.1:9/never-asked.zip'  # a download would fail otherwise
  for place, kind in ((regular, 'a regular file'), (fifo, r'a FIFO \(named pipe\)')):
    with pytest.raises(ChallengeError, match=f'--checkpoints_dir {place}/mnist cannot be '
                       f'created: {place} is {kind}, not a directory'):
      fetch.fetch('mnist', 'natural', url=never, checkpoints_dir=str(place),
                  log=lambda *a, **k: None)
  assert regular.read_text() == 'kept'
