"""`--mode=analyse` on a tiny workdir: the JSON, the PNGs, the probes and the noise test.

The workdir's checkpoints are the phases' initial states (training them would take longer than
all these tests; the analyses only need checkpoints). Its APRN discriminator is set by hand to
a zero output layer with bias mean_face + OFFSET, so D's output is known for any input.
"""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from aprn_jax import checkpoints, run, trainer
from aprn_jax.analysis import analyse, figures, noise_test
from configs import tiny

OFFSET = np.array([0.1, -0.3], np.float32)  # D's output - the mean face, per coordinate
ANALYSIS = dict(probe_taps=("stem", "stage4"), probe_train_images=320, probe_steps=60,
                probe_batch_size=16, probe_lr=3e-3, tsne_identities=4, overlay_identities=2,
                overlay_tile=48, noise_images=10)


def known_discriminator(variables, mean_face):
  params = dict(variables["params"])
  out = params["landmarks"]
  params["landmarks"] = {"kernel": np.zeros_like(out["kernel"]),
                         "bias": (mean_face + OFFSET).reshape(out["bias"].shape)}
  return {**variables, "params": params}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
  root = tmp_path_factory.mktemp("analyse")
  config = tiny.get_config()
  config.data.data_dir = str(root / "data")
  workdir = str(root / "workdir")
  run.guard_workdir(config, workdir)  # the config of the run, as training writes it
  data = run.data_lib.load(config, workdir)
  for name in trainer.PHASES:
    phase = trainer.Phase(config, data, workdir, name)
    state = phase.initial_state()
    if name == "aprn":
      state = state.replace(discriminator=known_discriminator(
          jax.device_get(state.discriminator), data.mean_face))
    mngr = phase.checkpoint_manager()
    checkpoints.save(mngr, state.replace(step=state.step + 1))
    mngr.close()
  config.analysis.update(ANALYSIS)  # config.analysis may differ from the saved config
  results = run.main(config, workdir, "analyse")
  return config, workdir, results, data.mean_face


def test_json_holds_every_analysis_per_phase(analysed):
  _, workdir, results, _ = analysed
  with open(os.path.join(workdir, "analysis", "analysis.json")) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  assert set(results) == {"baseline", "aprn"}
  for phase, result in results.items():
    assert result["step"] == 1
    assert set(result) == {"step", "pose_analyses", "tsne_png", "landmark_probes", "overlays",
                           "noise_test"}
    assert set(result["pose_analyses"]) == {
        "pose_svm_train_accuracy", "pose_svm_val_accuracy", "pose_svm_val_accuracy_ci",
        "centroid_distance_mean", "centroid_distance_std"}
    probes = result["landmark_probes"]
    assert probes["train_images"] == 320 and probes["steps"] == 60
    assert probes["test_set"] == "cfp_fp" and probes["test_images"] > 0
    assert set(probes["taps"]) == {"stem", "stage4"}
    for tap in probes["taps"].values():
      assert set(tap) == {"l1", "l1_frontal", "l1_profile", "train_l1_first", "train_l1_last"}
    assert result["overlays"]["png"] == f"overlays_{phase}.png"
  assert results["aprn"]["overlays"]["source"] == "discriminator"
  # The baseline trains no D: its stand-in is the probe on config.aprn.tap.
  assert results["baseline"]["overlays"]["source"] == "probe:stage4"
  table = analyse.table(results)
  assert "landmark_probes.taps.stem.l1" in table and "noise_test.l1_mean" in table


def test_pngs_decode_at_their_sizes(analysed):
  _, workdir, results, _ = analysed
  for phase, result in results.items():
    with Image.open(os.path.join(workdir, "analysis", result["tsne_png"])) as image:
      assert image.format == "PNG" and image.size == (800, 800)
    with Image.open(os.path.join(workdir, "analysis", result["overlays"]["png"])) as image:
      image.load()
      assert image.size == figures.overlay_size(2 * ANALYSIS["overlay_identities"],
                                                ANALYSIS["overlay_tile"])


