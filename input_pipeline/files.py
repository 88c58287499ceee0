"""The one file layer: every path a user gives (the workdir, config.data.data_dir and
manual_dir, config.eval.paths, the tools' --out, --images, ...) and everything written or read
under them goes through these functions; no other module of aprn_jax/, input_pipeline/ or
main.py calls os/shutil/glob/open on such a path.

Which schemes work where:
- These functions: plain local paths, `file://` URIs and whatever tf.io.gfile serves
  (`gs://`, `ram://` in-memory, `s3://`/`hdfs://` where TensorFlow has them registered).
  Plain paths and `file:///x` run on Python's own os/shutil/open on the local path (local
  speed, Python's errors and messages); other URIs on tf.io.gfile, its errors turned into
  Python's (FileNotFoundError, FileExistsError, ...). TensorFlow is imported only then.
- orbax checkpoints (aprn_jax/checkpoints.py) and TFDS builds (config.data.data_dir,
  manual_dir) take their paths through etils.epath, which serves plain paths and `gs://`
  (and `s3://` ... where installed) but not `file://` or `ram://`: those paths go through
  `local_path`, which maps `file:///x` to `/x` and refuses `ram://` (or any scheme epath does
  not have) with a ValueError naming the path, before any work.
- TensorBoard summaries (tf.summary.create_file_writer) take any tf.io.gfile path.

`os.path.join/dirname/basename/splitext` are right on URIs and stay in the callers;
`abspath`, `normpath` and `relpath` are here because os.path's collapse `gs://b` to `gs:/b`.
"""
import builtins
import contextlib
import errno
import glob as glob_lib
import json
import os
import posixpath
import re
import shutil
import threading

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_FILE = "file://"
# The schemes etils.epath (orbax, TFDS) serves besides plain paths.
EPATH_SCHEMES = ("gs", "s3", "az")


def is_uri(path):
  """Whether `path` is a URI ("scheme://..."), `file://` ones included."""
  return bool(_SCHEME.match(os.fspath(path)))


def scheme(path):
  """The URI scheme of `path` ("gs", "file", ...); "" for a plain path."""
  match = _SCHEME.match(os.fspath(path))
  return match.group(1).lower() if match else ""


def _file_uri_path(path):
  """The local path of a `file://` URI (`file:///x` and `file://localhost/x` name /x)."""
  rest = path[len(_FILE):]
  if rest.startswith("localhost/"):
    rest = rest[len("localhost"):]
  if not rest.startswith("/"):
    raise ValueError(f"{path}: a file:// URI names an absolute path (file:///folder/...)")
  return rest


def _local(path):
  """The local path `path` names (plain or file://), or None for another URI."""
  path = os.fspath(path)
  if not is_uri(path):
    return path
  if scheme(path) == "file":
    return _file_uri_path(path)
  return None


def is_local(path):
  """Whether `path` is on this machine's filesystem (a plain path or a file:// URI)."""
  return _local(path) is not None


def local_path(path):
  """`path` as a library that reads paths through etils.epath (orbax, TFDS) takes it:
  plain paths and gs:// (s3://, az://) unchanged, `file:///x` as /x; a ValueError naming the
  path for any other scheme (ram://, ...), which those libraries cannot open."""
  path = os.fspath(path)
  local = _local(path)
  if local is not None:
    return local
  if scheme(path) not in EPATH_SCHEMES:
    raise ValueError(
        f"{path}: orbax checkpoints and TFDS builds cannot use {scheme(path)}:// paths (they "
        f"take local paths, file:// and {', '.join(s + '://' for s in EPATH_SCHEMES)}); "
        f"choose a path on one of those")
  return path


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # only for URIs
  return tf.io.gfile


