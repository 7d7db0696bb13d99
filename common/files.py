"""Every file a command reads or writes goes through here, so that bad paths get one clear
error and nothing is lost (docs/robustness.md).

Reading: `open_input` opens without blocking (a FIFO cannot hang the command), checks on the
open descriptor that it is a regular file (not a directory, FIFO, socket or device such as
/dev/zero, whatever a symbolic link points to) and, where the caller knows how large the file
can be, refuses a larger one before reading. Paths that a library opens itself (Keras model
files, SavedModels, checkpoints) are checked by `require_regular` / `require_regular_tree`.

Writing: `check_output` runs before the work, so that a directory in the way, a parent that
is a file, a device or a read-only place is reported before minutes of attacking are spent;
`check_distinct` refuses an output that is one of the command's inputs. Outputs are written to
a partial file beside the target and renamed into place (`atomic_write`), with the umask's
mode; a write that fails (full disk, read-only file system) removes its partial file and is
one ChallengeError. A partial file or staging directory is locked while it is written, so one
left by a killed run (kill -9) is recognised as stale and removed by the next write of that
output. `exclusive_lock` keeps a second writer off a directory (a model_dir being trained).
"""
import contextlib
import errno
import fcntl
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from typing import BinaryIO, Iterable, Optional, Sequence, Tuple, Type

import numpy as np

from common.errors import ChallengeError

PARTIAL = '.partial-'  # in the name of what is being written: '.<name>.partial-XXXXXXXX'
LOCK_FILE = '.lock'  # in a directory that one writer at a time may use (model_dir)


# --- what a path is ----------------------------------------------------------------------

def kind(mode: int) -> str:
  """'a directory', 'a FIFO', ... for a stat mode."""
  for test, name in ((stat.S_ISREG, 'a regular file'), (stat.S_ISDIR, 'a directory'),
                     (stat.S_ISFIFO, 'a FIFO (named pipe)'), (stat.S_ISCHR, 'a character device'),
                     (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket')):
    if test(mode):
      return name
  return 'not a regular file'


def _explain(error: OSError, where: Optional[str] = None) -> str:
  """An OSError's cause in words, with the fix for the common ones. Some writers (numpy's
  tofile) report a short write without an errno: a full disk at `where` is then said so."""
  reason = error.strerror or str(error)
  if error.errno is None and where is not None:
    with contextlib.suppress(OSError):
      free = os.statvfs(where)
      if free.f_bavail * free.f_frsize < (1 << 20):
        return (f'the disk is full ({reason}; {free.f_bavail * free.f_frsize:,} bytes free): '
                'free space or write elsewhere')
  advice = {errno.ENOSPC: 'the disk is full: free space or write elsewhere',
            errno.EDQUOT: 'the disk quota is used up: free space or write elsewhere',
            errno.EFBIG: 'the file would exceed the size allowed: write elsewhere',
            errno.EROFS: 'the file system is read-only: write elsewhere',
            errno.EACCES: 'permission denied: write elsewhere or fix the permissions',
            errno.EPERM: 'operation not permitted: write elsewhere or fix the permissions'}
  return advice.get(error.errno, reason)


def os_error(error: OSError, doing: str, where: Optional[str] = None) -> ChallengeError:
  """`doing` (e.g. 'cannot write pred.npy') failed with `error` (writing into the directory
  `where`): one line, with the fix."""
  return ChallengeError(f'{doing}: {_explain(error, where)}')


# --- reading -----------------------------------------------------------------------------

def require_regular(path: str, what: str,
                    error: Type[ChallengeError] = ChallengeError) -> os.stat_result:
  """The stat of `path` (following symbolic links), or `error` unless it is a regular file."""
  try:
    status = os.stat(path)
  except FileNotFoundError:
    raise error(f'{what} {path} does not exist') from None
  except OSError as e:
    raise error(f'{what} {path} cannot be read ({e.strerror})') from None
  if not stat.S_ISREG(status.st_mode):
    raise error(f'{what} {path} is {kind(status.st_mode)}, not a regular file')
  return status


def open_input(path: str, what: str, error: Type[ChallengeError] = ChallengeError,
               max_bytes: Optional[int] = None) -> BinaryIO:
  """`path` opened for binary reading, checked on the descriptor itself: a regular file (a
  FIFO or device raises `error`, and cannot block the open), of at most max_bytes."""
  try:
    # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer.
    descriptor = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0)
                         | getattr(os, 'O_CLOEXEC', 0))
  except FileNotFoundError:
    raise error(f'{what} {path} does not exist') from None
  except OSError as e:
    raise error(f'{what} {path} cannot be opened ({e.strerror})') from None
  try:
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
      raise error(f'{what} {path} is {kind(status.st_mode)}, not a regular file')
    if max_bytes is not None and status.st_size > max_bytes:
      raise error(f'{what} {path} is {status.st_size:,} bytes; at most {max_bytes:,} are '
                  'expected')
    return os.fdopen(descriptor, 'rb')
  except BaseException:
    os.close(descriptor)
    raise


