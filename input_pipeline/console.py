"""What a person sees on the console: the libraries' start-up noise silenced (`quiet`), and
one progress display for every stage of a run (`Progress`): the data build, each training
phase, each benchmark's embedding, the analyses.

On a terminal a stage is one bar, redrawn in place, with its rate and ETA. Anywhere else (a
log file, CI, a notebook's captured output) the same text comes as plain lines, one per
update: at the caller's log points (`update(..., log=True)`, the trainer's metric lines) and
every `every_s` seconds, then one line when the stage ends. So a log file never holds the
half-overwritten fragments a bar leaves there.
"""
import importlib
import os
import re
import shutil
import sys
import tempfile
import time

REDRAW_S = 0.2  # a bar is redrawn at most this often
# One console per job: in a job of several processes only the lead's progress shows
# (`show_progress`, set when the process joins the job, aprn_jax/distributed.py).
_SHOWN = [True]


def show_progress(shown):
  """Whether this process's Progress displays write anything (errors always print)."""
  _SHOWN[0] = bool(shown)
# What TensorFlow's C++ runtime prints while it loads, whatever TF_CPP_MIN_LOG_LEVEL says:
# TensorFlow 2.21 logs oneDNN's notice through absl before absl's log is set up.
STARTUP_NOTICE = re.compile(r"absl::InitializeLog\(\) is called|oneDNN custom operations are on|"
                            r"cpu_feature_guard|This TensorFlow binary is optimized|"
                            r"rebuild TensorFlow with")


def quiet():
  """Silences TensorFlow's, XLA's and absl's start-up logs (main.py, unless --verbose).

  Runs before TensorFlow and JAX are imported: both read TF_CPP_MIN_LOG_LEVEL when their C++
  runtime starts. Their errors still print, and a level the user set is kept. oneDNN's
  notice goes with TensorFlow's log; oneDNN itself stays on: turning it off
  (TF_ENABLE_ONEDNN_OPTS=0) may change TensorFlow's float results, as the notice says, and
  with them the figures the README reports.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # INFO and WARNING off
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # orbax logs every save and restore, JAX its backends
  import_without_notices("tensorflow")


def import_without_notices(module):
  """Imports `module` with the C++ stderr (file descriptor 2) captured, then writes back every
  line of it but the STARTUP_NOTICE ones, so an error printed while it loads still shows."""
  if module in sys.modules:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      importlib.import_module(module)
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors="replace").splitlines(keepends=True):
        if not STARTUP_NOTICE.search(line):
          sys.stderr.write(line)
      sys.stderr.flush()


def is_terminal(stream):
  isatty = getattr(stream, "isatty", None)
  return bool(isatty and isatty())


def duration(seconds):
  """m:ss, or h:mm:ss from an hour on."""
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
  return f"{seconds // 60}:{seconds % 60:02d}"


def _rate(count, seconds, unit):
  per_second = count / seconds if seconds > 0 else 0.0
  return f"{per_second:.1f} {unit}/s" if per_second < 10 else f"{per_second:.0f} {unit}/s"


class Progress:
  """A stage's progress: `update(done)` or `advance(n)`, then `close()` (or use `with`).

  total: the units the stage has; None while unknown, `add_total` grows it (the embedder
  learns a benchmark's images as its evaluator asks for them). start: units done before
  this process (a resumed phase), left out of the rate. bar: force the terminal bar on or
  off (default: whether `stream` is a terminal).
  """

  def __init__(self, label, total=None, unit="items", start=0, every_s=10.0, stream=None,
               bar=None):
    self.label, self.total, self.unit = label, total, unit
    self.start = self.done = start
    self.every_s = every_s
    self.stream = stream or sys.stdout
    self.bar = is_terminal(self.stream) if bar is None else bar
    self.note = ""
    self.started = self.last_line = time.monotonic()
    self.last_draw = -REDRAW_S
    self.closed = False

  def __enter__(self):
    return self

  def __exit__(self, kind, error, traceback):
    if error is None:
      self.close()
    else:
      self.stop()

  def elapsed(self):
    """Seconds since the stage started."""
    return time.monotonic() - self.started

  def add_total(self, count):
    self.total = (self.total or 0) + count

  def advance(self, count=1, note=None, log=False):
    self.update(self.done + count, note, log)

  def update(self, done, note=None, log=False):
    """`done` units are done; `note` (text after the figures) replaces the last one; `log`:
    a line now (off a terminal), whatever the period."""
    self.done = done
    if note is not None:
      self.note = note
    now = time.monotonic()
    if self.bar:
      if log or now - self.last_draw >= REDRAW_S or done == self.total:
        self._draw(now)
    elif log or (self.every_s is not None and now - self.last_line >= self.every_s):
      self._write(self.status(now) + "\n")
      self.last_line = now

  def status(self, now=None, gauge=""):
    """`label [gauge] done/total unit  rate  ETA m:ss  note`."""
    now = time.monotonic() if now is None else now
    elapsed = now - self.started
    count = self.done - self.start
    head = f"{self.label} {gauge} " if gauge else f"{self.label} "
    parts = [head + (f"{self.done}/{self.total} {self.unit}" if self.total is not None
                     else f"{self.done} {self.unit}"), _rate(count, elapsed, self.unit)]
    if self.total is not None and count > 0:
      parts.append(f"ETA {duration(elapsed / count * max(self.total - self.done, 0))}")
    if self.note:
      parts.append(self.note)
    return "  ".join(parts)

  def stop(self):
    """Ends a bar's line without the summary (a stage that fails: its error follows)."""
    if self.bar and not self.closed:
      self._write("\n")
    self.closed = True

  def close(self, note=None):
    """The stage's last line: units, time and rate."""
    if self.closed:
      return
    self.closed = True
    if note is not None:
      self.note = note
    elapsed = time.monotonic() - self.started
    if self.done == 0:  # e.g. an analysis of embeddings already made: no count, no rate
      text = f"{self.label} in {duration(elapsed)} (no {self.unit})"
    else:
      text = (f"{self.label} {self.done} {self.unit} in {duration(elapsed)} "
              f"({_rate(self.done - self.start, elapsed, self.unit)})")
    if self.note:
      text += f"  {self.note}"
    self._write(("\r\x1b[K" if self.bar else "") + text + "\n")

  def _draw(self, now):
    self.last_draw = now
    gauge = ""
    if self.total:
      filled = int(20 * min(self.done / self.total, 1.0))
      gauge = f"[{'#' * filled}{'.' * (20 - filled)}]"
    status = self.status(now, gauge)
    width = shutil.get_terminal_size((100, 24)).columns - 1
    # One line, cut to the terminal: a wrapped line could not be redrawn in place.
    self._write("\r\x1b[K" + status[:width])

  def _write(self, text):
    if not _SHOWN[0]:
      return
    self.stream.write(text)
    self.stream.flush()
