"""What a run shows a person: main.py's output captured to a file (no library start-up noise,
one line per progress update), report.md with every figure it links, and the evaluation
scalars and figures in the phases' TensorBoard events. One tiny run (configs/tiny.py with
fewer steps) in a subprocess serves them all; the ROC sampling is checked against a direct
count."""
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from aprn_jax import report
from aprn_jax.analysis import figures
from aprn_jax.evaluation import verification
from aprn_jax.evaluation.benchmarks import ijba

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 20 baseline steps, then 4 of D's warm-up and 20 adversarial ones (320 images, batch 16).
OVERRIDES = ("--config.train.baseline_epochs=1", "--config.train.aprn_epochs=1",
             "--config.aprn.d_warmup_steps=4", "--config.train.log_every_steps=4",
             "--config.train.checkpoint_every_steps=20")
STEPS = {"baseline": 20, "aprn": 24}
VERIFICATION = ("cfp_ff", "cfp_fp", "lfw", "bin_cfp_ff", "bin_cfp_fp", "ijba", "ijbc")
# Lines the libraries print at start-up when nothing silences them.
NOISE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cpu_feature_guard|"
                   r"TensorFlow binary|rebuild TensorFlow|Downloading|Generating \w+ examples|"
                   r"Shuffling|downloaded and prepared|xla_bridge|Unable to initialize backend|"
                   r"^WARNING:|^INFO:")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("report")
  workdir = root / "run"
  # conftest.py quiets TensorFlow for the tests; main.py must do it by itself.
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  command = [sys.executable, "main.py", "--config=configs/tiny.py", f"--workdir={workdir}",
             f"--config.data.data_dir={root / 'data'}", *OVERRIDES]
  with open(root / "log.txt", "w") as log:  # a file, not a terminal
    done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  text = (root / "log.txt").read_text()
  if done.returncode:
    pytest.fail(f"main.py exited with {done.returncode}:\n{text[-4000:]}")
  with open(workdir / "results.json") as f:
    return workdir, text, json.load(f)


@pytest.mark.slow  # one tiny main.py run (about 1-2 min)
def test_console_in_a_file_is_one_line_per_update_and_no_library_noise(tiny_run):
  _, text, _ = tiny_run
  lines = text.splitlines()
  assert "\r" not in text and "\x1b" not in text
  assert [line for line in lines if NOISE.search(line)] == []
  assert any(re.fullmatch(r"building synthetic_faces/tiny \S+ into .*", line) for line in lines)
  for split in ("train", "test"):
    assert sum(bool(re.match(rf"synthetic_faces/tiny {split} \d+ images in ", line))
               for line in lines) == 1
  for phase, total in STEPS.items():
    # One line per metric line (steps 1, 4, 8, ..., the warm-up's end), then the summary.
    logged = [int(m.group(1)) for line in lines
              if (m := re.match(rf"\[{phase}\] (\d+)/{total} steps  [\d.]+ steps/s  ETA ", line))]
    with open(os.path.join(tiny_run[0], phase, "metrics.jsonl")) as f:
      assert logged == [json.loads(line)["step"] for line in f]
    assert sum(line.startswith(f"[{phase}] {total} steps in ") for line in lines) == 1
    for bench in ("cfp_ff", "ijba", "multipie", "pose_analyses"):
      # pose_analyses reuses the embeddings: "in 0:00 (no images)"
      assert sum(bool(re.match(rf"\[{phase}\] {bench} (\d+ images )?in ", line))
                 for line in lines) == 1


@pytest.mark.slow  # one tiny main.py run (about 1-2 min)
def test_final_table_is_grouped_by_benchmark_with_the_difference(tiny_run):
  _, text, results = tiny_run
  lines = text.splitlines()
  head = next(i for i, line in enumerate(lines) if line.split() == [
      "baseline", "aprn", "aprn", "-", "baseline"])
  cfp = lines.index("cfp_fp", head)
  accuracy = lines[cfp + 1].split()
  assert accuracy[0] == "accuracy"
  b, a = results["baseline"]["cfp_fp"]["accuracy"], results["aprn"]["cfp_fp"]["accuracy"]
  assert accuracy[1] == f"{100 * b:.2f}" and accuracy[4] == f"{100 * a:.2f}"
  assert accuracy[-1] == f"{100 * (a - b):+.2f}"


def _figure_names(results):
  return (["training_baseline.png", "training_aprn.png"]
          + [f"roc_{bench}.png" for bench in VERIFICATION]
          + ["rank1_by_yaw.png", "landmarks_aprn.png"])


def _expected_size(name):
  """(width, height) in pixels: matplotlib's figure size at 110 dpi, or the contact sheet's."""
  if name.startswith("training_"):
    panels = 5 if name == "training_aprn.png" else 3  # D's panels only where D trains
    return round(3.3 * panels * 110), round(3.1 * 110)
  if name.startswith("landmarks_"):
    return figures.contact_sheet_size(report.SHEET_IDENTITIES, len(report.SHEET_YAWS), 96)
  return 660, 440