def read_input(path: str, what: str, max_bytes: int,
               error: Type[ChallengeError] = ChallengeError) -> bytes:
  """The whole of a regular file of at most max_bytes (checked before, and while, reading)."""
  with open_input(path, what, error, max_bytes) as f:
    try:
      data = f.read(max_bytes + 1)
    except OSError as e:
      raise error(f'{what} {path} could not be read ({e.strerror})') from None
  if len(data) > max_bytes:
    raise error(f'{what} {path} grew beyond {max_bytes:,} bytes while it was read')
  return data


def require_regular_tree(path: str, what: str) -> None:
  """Raises unless everything under the directory `path` is a directory or a regular file
  (a library will open what it finds there: a FIFO or device would hang or flood it)."""
  for root, directories, names in os.walk(path):
    for name in directories + names:
      entry = os.path.join(root, name)
      try:
        mode = os.stat(entry).st_mode
      except OSError as e:
        raise ChallengeError(f'{what} {path} holds {entry}, which cannot be read '
                             f'({e.strerror})') from None
      if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ChallengeError(f'{what} {path} holds {entry}, which is {kind(mode)}; a model '
                             'holds regular files only')


def require_directory(path: str, what: str) -> bool:
  """Whether the directory `path` exists; raises if something else is there."""
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    return False
  except OSError as e:
    raise ChallengeError(f'{what} {path} cannot be read ({e.strerror})') from None
  if not stat.S_ISDIR(mode):
    raise ChallengeError(f'{what} {path} is {kind(mode)}, not a directory')
  return True


# --- before writing ----------------------------------------------------------------------

def _existing_ancestor(path: str) -> str:
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  return parent


def check_output(path: str, what: str, directory: bool = False) -> None:
  """Raises, before any work, unless `path` can be written as a file (or, `directory`, as a
  directory to write into): nothing else in its place, and a writable place to create it."""
  if os.path.lexists(path):
    try:
      mode = os.stat(path).st_mode
    except OSError as e:  # a dangling symbolic link, a loop
      raise ChallengeError(f'{what} {path} cannot be used ({e.strerror}); choose another '
                           'path') from None
    if directory and not stat.S_ISDIR(mode):
      raise ChallengeError(f'{what} {path} is {kind(mode)}, not a directory; choose another '
                           'path')
    if not directory and not stat.S_ISREG(mode):
      raise ChallengeError(f'{what} {path} is {kind(mode)}; it must be a file (it would be '
                           'replaced): choose another path')
    place = path if directory else os.path.dirname(os.path.abspath(path))
  else:
    place = _existing_ancestor(path)
    mode = os.stat(place).st_mode
    if not stat.S_ISDIR(mode):
      raise ChallengeError(f'{what} {path} cannot be created: {place} is {kind(mode)}, not a '
                           'directory')
  if not os.access(place, os.W_OK | os.X_OK):
    try:
      read_only = bool(os.statvfs(place).f_flag & os.ST_RDONLY)
    except OSError:
      read_only = False
    reason = 'is on a read-only file system' if read_only else 'is not writable'
    raise ChallengeError(f'{what} {path} cannot be written: {place} {reason}; write elsewhere')


def _real(path: str) -> str:
  return os.path.realpath(os.path.abspath(path))


def _within(path: str, directory: str) -> bool:
  return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def check_distinct(outputs: Iterable[Tuple[str, str]], inputs: Iterable[Tuple[str, str]],
                   replaced_whole: Sequence[str] = ()) -> None:
  """Raises if an output (what, path) is one of the inputs (what, path), the same file under
  another name included; an output in `replaced_whole` (a directory replaced as a whole)
  must not hold an input either."""
  inputs = [(what, path, _real(path)) for what, path in inputs if path]
  for what, path in outputs:
    if not path:
      continue
    real = _real(path)
    for input_what, input_path, input_real in inputs:
      same = real == input_real or (os.path.exists(path) and os.path.exists(input_path)
                                    and os.path.samefile(path, input_path))
      holds = path in replaced_whole and _within(input_real, real)
      if same or holds:
        relation = 'is' if same else 'holds'
        raise ChallengeError(f'{what} {path} {relation} {input_what} {input_path}, which this '
                             f'command reads; writing it would destroy its input: choose '
                             f'another {what}')


# --- writing -----------------------------------------------------------------------------

_umask_lock = threading.Lock()


def umask() -> int:
  """The process's umask: from /proc on Linux (reading it changes nothing); elsewhere by
  setting and restoring it (which a thread creating a file meanwhile could notice)."""
  with contextlib.suppress(OSError, ValueError, StopIteration):
    with open('/proc/self/status') as status:
      return int(next(line for line in status if line.startswith('Umask:')).split()[1], 8)
  with _umask_lock:
    mask = os.umask(0o022)
    os.umask(mask)
  return mask


def default_mode(directory: bool = False) -> int:
  """The mode a new file (or directory) gets from the umask, as open() and mkdir() give."""
  return (0o777 if directory else 0o666) & ~umask()


