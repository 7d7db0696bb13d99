"""fetch_model.py for both challenges: download a released model, check its SHA-256, unpack it.

As the originals: download the zip, print its SHA-256, unpack it. Unlike them: the download
goes to a temporary file (no partial zip is left behind), shows progress, and fails with a
message naming the URL; a digest that differs from the published one is an error and
nothing is unpacked; zip entries that would land outside the target are refused; the
checkpoint directory is moved into place only when complete, at checkpoints/<challenge>/<name>.
"""
import dataclasses
import hashlib
import os
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import Dict, Optional

import tensorflow as tf

from common import files
from common.errors import ChallengeError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINTS_DIR = os.path.join(REPO, 'checkpoints')
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Release:
  url: str
  sha256: Optional[str]  # the published digest; None where none was published


_MNIST_URL = 'https://github.com/MadryLab/mnist_challenge_models/raw/master/{}.zip'
RELEASES: Dict[str, Dict[str, Release]] = {
    'mnist': {
        'natural': Release(_MNIST_URL.format('natural'), None),
        'adv_trained': Release(_MNIST_URL.format('adv_trained'), None),
        'secret': Release(_MNIST_URL.format('secret'),
                          '14eea09c72092db5c2eb5e34cd105974f42569281d2f34826316e356d057f96d'),
    },
    'cifar10': {
        'natural': Release('https://www.dropbox.com/s/cgzd5odqoojvxzk/natural.zip?dl=1',
                           '6af2addfc5bc75e3b16b8654c907a8dfaebeffc600871115460063ade1cd1ee7'),
        'adv_trained': Release('https://www.dropbox.com/s/g4b6ntrp8zrudbz/adv_trained.zip?dl=1',
                               None),
        'secret': Release('https://www.dropbox.com/s/ywc0hg8lr5ba8zd/secret.zip?dl=1',
                          '555be6e892372599380c9da5d5f9802f9cbd098be8a47d24d96937a002305fd4'),
    },
}


def download(url: str, directory: str, log=print) -> (str, str):
  """Downloads `url` into a temporary file in `directory`; returns (path, sha256 hex)."""
  digest = hashlib.sha256()
  handle, path = tempfile.mkstemp(dir=directory, suffix='.zip.part')
  try:
    with os.fdopen(handle, 'wb') as out, urllib.request.urlopen(url, timeout=60) as response:
      total = int(response.headers.get('Content-Length') or 0)
      done = 0
      while True:
        chunk = response.read(_CHUNK)
        if not chunk:
          break
        out.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        log(f'\r  {done / 2**20:.1f} MiB' + (f' of {total / 2**20:.1f} MiB '
                                              f'({100 * done / total:.0f}%)' if total else ''),
            end='')
      log('')
  except (urllib.error.URLError, OSError, ValueError) as e:
    os.remove(path)
    reason = getattr(e, 'reason', None) or e
    raise ChallengeError(f'downloading {url} failed ({reason}); check the network, or pass '
                         '--url with a copy of the zip (a file:// URL works)') from None
  except BaseException:
    os.remove(path)
    raise
  return path, digest.hexdigest()


def _check_members(archive: zipfile.ZipFile, path: str):
  for info in archive.infolist():
    name = info.filename
    parts = name.replace('\\', '/').split('/')
    is_link = stat.S_ISLNK(info.external_attr >> 16)
    if name.startswith(('/', '\\')) or '..' in parts or ':' in parts[0] or is_link:
      raise ChallengeError(f'{path} holds an entry that would be written outside the target '
                           f'directory ({name!r}); refusing to unpack it')


def _checkpoint_dirs(root):
  return sorted(directory for directory, _, names in os.walk(root)
                if any(n.endswith('.index') for n in names))


def _step(prefix):
  tail = prefix.rsplit('-', 1)[-1]
  return int(tail) if tail.isdigit() else -1