@contextlib.contextmanager
def _errors(path):
  """tf.io.gfile's errors as Python's: FileNotFoundError, FileExistsError, ..."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    yield
  except tf.errors.NotFoundError as e:
    raise FileNotFoundError(errno.ENOENT, e.message or os.strerror(errno.ENOENT),
                            path) from None
  except tf.errors.AlreadyExistsError as e:
    raise FileExistsError(errno.EEXIST, e.message or os.strerror(errno.EEXIST), path) from None
  except tf.errors.PermissionDeniedError as e:
    raise PermissionError(errno.EACCES, e.message or os.strerror(errno.EACCES), path) from None
  except tf.errors.OpError as e:
    raise OSError(errno.EIO, e.message or type(e).__name__, path) from None


def _not_found(path):
  return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def _fresh(path):
  """Before a URI file is written whole: ram:// appends to a file written again (and copied
  onto) instead of replacing it, so the old one goes first there."""
  if scheme(path) == "ram" and exists(path) and not isdir(path):
    with _errors(path):
      _gfile().remove(os.fspath(path))


# Reading, writing.

def open(path, mode="r", encoding=None):  # pylint: disable=redefined-builtin
  """A file object: Python's own for local paths, tf.io.gfile.GFile for other URIs (text
  there is UTF-8; a missing file raises FileNotFoundError here, as Python's does)."""
  path = os.fspath(path)
  local = _local(path)
  if local is not None:
    return builtins.open(local, mode, encoding=encoding)
  if "+" in mode or "x" in mode:
    raise ValueError(f"{path}: mode {mode!r} is not available on {scheme(path)}:// paths")
  if encoding is not None and encoding.lower().replace("-", "") not in ("utf8", "ascii"):
    raise ValueError(f"{path}: {scheme(path)}:// text is UTF-8, not {encoding}")
  if "r" in mode:
    if isdir(path):
      raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not exists(path):
      raise _not_found(path)
  elif "w" in mode:
    _fresh(path)
  with _errors(path):
    return _gfile().GFile(path, mode)


def read_bytes(path):
  with open(path, "rb") as f:
    return f.read()


def write_bytes(path, data):
  with open(path, "wb") as f:
    f.write(data)


def write_atomic(path, data):
  """Writes `data` (str or bytes) via a temporary file and a rename, so a reader never sees
  half a file."""
  tmp = os.fspath(path) + ".tmp"
  with open(tmp, "w" if isinstance(data, str) else "wb") as f:
    f.write(data)
  replace(tmp, path)


def write_json(path, value):
  """`value` as indented JSON with sorted keys, written by `write_atomic`."""
  write_atomic(path, json.dumps(value, indent=1, sort_keys=True))


def truncate(path, size):
  """Cuts the file at `path` to its first `size` bytes."""
  local = _local(path)
  if local is not None:
    os.truncate(local, size)
    return
  data = read_bytes(path)
  write_bytes(path, data[:size])


class RandomAccessFile:
  """`pread(length, offset)` reads of one file that threads may share: os.pread on local
  paths, a locked seek and read of a GFile elsewhere."""

  def __init__(self, path):
    self.path = os.fspath(path)
    local = _local(self.path)
    self._fd = self._file = None
    if local is not None:
      self._fd = os.open(local, os.O_RDONLY)
    else:
      self._file = open(self.path, "rb")
      self._lock = threading.Lock()

  def pread(self, length, offset):
    if self._fd is not None:
      return os.pread(self._fd, length, offset)
    with self._lock, _errors(self.path):
      self._file.seek(offset)
      return self._file.read(length)

  def close(self):
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None
    if self._file is not None:
      self._file.close()
      self._file = None


# Questions.

def exists(path):
  local = _local(path)
  if local is not None:
    return os.path.exists(local)
  with _errors(path):
    return _gfile().exists(os.fspath(path))


def lexists(path):
  """`exists`, a broken local link counting as there."""
  local = _local(path)
  if local is not None:
    return os.path.lexists(local)
  return exists(path)


def isdir(path):
  local = _local(path)
  if local is not None:
    return os.path.isdir(local)
  with _errors(path):
    return _gfile().isdir(os.fspath(path))