@pytest.mark.slow  # one tiny main.py run (about 1-2 min)
def test_report_links_every_figure_and_each_is_a_png_of_its_size(tiny_run):
  workdir, _, results = tiny_run
  names = _figure_names(results)
  assert sorted(os.listdir(workdir / "figures")) == sorted(names)
  text = (workdir / "report.md").read_text()
  linked = re.findall(r"!\[[^]]+\]\(figures/([^)]+)\)", text)
  assert sorted(linked) == sorted(names)
  for name in names:
    with Image.open(workdir / "figures" / name) as image:
      assert image.format == "PNG"
      width, height = image.size
      want = _expected_size(name)
      assert abs(width - want[0]) <= 1 and abs(height - want[1]) <= 1, (name, image.size)
      assert len(np.unique(np.asarray(image.convert("L")))) > 2  # something is drawn
  cfp = results["aprn"]["cfp_ff"]
  assert "| cfp_ff | accuracy | " in text and f"{100 * cfp['accuracy']:.2f}" in text
  assert "Not drawn" not in text


def _events(workdir, phase):
  """{tag: (step, value)} of every summary in the phase's event files."""
  folder = os.path.join(workdir, phase, "tensorboard")
  found = {}
  for name in sorted(os.listdir(folder)):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
      for value in event.summary.value:
        found[value.tag] = (event.step, value.metadata.plugin_data.plugin_name,
                            tf.make_ndarray(value.tensor))
  return found


@pytest.mark.slow  # one tiny main.py run (about 1-2 min)
def test_tensorboard_holds_the_evaluation_scalars_and_the_figures(tiny_run):
  workdir, _, results = tiny_run
  for phase, step in STEPS.items():
    events = _events(workdir, phase)
    assert events["identity_loss"][0] == step  # the trainer's scalars, still there
    for tag, want in (("eval/cfp_fp/accuracy", results[phase]["cfp_fp"]["accuracy"]),
                      ("eval/ijba/tar_at_far/0.01", results[phase]["ijba"]["tar_at_far"]["0.01"]),
                      ("eval/multipie/rank1_by_yaw/-90",
                       results[phase]["multipie"]["rank1_by_yaw"]["-90"]),
                      ("eval/megaface/rank1", results[phase]["megaface"]["rank1"])):
      got_step, plugin, value = events[tag]
      assert (got_step, plugin) == (step, "scalars") and value == pytest.approx(want, abs=1e-6)
    images = {tag: value for tag, (_, plugin, value) in events.items() if plugin == "images"}
    names = [f"training_{phase}.png"] + ([n for n in _figure_names(results)
                                          if not n.startswith("training_")]
                                         if phase == "aprn" else [])
    assert sorted(images) == sorted(f"figures/{n[:-4]}" for n in names)
    for name in names:
      width, height, png = images[f"figures/{name[:-4]}"]
      with Image.open(io.BytesIO(png)) as image:
        assert image.size == (int(width), int(height))
        assert image.size == Image.open(workdir / "figures" / name).size


def _tar_at_far_by_counting(scores, genuine, far):
  """Largest TAR over the thresholds `score >= s` (each score s) with FAR <= far, or 0."""
  best = 0.0
  for s in np.unique(scores):
    accepted = scores >= s
    if accepted[~genuine].mean() <= far:
      best = max(best, accepted[genuine].mean())
  return best


def test_sampled_roc_equals_a_direct_count():
  rng = np.random.default_rng(0)
  genuine = rng.random(2000) < 0.3
  scores = np.round(rng.normal(genuine * 1.5, 1.0), 2)  # ties included
  far, tar, _ = verification.roc_curve(scores, genuine)
  roc = verification.sampled_roc(far, tar)
  smallest = far[far > 0].min()  # below it the pairs measure no rate
  first = verification.ROC_FARS.index(roc["far"][0])
  assert roc["far"][0] >= smallest > verification.ROC_FARS[first - 1]
  assert roc["far"][-1] == 1.0 and roc["tar"][-1] == 1.0
  for f, t in zip(roc["far"], roc["tar"]):
    assert t == pytest.approx(_tar_at_far_by_counting(scores, genuine, f), abs=1e-12)


def test_ijba_roc_is_the_mean_of_the_splits_at_the_fars_all_of_them_measure():
  rng = np.random.default_rng(1)
  splits = []
  for size in (400, 900):
    genuine = rng.random(size) < 0.5
    scores = rng.normal(genuine * 1.0, 1.0)
    splits.append((scores, genuine))
  roc = ijba.mean_roc([verification.roc_curve(s, g)[:2] for s, g in splits])
  smallest = max(1 / (~g).sum() for _, g in splits)
  assert min(roc["far"]) >= smallest * 0.999
  for f, t in zip(roc["far"], roc["tar"]):
    assert t == pytest.approx(np.mean([_tar_at_far_by_counting(s, g, f) for s, g in splits]))