def _rewrite_index(directory):
  """Rewrites the `checkpoint` index with paths relative to `directory`: TF1's Saver wrote
  the absolute paths of the machine that trained the model."""
  prefixes = sorted((n[:-len('.index')] for n in os.listdir(directory) if n.endswith('.index')),
                    key=_step)
  state = tf.train.get_checkpoint_state(directory)
  named = state and os.path.basename(state.model_checkpoint_path)
  latest = named if named in prefixes else prefixes[-1]
  tf.compat.v1.train.update_checkpoint_state(directory, latest, prefixes)


def unpack(zip_path: str, target: str, url: str) -> str:
  """Unpacks the one checkpoint directory of the zip to `target`, whole or not at all."""
  parent = os.path.dirname(target)
  staging = tempfile.mkdtemp(dir=parent, prefix='.unpacking-')
  try:
    try:
      with zipfile.ZipFile(zip_path) as archive:
        _check_members(archive, url)
        archive.extractall(staging)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
      raise ChallengeError(f'{url} is not a valid zip ({e}); nothing was unpacked') from None
    found = _checkpoint_dirs(staging)
    if len(found) != 1:
      raise ChallengeError(f'{url} should hold one directory of checkpoint files '
                           f'(*.index, *.data-*), found {len(found)}; nothing was unpacked')
    _rewrite_index(found[0])
    os.replace(found[0], target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return target


def fetch(challenge: str, name: str, url: Optional[str] = None,
          checkpoints_dir: str = CHECKPOINTS_DIR, log=print) -> str:
  """Fetches release `name` of `challenge` to checkpoints_dir/<challenge>/<name>; returns
  that model_dir."""
  releases = RELEASES[challenge]
  if name not in releases:
    raise ChallengeError(f'unknown model "{name}"; use one of: ' + ', '.join(releases))
  release = releases[name]
  target = os.path.join(checkpoints_dir, challenge, name)
  if os.path.lexists(target):
    raise ChallengeError(f'{target} already exists; use it as --model_dir, or delete it to '
                         'fetch the model again')
  # Before the download: a file, a FIFO or a read-only place where the model would go.
  files.check_output(os.path.dirname(target), '--checkpoints_dir', directory=True)
  files.make_directory(os.path.dirname(target), '--checkpoints_dir')
  url = url or release.url
  log(f'Downloading {url}')
  zip_path, sha256 = download(url, os.path.dirname(target), log)
  try:
    log(f'SHA256 hash: {sha256}')
    if release.sha256 is None:
      record = f'{target}.sha256'
      files.save_text(record, f'{sha256}  {url}\n', 'the digest record')
      log(f'No digest was published for {challenge} {name}: recorded this one in {record}')
    elif sha256 != release.sha256:
      raise ChallengeError(f'{url} has SHA-256 {sha256}, but the published digest of '
                           f'{challenge} {name} is {release.sha256}: the download is corrupt '
                           'or not the released model; nothing was unpacked')
    else:
      log('The digest matches the published one.')
    log('Extracting model')
    unpack(zip_path, target, url)
  finally:
    os.remove(zip_path)
  log(f'Extracted model in {target}')
  log(f'Use it with --model_dir {target}')
  return target


def main(challenge: str, argv=None) -> None:
  """`python <challenge>/fetch_model.py {natural,adv_trained,secret} [--url URL]`."""
  import argparse
  parser = argparse.ArgumentParser(description='Downloads a released model, checks its SHA-256 '
                                   'and unpacks it under checkpoints/' + challenge)
  parser.add_argument('name', choices=sorted(RELEASES[challenge]))
  parser.add_argument('--url', help='download from here instead (a mirror, a file:// URL)')
  parser.add_argument('--checkpoints_dir', default=CHECKPOINTS_DIR)
  args = parser.parse_args(argv)
  try:
    fetch(challenge, args.name, args.url, args.checkpoints_dir)
  except ChallengeError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(e.exit_code)
  except OSError as e:  # a full disk while downloading or unpacking, ...
    print(f'error: {files.os_error(e, "cannot write " + (e.filename or args.checkpoints_dir))}',
          file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print('\ninterrupted', file=sys.stderr)
    sys.exit(130)