def _partial_pattern(name: str):
  return re.compile(re.escape('.' + name + PARTIAL) + r'[A-Za-z0-9_]{8}$')


def _locked_by_another(path: str) -> bool:
  """Whether a live process holds the lock of a partial file or staging directory."""
  try:
    descriptor = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
  except OSError:
    return False
  try:
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return False
  except OSError:  # held; or a file system without locks, where nothing is taken for stale
    return True
  finally:
    os.close(descriptor)


def remove_stale_partials(path: str) -> None:
  """Removes what killed runs left while writing `path` (partial files and staging
  directories beside it that no live process holds)."""
  directory, name = os.path.split(os.path.abspath(path))
  pattern = _partial_pattern(name)
  try:
    entries = os.listdir(directory)
  except OSError:
    return
  for entry in entries:
    candidate = os.path.join(directory, entry)
    if pattern.match(entry) and not _locked_by_another(candidate):
      if os.path.isdir(candidate) and not os.path.islink(candidate):
        shutil.rmtree(candidate, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.unlink(candidate)


def _lock_if_possible(descriptor: int) -> None:
  """Marks what `descriptor` is open on as being written (not stale). A file system without
  locks (some network or FUSE ones) marks nothing: what is left there is never removed."""
  with contextlib.suppress(OSError):
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextlib.contextmanager
def staging_directory(path: str, what: str):
  """A new directory beside `path`, locked while it exists, for building an output that is
  then renamed to `path`; removed afterwards (with whatever is left in it)."""
  directory, name = os.path.split(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    remove_stale_partials(path)
    staging = tempfile.mkdtemp(dir=directory, prefix='.' + name + PARTIAL)  # 8 random chars
  except OSError as e:
    raise os_error(e, f'cannot write {what} {path}') from None
  descriptor = os.open(staging, os.O_RDONLY)
  try:
    _lock_if_possible(descriptor)
    yield staging
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    os.close(descriptor)


def atomic_write(path: str, write, mode: str = 'wb', what: str = 'output') -> None:
  """Calls write(file) on a partial file beside `path`, then renames it to `path`; the file
  gets the umask's mode. A write that fails leaves nothing and raises a ChallengeError."""
  directory, name = os.path.split(os.path.abspath(path))
  doing = f'cannot write {what} {path}'
  try:
    os.makedirs(directory, exist_ok=True)
    remove_stale_partials(path)
    # 8 random characters after the prefix, as _partial_pattern expects.
    descriptor, partial = tempfile.mkstemp(dir=directory, prefix='.' + name + PARTIAL)
  except OSError as e:
    raise os_error(e, doing) from None
  try:
    _lock_if_possible(descriptor)  # a live writer: not stale
    os.fchmod(descriptor, default_mode())  # mkstemp's 0600 would hide it from the group
    with os.fdopen(descriptor, mode) as f:
      write(f)
    os.replace(partial, path)
  except OSError as e:
    error = os_error(e, doing, directory)  # (while the partial file still takes its space)
    with contextlib.suppress(OSError):
      os.unlink(partial)
    raise error from None
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(partial)
    raise


def save_text(path: str, text: str, what: str = 'output') -> None:
  atomic_write(path, lambda f: f.write(text), 'w', what)


def save_npy(path: str, array: np.ndarray, what: str = 'output') -> None:
  atomic_write(path, lambda f: np.save(f, array, allow_pickle=False), what=what)


def save_npz(path: str, **arrays: np.ndarray) -> None:
  atomic_write(path, lambda f: np.savez(f, **arrays))


def make_directory(path: str, what: str) -> None:
  """os.makedirs, with an OSError as one ChallengeError."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise os_error(e, f'cannot create {what} {path}') from None


# --- one writer at a time ----------------------------------------------------------------

@contextlib.contextmanager
def exclusive_lock(directory: str, what: str, command: str):
  """Holds the lock of `directory` (its file .lock) while inside; raises naming the holder
  if another process holds it. The kernel drops the lock when its holder exits, however it
  exits (kill -9 included), so a lock is never stale; the file itself stays."""
  path = os.path.join(directory, LOCK_FILE)
  try:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0),
                         default_mode())
  except OSError as e:
    raise os_error(e, f'cannot use {what} {directory}') from None
  try:
    try:
      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held by another process
      holder = os.pread(descriptor, 4096, 0).decode(errors='replace').strip() or 'another process'
      raise ChallengeError(f'{what} {directory} is in use by {holder}; only one {command} '
                           'may write it at a time: wait for that one to finish (or stop it), '
                           f'or choose another {what}') from None
    except OSError:  # a file system without locks: nothing to hold (docs/robustness.md)
      pass
    note = (f'{command} (pid {os.getpid()} on {socket.gethostname()}, since '
            f'{time.strftime("%Y-%m-%d %H:%M:%S")})').encode()
    with contextlib.suppress(OSError):  # the note is for the message above only
      os.ftruncate(descriptor, 0)
      os.pwrite(descriptor, note, 0)
    yield
  finally:
    os.close(descriptor)
