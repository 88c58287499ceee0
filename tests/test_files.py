"""The file layer (input_pipeline/files.py) on a plain path, a file:// URI and tf.io.gfile's
in-memory ram:// filesystem, and main.py end to end on file:// paths: trained, SIGKILLed,
resumed, evaluated, with nothing named `file:` made on the way."""
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from aprn_jax import data as data_lib, run
from aprn_jax.evaluation import embeddings as embeddings_lib
from configs import tiny
from input_pipeline import files, mean_face, recordio
from input_pipeline.readers import images as images_lib, insightface_bin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMES = ("plain", "file", "ram")


@pytest.fixture(params=SCHEMES)
def root(request, tmp_path, monkeypatch):
  """A fresh folder of each kind, the cwd elsewhere (so a file:// taken for a relative path
  would show up as a `file:` folder there)."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  if request.param == "plain":
    yield str(tmp_path / "root")
  elif request.param == "file":
    yield "file://" + str(tmp_path / "root")
  else:
    folder = f"ram://test_files_{uuid.uuid4().hex}"
    yield folder
    files.rmtree(folder, ignore_errors=True)
  assert not any("file:" in name for _, dirs, names in os.walk(tmp_path)
                 for name in dirs + names)


def join(*parts):
  return os.path.join(*parts)


def test_write_read_and_questions(root):
  files.makedirs(root)
  text, data = join(root, "a.txt"), join(root, "b.bin")
  with files.open(text, "w", encoding="utf-8") as f:
    f.write("one\ntwo\n")
  with files.open(text, "a") as f:
    f.write("three\n")
  files.write_bytes(data, b"\x00\x01\x02")
  with files.open(text, encoding="utf-8") as f:
    assert list(f) == ["one\n", "two\n", "three\n"]
  assert files.read_bytes(data) == b"\x00\x01\x02"
  assert files.exists(text) and files.isfile(text) and not files.isdir(text)
  assert files.isdir(root) and not files.isfile(root) and files.lexists(root)
  assert not files.exists(join(root, "none")) and not files.isfile(join(root, "none"))
  assert files.getsize(data) == 3 and files.getsize(text) == len("one\ntwo\nthree\n")
  assert not files.islink(text)


def test_missing_files_raise_python_errors(root):
  files.makedirs(root)
  missing = join(root, "missing.txt")
  with pytest.raises(FileNotFoundError):
    files.open(missing)
  with pytest.raises(FileNotFoundError):
    files.remove(missing)
  with pytest.raises(FileNotFoundError):
    files.getsize(missing)
  with pytest.raises(FileNotFoundError):
    files.listdir(missing)
  with pytest.raises(FileNotFoundError):
    files.rmtree(missing)
  files.rmtree(missing, ignore_errors=True)
  with pytest.raises(FileExistsError):
    files.makedirs(root)
  files.makedirs(root, exist_ok=True)


def test_listing(root):
  files.makedirs(join(root, "d", "e"))
  for name in ("x.png", "y.jpg", join("d", "z.png"), join("d", "e", "w.png")):
    files.write_bytes(join(root, name), b"1")
  assert sorted(files.listdir(root)) == ["d", "x.png", "y.jpg"]
  kinds = {entry.name: (entry.is_dir(), entry.is_file()) for entry in files.scandir(root)}
  assert kinds == {"d": (True, False), "x.png": (False, True), "y.jpg": (False, True)}
  walked = []
  for top, dirs, names in files.walk(root):
    dirs.sort()
    walked.append((top, sorted(names)))
  assert walked == [(root, ["x.png", "y.jpg"]), (join(root, "d"), ["z.png"]),
                    (join(root, "d", "e"), ["w.png"])]
  assert sorted(files.glob(join(root, "*.png"))) == [join(root, "x.png")]
  assert sorted(files.glob(join(root, "d", "*.png"))) == [join(root, "d", "z.png")]


def test_remove_replace_copy(root):
  files.makedirs(join(root, "src", "sub"))
  files.write_bytes(join(root, "src", "a"), b"a")
  files.write_bytes(join(root, "src", "sub", "b"), b"b")
  files.copytree(join(root, "src"), join(root, "copy"))
  files.replace(join(root, "src"), join(root, "moved"))  # a folder and its contents
  assert not files.exists(join(root, "src"))
  for folder in ("copy", "moved"):
    assert files.read_bytes(join(root, folder, "a")) == b"a"
    assert files.read_bytes(join(root, folder, "sub", "b")) == b"b"
  files.write_bytes(join(root, "old"), b"old")
  files.write_bytes(join(root, "new"), b"new")
  files.replace(join(root, "new"), join(root, "old"))  # a file replaced
  assert files.read_bytes(join(root, "old")) == b"new" and not files.exists(join(root, "new"))
  files.copy(join(root, "old"), join(root, "copied"))
  files.link_or_copy(join(root, "old"), join(root, "linked"))
  assert files.read_bytes(join(root, "copied")) == files.read_bytes(join(root, "linked")) == b"new"
  files.remove(join(root, "copied"))
  assert not files.exists(join(root, "copied"))
  files.rmtree(join(root, "copy"))
  assert not files.exists(join(root, "copy")) and files.exists(join(root, "moved", "a"))


def test_write_json_is_whole_and_leaves_no_temporary_file(root):
  files.makedirs(root)
  path = join(root, "results.json")
  value = {"b": [1, 2.5], "a": {"x": "y"}}
  files.write_json(path, {"old": 1})
  files.write_json(path, value)
  with files.open(path) as f:
    text = f.read()
  assert json.loads(text) == value
  assert text == json.dumps(value, indent=1, sort_keys=True)  # as aprn_jax always wrote it
  assert sorted(files.listdir(root)) == ["results.json"]  # no results.json.tmp
  files.write_atomic(join(root, "report.md"), "# report\n")
  with files.open(join(root, "report.md")) as f:
    assert f.read() == "# report\n"
  assert sorted(files.listdir(root)) == ["report.md", "results.json"]


def test_random_access_truncate_numpy_and_images(root):
  files.makedirs(root)
  path = join(root, "bytes")
  files.write_bytes(path, bytes(range(100)))
  reader = files.RandomAccessFile(path)
  assert reader.pread(3, 10) == bytes([10, 11, 12]) and reader.pread(10, 95) == bytes(range(95, 100))
  reader.close()
  files.truncate(path, 7)
  assert files.read_bytes(path) == bytes(range(7))

  array = np.arange(12, dtype=np.float32).reshape(3, 4)
  with files.open(join(root, "a.npy"), "wb") as f:
    np.save(f, array)
  with files.open(join(root, "a.npy"), "rb") as f:
    np.testing.assert_array_equal(np.load(f), array)
  buffer = io.BytesIO()
  np.save(buffer, array)
  assert files.read_bytes(join(root, "a.npy")) == buffer.getvalue()  # bit for bit np.save's

  image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
  with files.open(join(root, "i.png"), "wb") as f:
    image.save(f, format="PNG")
  with files.open(join(root, "i.png"), "rb") as f, Image.open(f) as read:
    np.testing.assert_array_equal(np.asarray(read), np.asarray(image))


def test_the_callers_on_every_scheme(root):
  """What the project keeps under its paths: a mean face, embeddings, a RecordIO pair."""
  mean = np.linspace(-1, 1, 102, dtype=np.float32).reshape(51, 2)
  mean_face.write(join(root, "data"), mean)
  np.testing.assert_array_equal(mean_face.read(join(root, "data")), mean)
  embeddings_lib.save(join(root, "emb", "e.npy"), np.eye(3, dtype=np.float32), source="x")
  loaded, meta = embeddings_lib.load(join(root, "emb", "e.npy"))
  np.testing.assert_array_equal(loaded, np.eye(3))
  assert meta == {"source": "x"}
  files.makedirs(join(root, "rec"))
  recordio.write_rec(join(root, "rec", "train"), [b"first", b"second image"], [0, 1],
                     header_record=False)
  with recordio.Reader(join(root, "rec", "train.rec"), join(root, "rec", "train.idx")) as rec:
    assert rec.keys() == [0, 1]
    assert rec.read_unpacked(1)[1] == b"second image"
  pixels = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
  encoded = [insightface_bin.encode_image(image, "png") for image in pixels]
  insightface_bin.write_encoded_bin(join(root, "bins", "pairs.bin"), encoded, [True, False])
  pack = insightface_bin.read_bin(join(root, "bins", "pairs.bin"), 8)
  np.testing.assert_array_equal(pack.images, pixels)
  files.write_bytes(join(root, "face.png"), encoded[0])
  np.testing.assert_array_equal(images_lib.load_images([join(root, "face.png")], 8)[0],
                                pixels[0])


def test_local_path_for_orbax_and_tfds(tmp_path):
  plain = str(tmp_path / "x")
  assert files.local_path(plain) == plain
  assert files.local_path("file://" + plain) == plain
  assert files.local_path("file://localhost" + plain) == plain
  assert files.local_path("gs://bucket/run") == "gs://bucket/run"
  with pytest.raises(ValueError, match="ram://somewhere/run"):
    files.local_path("ram://somewhere/run")
  with pytest.raises(ValueError, match="file://relative"):
    files.local_path("file://relative/path")


def test_path_text_keeps_uris_whole(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert files.abspath("gs://b/x") == "gs://b/x"  # os.path.abspath: <cwd>/gs:/b/x
  assert files.abspath("file:///x/y") == "file:///x/y"
  assert files.abspath("rel") == str(tmp_path / "rel")
  assert files.normpath("gs://b/a/../c/./d") == "gs://b/c/d"
  assert files.normpath("/a/../b") == "/b"
  assert files.relpath("gs://b/x/y/z", "gs://b/x") == "y/z"
  assert files.relpath("/a/b/c", "/a") == "b/c"
  assert files.is_uri("gs://b") and files.is_uri("file:///x") and not files.is_uri("/x")
  assert files.is_local("/x") and files.is_local("file:///x") and not files.is_local("ram://x")


def test_a_workdir_or_data_dir_orbax_and_tfds_cannot_open_is_refused_first(tmp_path):
  config = tiny.get_config()
  with pytest.raises(ValueError, match="ram://runs/tiny"):
    run.main(config, "ram://runs/tiny", "train")
  config.data.data_dir = "ram://data"
  with pytest.raises(ValueError, match="ram://data"):
    data_lib.data_dir(config, str(tmp_path / "run"))
  config.data.data_dir = "file://" + str(tmp_path / "data")
  assert data_lib.data_dir(config, "unused") == str(tmp_path / "data")


def _main(workdir, data_dir, *extra):
  return [sys.executable, os.path.join(REPO, "main.py"),
          f"--config={os.path.join(REPO, 'configs', 'tiny.py')}", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.train.baseline_epochs=1",
          "--config.train.aprn_epochs=1", "--config.eval.benchmarks=('cfp_ff','lfw')", *extra]


@pytest.mark.slow  # builds the tiny data set and trains twice in subprocesses
def test_main_on_file_uris_trains_resumes_and_evaluates(tmp_path):
  """main.py with --workdir=file://... and data_dir=file://..., from a cwd inside tmp:
  SIGKILLed once the baseline's first checkpoint is there, run again to the end (it resumes),
  then --mode=eval from the checkpoints; nothing named `file:` appears anywhere."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  run_dir, data_dir = tmp_path / "run", tmp_path / "data"
  command = _main(f"file://{run_dir}", f"file://{data_dir}")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                                   "--xla_backend_optimization_level=0")
  checkpoint_dir = run_dir / "baseline" / "checkpoints"
  first = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  deadline = time.time() + 900
  while time.time() < deadline and first.poll() is None:
    if checkpoint_dir.is_dir() and any(name.isdigit() for name in os.listdir(checkpoint_dir)):
      break
    time.sleep(0.02)
  assert first.poll() is None, "the first run ended before the baseline's first checkpoint"
  first.send_signal(signal.SIGKILL)
  first.wait()
  assert not (run_dir / "baseline" / "done.json").exists()

  resumed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "[baseline] resumed from step" in resumed.stdout
  with open(run_dir / "results.json") as f:
    results = json.load(f)
  assert set(results) == {"baseline", "aprn"}
  for phase in results:
    assert 0.0 <= results[phase]["cfp_ff"]["accuracy"] <= 1.0
    assert 0.0 <= results[phase]["lfw"]["accuracy"] <= 1.0
  assert (run_dir / "report.md").is_file() and (data_dir / "synthetic_faces").is_dir()

  evaluated = subprocess.run(command + ["--mode=eval"], cwd=cwd, env=env, capture_output=True,
                             text=True)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert evaluated.stdout.count("restored the recognizer") == 2
  with open(run_dir / "eval.json") as f:
    assert set(json.load(f)) == {"baseline", "aprn"}

  made = [os.path.join(top, name) for top, dirs, names in os.walk(tmp_path)
          for name in dirs + names if "file:" in name]
  assert not made and not os.path.exists(os.path.join(REPO, "file:"))
