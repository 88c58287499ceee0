"""console.Progress: plain lines off a terminal (one per update, no carriage returns), one
redrawn bar on one; and a local TFDS build that says so instead of "Downloading"."""
import io
import os
import re
import subprocess
import sys

from input_pipeline import console
from input_pipeline.real import builders
import test_real_builders as real_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_off_a_terminal_each_update_is_one_line_with_rate_and_eta():
  out = io.StringIO()
  progress = console.Progress("[baseline]", 10, "steps", every_s=None, stream=out)
  for step in range(1, 11):
    progress.update(step, note=f"loss {1 / step:.2f}", log=step % 5 == 0)
  progress.close()
  lines = out.getvalue().splitlines()
  assert "\r" not in out.getvalue() and len(lines) == 3  # steps 5 and 10, then the summary
  assert re.fullmatch(r"\[baseline\] 5/10 steps  [\d.]+ steps/s  ETA 0:\d\d  loss 0\.20",
                      lines[0])
  assert lines[1].startswith("[baseline] 10/10 steps") and "ETA 0:00" in lines[1]
  assert re.fullmatch(r"\[baseline\] 10 steps in 0:\d\d \([\d.]+ steps/s\)  loss 0\.10",
                      lines[2])


def test_periodic_lines_and_a_growing_total():
  out = io.StringIO()
  progress = console.Progress("[aprn] cfp_fp", 0, "images", every_s=0.0, stream=out)
  progress.add_total(6)
  progress.advance(4)
  progress.add_total(2)
  progress.advance(4)
  progress.close()
  lines = out.getvalue().splitlines()
  assert lines[0].startswith("[aprn] cfp_fp 4/6 images")
  assert lines[1].startswith("[aprn] cfp_fp 8/8 images")
  assert lines[2].startswith("[aprn] cfp_fp 8 images in ")


def test_a_stage_that_counted_nothing_says_so_without_a_rate():
  out = io.StringIO()
  console.Progress("[aprn] pose_analyses", 0, "images", stream=out).close()
  assert re.fullmatch(r"\[aprn\] pose_analyses in 0:00 \(no images\)\n", out.getvalue())


def test_a_resumed_stage_counts_its_rate_from_where_it_started():
  progress = console.Progress("[aprn]", 100, "steps", start=90, every_s=None,
                              stream=io.StringIO())
  progress.started -= 10.0  # 10 s ago
  progress.update(95)
  assert "0.5 steps/s" in progress.status() and "ETA 0:10" in progress.status()


def test_on_a_terminal_one_bar_redrawn_in_place_then_one_summary_line():
  out = Terminal()
  progress = console.Progress("[baseline]", 4, "steps", every_s=None, stream=out)
  assert progress.bar
  for step in range(1, 5):
    progress.update(step, log=True)
  progress.close()
  text = out.getvalue()
  assert text.count("\n") == 1 and text.endswith("\n")  # one line on the screen
  draws = text.split("\r\x1b[K")[1:]
  assert len(draws) == 5 and draws[0].startswith("[baseline] [#####...............] 1/4")
  assert draws[-1].startswith("[baseline] 4 steps in ")


def test_a_failed_stage_ends_its_bar_line_without_a_summary():
  out = Terminal()
  try:
    with console.Progress("[aprn]", 4, "steps", stream=out) as progress:
      progress.update(1)
      raise RuntimeError("non-finite loss")
  except RuntimeError:
    pass
  assert out.getvalue().endswith("\n") and " in " not in out.getvalue()


def test_duration():
  assert console.duration(5) == "0:05" and console.duration(125) == "2:05"
  assert console.duration(3725) == "1:02:05"


def test_a_local_build_names_its_folder_and_counts_without_tfds_messages(tmp_path, capfd):
  manual, _ = real_fixtures.write_folder(tmp_path)
  real_fixtures.build(builders.FaceFolder, manual, tmp_path / "tfds")
  printed = capfd.readouterr()
  text = printed.out + printed.err
  for tfds_says in ("Downloading", "downloaded and prepared", "Generating", "Shuffling", "\r"):
    assert tfds_says not in text
  assert re.search(r"^building face_folder/\S+ 1\.0\.0 into \S+$", printed.out, re.M)
  assert re.search(r"^face_folder/\S+ 5 images in 0:\d\d \(", printed.out, re.M)


def test_quiet_drops_tensorflows_load_notices_and_keeps_other_stderr(tmp_path):
  """TensorFlow prints oneDNN's notice through absl while it loads, whatever
  TF_CPP_MIN_LOG_LEVEL says; quiet() drops it and keeps what else reaches stderr then."""
  (tmp_path / "noisy.py").write_text(
      "import os\n"
      "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are "
      "written to STDERR\\n')\n"
      "os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\\n')\n"
      "os.write(2, b'a real problem\\n')\n")
  script = (f"import sys; sys.path[:0] = [{REPO!r}, {str(tmp_path)!r}]\n"
            "from input_pipeline import console\n"
            "console.quiet()\n"
            "console.import_without_notices('noisy')\n"
            "import tensorflow\n"
            "print('done')\n")
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert done.stdout == "done\n"
  assert done.stderr == "a real problem\n"


def test_a_process_that_is_not_the_lead_shows_no_progress():
  """In a job of several processes only the lead's bars and lines print."""
  out = io.StringIO()
  try:
    console.show_progress(False)
    with console.Progress("embed", 3, "images", stream=out) as bar:
      bar.update(3, log=True)
  finally:
    console.show_progress(True)
  assert out.getvalue() == ""
  with console.Progress("embed", 3, "images", stream=out) as bar:
    bar.update(3, log=True)
  assert out.getvalue().startswith("embed 3/3 images")