def isfile(path):
  local = _local(path)
  if local is not None:
    return os.path.isfile(local)
  return exists(path) and not isdir(path)


def getsize(path):
  local = _local(path)
  if local is not None:
    return os.path.getsize(local)
  with _errors(path):
    return _gfile().stat(os.fspath(path)).length


def islink(path):
  """Whether `path` is a local symbolic link (other filesystems have none)."""
  local = _local(path)
  return local is not None and os.path.islink(local)


def readlink(path):
  local = _local(path)
  if local is None:
    raise OSError(errno.EINVAL, f"{scheme(path)}:// has no links", os.fspath(path))
  return os.readlink(local)


def symlink(target, link):
  """A relative or absolute link at the local path `link`; a ValueError on filesystems
  without links (`supports_links`)."""
  local = _local(link)
  if local is None:
    raise ValueError(f"{link}: {scheme(link)}:// has no links")
  os.symlink(target, local)


def supports_links(path):
  return is_local(path)


# Listing.

def listdir(path):
  local = _local(path)
  if local is not None:
    return os.listdir(local)
  if not isdir(path):
    raise (_not_found(path) if not exists(path) else
           NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path))
  with _errors(path):
    return [name.rstrip("/") for name in _gfile().listdir(os.fspath(path))]


class _Entry:
  """An os.DirEntry's name, path, is_dir() and is_file() for a URI."""

  def __init__(self, folder, name):
    self.name, self.path = name, posixpath.join(folder, name)
    self._dir = isdir(self.path)

  def is_dir(self):
    return self._dir

  def is_file(self):
    return not self._dir


def scandir(path):
  """The entries of a folder (os.DirEntry locally: no stat per entry), as a list."""
  local = _local(path)
  if local is not None:
    with os.scandir(local) as entries:
      return list(entries)
  return [_Entry(os.fspath(path), name) for name in listdir(path)]


def walk(top):
  """os.walk (top-down; sorting or pruning the yielded folder list steers it)."""
  top = os.fspath(top)
  local = _local(top)
  if local is not None:
    if local == top:
      yield from os.walk(top)
    else:  # the file:// names given back
      for root, dirs, names in os.walk(local):
        yield _FILE + root, dirs, names
    return
  if not isdir(top):
    return
  dirs, names = [], []
  for entry in scandir(top):
    (dirs if entry.is_dir() else names).append(entry.name)
  yield top, dirs, names
  for name in dirs:
    yield from walk(posixpath.join(top, name))


def glob(pattern):
  local = _local(pattern)
  if local is not None:
    found = glob_lib.glob(local)
    return found if local == os.fspath(pattern) else [_FILE + p for p in found]
  with _errors(pattern):
    return _gfile().glob(os.fspath(pattern))


# Changing.

def makedirs(path, exist_ok=False):
  local = _local(path)
  if local is not None:
    os.makedirs(local, exist_ok=exist_ok)
    return
  if exists(path) and not (exist_ok and isdir(path)):
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
  with _errors(path):
    _gfile().makedirs(os.fspath(path))


def remove(path):
  local = _local(path)
  if local is not None:
    os.remove(local)
    return
  if not exists(path):
    raise _not_found(path)
  if isdir(path):
    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
  with _errors(path):
    _gfile().remove(os.fspath(path))


def rmtree(path, ignore_errors=False):
  local = _local(path)
  if local is not None:
    shutil.rmtree(local, ignore_errors=ignore_errors)
    return
  try:
    if not isdir(path):
      raise (_not_found(path) if not exists(path) else
             NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path))
    with _errors(path):
      _gfile().rmtree(os.fspath(path))
  except OSError:
    if not ignore_errors:
      raise


