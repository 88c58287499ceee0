"""The experiment runner on the tiny config: 2 seeds x 2 variants (alpha=0.1 and the control).

Each seed's baseline is trained once and shared; a SIGKILLed experiment rerun with the same
command ends with the summary of an uninterrupted one; the summary's figures equal numpy and
scipy computations on the runs' results files.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from aprn_jax import experiments
from configs import tiny
import kill

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = dict(baseline_epochs=1, aprn_epochs=1)  # 20 and 12 + 20 steps
BENCHMARKS = ("cfp_ff", "cfp_fp", "multipie")


def study_config(data_dir):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.train.update(**SHORT)
  config.eval.benchmarks = BENCHMARKS
  return config


def command(study, data_dir):
  return [sys.executable, "-m", "aprn_jax.experiments", "--config=configs/tiny.py",
          f"--workdir={study}", "--experiment=sweep", "--variants=alpha=0.1", "--seeds=2",
          f"--config.data.data_dir={data_dir}",
          f"--config.train.baseline_epochs={SHORT['baseline_epochs']}",
          f"--config.train.aprn_epochs={SHORT['aprn_epochs']}",
          f"--config.eval.benchmarks={BENCHMARKS}"]


def summary_file(study, name):
  return os.path.join(experiments.summary_dir(study, "sweep", "test"), name)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
  root = tmp_path_factory.mktemp("study")
  data_dir = str(root / "data")
  uninterrupted = str(root / "uninterrupted")
  summary = experiments.run_experiment(study_config(data_dir), uninterrupted, "sweep", 2,
                                       spec="alpha=0.1")
  return root, data_dir, uninterrupted, summary


def test_plan_shares_baselines_and_names_runs_by_what_they_change():
  config = tiny.get_config()
  variants, by_variant, runs = experiments.plan(config, "alpha", 2)
  assert variants == ["baseline", "alpha=0.1", "alpha=0.2", "alpha=0.3", "alpha=0.4",
                      "control"]
  assert [r.folder for r in by_variant["alpha=0.2"]] == ["seed0/aprn", "seed1/aprn"]
  assert [r.folder for r in runs if r.phase == "baseline"] == ["seed0/baseline",
                                                               "seed1/baseline"]
  assert {r.baseline for r in runs if r.seed == 1 and r.phase == "aprn"} == {"seed1/baseline"}
  # A variant that changes the baseline's training gets a baseline of its own.
  _, by_variant, runs = experiments.plan(config, "sweep", 1, "optim.lr=0.02")
  own = by_variant["optim.lr=0.02"][0]
  assert own.baseline == "seed0/baseline-optim.lr=0.02"
  assert own.baseline in [r.folder for r in runs]
  with pytest.raises(ValueError, match="no field 'aprn.alhpa'"):
    experiments.plan(config, "sweep", 1, "alhpa=0.1")
  with pytest.raises(ValueError, match="takes a number"):
    experiments.plan(config, "sweep", 1, "alpha=big")


def test_summary_of_hand_written_results_equals_scipy(tmp_path):
  """summarize() on results files written here: means, t intervals and paired differences
  to the control and the baseline against scipy, seed by seed."""
  config = tiny.get_config()
  variants, by_variant, _ = experiments.plan(config, "control", 3)
  rng = np.random.default_rng(0)
  values = {v: rng.uniform(0.6, 0.9, size=3) for v in variants}
  for variant, runs in by_variant.items():
    for run_, value in zip(runs, values[variant]):
      os.makedirs(tmp_path / run_.folder)
      with open(tmp_path / run_.folder / "results_test.json", "w") as f:
        json.dump({run_.phase: {"cfp_fp": {"accuracy": value}}}, f)
  summary = experiments.summarize(str(tmp_path), "control", "test", variants, by_variant,
                                  config)
  figures = summary["figures"]["cfp_fp accuracy"]
  assert variants == ["baseline", "aprn", "control"]
  for variant in variants:
    ours = 100 * values[variant]
    np.testing.assert_allclose(figures[variant]["per_seed"], ours)
    np.testing.assert_allclose(figures[variant]["ci"], stats.t.interval(
        0.95, 2, loc=ours.mean(), scale=stats.sem(ours)))
    for key, reference in (("vs_control", "control"), ("vs_baseline", "baseline")):
      if variant in (reference, "baseline"):
        continue
      diff = ours - 100 * values[reference]
      np.testing.assert_allclose(figures[variant][key]["mean"], diff.mean())
      np.testing.assert_allclose(figures[variant][key]["ci"], stats.t.interval(
          0.95, 2, loc=diff.mean(), scale=stats.sem(diff)))
      assert figures[variant][key]["positive"] == int((diff > 0).sum())
  assert "vs_baseline" not in figures["baseline"]
  md = experiments.markdown(summary)
  assert "Difference to the baseline" in md and "| aprn |" in md


@pytest.mark.slow
def test_each_seeds_baseline_is_trained_once(studies):
  _, _, study, summary = studies
  for seed in (0, 1):
    folders = sorted(os.listdir(os.path.join(study, f"seed{seed}")))
    assert folders == ["alpha=0.1", "baseline", "control"]
    for variant in ("alpha=0.1", "control"):
      link = os.path.join(study, f"seed{seed}", variant, "baseline")
      assert os.path.islink(link) and os.readlink(link) == os.path.join("..", "baseline",
                                                                         "baseline")
      assert os.path.exists(os.path.join(study, f"seed{seed}", variant, "aprn", "done.json"))
  assert summary["runs"]["baseline"] == ["seed0/baseline", "seed1/baseline"]
  for name in ("summary.json", "summary.md", "differences.png", "rank1_by_yaw.png"):
    assert os.path.exists(summary_file(study, name))


@pytest.mark.slow
def test_summary_equals_numpy_and_scipy_on_the_results_files(studies):
  _, _, study, summary = studies

  def figure(folder, phase, read):
    with open(os.path.join(study, folder, "results_test.json")) as f:
      return read(json.load(f)[phase])

  reads = {"cfp_fp accuracy": lambda r: 100 * r["cfp_fp"]["accuracy"],
           "multipie rank1 |yaw|=90": lambda r: 50 * (r["multipie"]["rank1_by_yaw"]["90"]
                                                      + r["multipie"]["rank1_by_yaw"]["-90"])}
  for name, read in reads.items():
    control = np.array([figure(f"seed{s}/control", "aprn", read) for s in (0, 1)])
    for variant, folder, phase in (("baseline", "baseline", "baseline"),
                                   ("alpha=0.1", "alpha=0.1", "aprn"),
                                   ("control", "control", "aprn")):
      values = np.array([figure(f"seed{s}/{folder}", phase, read) for s in (0, 1)])
      entry = summary["figures"][name][variant]
      np.testing.assert_allclose(entry["per_seed"], values)
      np.testing.assert_allclose(entry["mean"], values.mean())
      np.testing.assert_allclose(entry["ci"], stats.t.interval(
          0.95, 1, loc=values.mean(), scale=stats.sem(values)))
      diff = values - control
      np.testing.assert_allclose(entry["vs_control"]["mean"], diff.mean(), atol=1e-12)
      assert entry["vs_control"]["positive"] == int((diff > 0).sum())
      if np.ptp(diff) > 0:
        np.testing.assert_allclose(entry["vs_control"]["ci"], stats.t.interval(
            0.95, 1, loc=diff.mean(), scale=stats.sem(diff)))
  md = open(summary_file(study, "summary.md")).read()
  assert "| alpha=0.1 |" in md and "Difference to the control" in md


@pytest.mark.slow
def test_killed_experiment_resumes_to_the_uninterrupted_summary(studies):
  root, data_dir, uninterrupted, summary = studies
  study = str(root / "killed")
  # Killed mid-run: the second seed's alpha=0.1 run has a checkpoint but has not finished.
  kill.run_until_checkpoint(command(study, data_dir),
                            os.path.join(study, "seed1", "alpha=0.1", "aprn", "checkpoints"))
  assert not os.path.exists(os.path.join(study, "seed1", "alpha=0.1", "results_test.json"))
  out = subprocess.run(command(study, data_dir), cwd=REPO, check=True, capture_output=True,
                       text=True).stdout
  assert "resumed from step" in out
  with open(summary_file(study, "summary.json")) as f:
    resumed = json.load(f)
  assert resumed["figures"] == summary["figures"]
  expected = open(summary_file(uninterrupted, "summary.md")).read()
  assert open(summary_file(study, "summary.md")).read() == expected