def test_probes_learn_and_the_stem_beats_predicting_the_mean(analysed):
  _, _, results, _ = analysed
  for result in results.values():
    probes = result["landmark_probes"]
    for tap in probes["taps"].values():
      assert tap["train_l1_last"] < tap["train_l1_first"]
    assert probes["taps"]["stem"]["l1"] < probes["train_mean_l1"]


def test_noise_test_of_a_discriminator_with_known_output(analysed):
  _, _, results, _ = analysed
  noise = results["aprn"]["noise_test"]
  assert noise["source"] == "discriminator" and noise["num_images"] == 10
  # D emits mean_face + OFFSET for any input: L1 = mean(|0.1|, |-0.3|) = 0.2 on every image.
  assert noise["l1_mean"] == pytest.approx(0.2, abs=1e-5)
  assert noise["l1_std"] == pytest.approx(0.0, abs=1e-5)


def test_analyse_without_checkpoints_is_refused(analysed, tmp_path):
  config = analysed[0]
  with pytest.raises(FileNotFoundError, match="no phase checkpoints"):
    run.main(config, str(tmp_path / "empty"), "analyse")


def test_noise_test_by_hand():
  images = noise_test.noise_images(5, 4, seed=3)
  assert images.shape == (5, 4, 4, 3) and images.dtype == np.float32
  assert images.min() >= -1.0 and images.max() <= 1.0
  np.testing.assert_array_equal(images, noise_test.noise_images(5, 4, seed=3))
  mean_face = np.array([[0.0, 0.5], [-0.5, 0.0]], np.float32)
  # Every coordinate predicted as the image's first pixel value v: per-image L1 is
  # (|v| + |v - 0.5| + |v + 0.5| + |v|) / 4.
  predict = lambda x: np.broadcast_to(x[:, 0, 0, 0, None, None], (len(x), 2, 2))
  v = images[:, 0, 0, 0].astype(np.float64)
  per_image = (2 * np.abs(v) + np.abs(v - 0.5) + np.abs(v + 0.5)) / 4
  result = noise_test.noise_test(predict, mean_face, num_images=5, image_size=4, seed=3)
  assert result == {"num_images": 5, "l1_mean": pytest.approx(per_image.mean()),
                    "l1_std": pytest.approx(per_image.std())}


def test_overlay_draws_each_kind_where_it_belongs(tmp_path):
  images = -np.ones((2, 8, 8, 3), np.float32)  # black
  truth = np.array([[[-0.5, -0.5]], [[0.5, 0.5]]], np.float32)
  predicted = np.array([[[0.5, -0.5]], [[-0.5, 0.5]]], np.float32)
  mean_face = np.array([[0.0, 0.5]], np.float32)
  size = figures.overlay_png(images, truth, predicted, mean_face, tmp_path / "o.png", tile=40)
  assert size == (80, 40 + figures.CAPTION)
  pixels = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
  at = lambda tile, x, y: tuple(pixels[figures.CAPTION + int((y + 1) * 20),
                                       tile * 40 + int((x + 1) * 20)])
  assert at(0, -0.5, -0.5) == figures.COLOURS["truth"]
  assert at(0, 0.5, -0.5) == figures.COLOURS["predicted"]
  assert at(1, 0.0, 0.5) == figures.COLOURS["mean_face"]
  assert at(1, 0.5, 0.5) == figures.COLOURS["truth"]
  assert at(1, 0.0, -0.5) == (0, 0, 0)


def test_probes_keep_table_1_layers_per_tap_and_end_at_ds_width():
  from aprn_jax.analysis import landmark_probe
  from configs import default
  config = default.get_config()
  taps = ("stem", "stage2", "stage4")
  config.aprn.d_widths = (128,)  # the default R's stage4 has 512 channels
  widths = {tap: probe.widths for tap, probe in landmark_probe.make_probes(config, 51, taps)}
  assert widths == {"stem": (16, 32, 64, 128), "stage2": (64, 128), "stage4": (128,)}
  config.aprn.d_widths = ()
  widths = {tap: probe.widths for tap, probe in landmark_probe.make_probes(config, 51, taps)}
  assert widths == {"stem": (64, 128, 256, 512), "stage2": (256, 512), "stage4": (512,)}