def replace(src, dst):
  """os.replace: `src` (a file or a folder) takes the name `dst`, a file there replaced.
  Between a local path and a URI, or on a filesystem that moves files one by one (GCS), a
  folder is copied then removed."""
  src_local, dst_local = _local(src), _local(dst)
  if src_local is not None and dst_local is not None:
    os.replace(src_local, dst_local)
    return
  src, dst = os.fspath(src), os.fspath(dst)
  if not exists(src):
    raise _not_found(src)
  if isdir(src):
    if exists(dst) and (not isdir(dst) or listdir(dst)):
      raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), dst)
    # tf.io.gfile's rename of a folder is not a whole move on every filesystem (ram://
    # renames the folder entry alone): each file moves, then the folder goes.
    for root, _, names in walk(src):
      target = posixpath.join(dst, posixpath.relpath(root, src)) if root != src else dst
      makedirs(target, exist_ok=True)
      for name in names:
        _move_file(posixpath.join(root, name), posixpath.join(target, name))
    rmtree(src)
    return
  _move_file(src, dst)


def _move_file(src, dst):
  if is_local(src) != is_local(dst):
    copy(src, dst)
    remove(src)
    return
  with _errors(src):
    _gfile().rename(src, dst, overwrite=True)
  if exists(src):  # ram:// renames by copying
    remove(src)


def copy(src, dst):
  """The bytes of file `src` as file `dst` (shutil.copyfile locally)."""
  src_local, dst_local = _local(src), _local(dst)
  if src_local is not None and dst_local is not None:
    shutil.copyfile(src_local, dst_local)
    return
  if not exists(src):
    raise _not_found(src)
  _fresh(dst)
  with _errors(src):
    _gfile().copy(src_local or os.fspath(src), dst_local or os.fspath(dst), overwrite=True)


def link_or_copy(src, dst):
  """A hard link `dst` to file `src` where the filesystem has them (the same local device),
  else a copy."""
  src_local, dst_local = _local(src), _local(dst)
  if src_local is not None and dst_local is not None:
    try:
      os.link(src_local, dst_local)
      return
    except OSError:
      pass
  copy(src, dst)


def copytree(src, dst):
  """Copies the folder `src` to `dst` (which must not exist)."""
  src_local, dst_local = _local(src), _local(dst)
  if src_local is not None and dst_local is not None:
    shutil.copytree(src_local, dst_local, symlinks=True)
    return
  if exists(dst):
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
  src = os.fspath(src)
  for root, _, names in walk(src):
    target = posixpath.join(dst, posixpath.relpath(root, src)) if root != src else dst
    makedirs(target, exist_ok=True)
    for name in names:
      copy(posixpath.join(root, name), posixpath.join(target, name))


# Path text.

def _split_uri(path):
  """("scheme://authority", "/rest") of a URI."""
  match = _SCHEME.match(path)
  rest = path[match.end():]
  cut = rest.find("/")
  if cut < 0:
    return path, ""
  return path[:match.end() + cut], rest[cut:]


def abspath(path):
  """os.path.abspath of a plain path; a URI unchanged (os.path.abspath("gs://b/x") would be
  "<cwd>/gs:/b/x")."""
  path = os.fspath(path)
  return path if is_uri(path) else os.path.abspath(path)


def normpath(path):
  """os.path.normpath, keeping a URI's "scheme://authority" whole."""
  path = os.fspath(path)
  if not is_uri(path):
    return os.path.normpath(path)
  head, rest = _split_uri(path)
  return head + (posixpath.normpath(rest) if rest else "")


def relpath(path, start):
  """os.path.relpath; for URIs of the same "scheme://authority", on the rest."""
  path, start = os.fspath(path), os.fspath(start)
  if not is_uri(path) and not is_uri(start):
    return os.path.relpath(path, start)
  if not (is_uri(path) and is_uri(start)) or _split_uri(path)[0] != _split_uri(start)[0]:
    raise ValueError(f"{path} is not under {start}")
  return posixpath.relpath(_split_uri(path)[1] or "/", _split_uri(start)[1] or "/")
