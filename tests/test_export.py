"""ONNX and StableHLO export, embed and compare, on tiny runs trained here once per module:
configs/tiny.py's baseline + APRN in float32, and a few bfloat16 baseline steps.

The exported models must give JAX's embeddings (cosine >= 0.99999 at batch sizes 1, 3 and
32) and JAX's CFP-FF figures, and hold the backbone's parameters alone; embed and compare go
through evaluation's image pipeline. The README's onnxruntime snippet (SNIPPET) runs in a
process without this project.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("jax2onnx", reason="the export extra: pip install --no-deps -r "
                    "requirements-export.txt")
import onnx  # noqa: E402  (after the skip)

from aprn_jax import compare, embed, evaluate, export, inference, run  # noqa: E402
from aprn_jax.evaluation.embedder import Embedder, network_inputs  # noqa: E402
from benchmarks.inference import backbone_alone_shapes  # noqa: E402
from configs import tiny  # noqa: E402
from input_pipeline.readers import images as images_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH_SIZES = (1, 3, 32)

# The README's "Export and deploy" snippet, verbatim: face.jpg embedded with onnxruntime,
# Pillow and numpy alone, as the card says (crop_size == image_size, as in every config of
# configs/, and the card's flip).
SNIPPET = """\
import json, numpy as np, onnxruntime as ort; from PIL import Image
p = json.load(open("model.onnx.json"))["preprocessing"]; s, c = p["stored_size"], p["crop_size"]; o = (s - c) // 2
im = Image.open("face.jpg").convert("RGB"); m = min(im.size); l, t = (im.width - m) / 2, (im.height - m) / 2
x = np.asarray(im.resize((s, s), Image.BILINEAR, box=(l, t, l + m, t + m)), np.float32)[o:o + c, o:o + c] / 127.5 - 1
e = ort.InferenceSession("model.onnx").run(None, {"images": np.stack([x, x[:, ::-1]])})[0].sum(0); e /= np.linalg.norm(e)
"""


def _count(shapes):
  """Scalars of a `backbone_alone_shapes` tree ((shape, dtype) leaves)."""
  leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2
                           and isinstance(x[1], str))
  return int(sum(np.prod(shape) for shape, _ in leaves))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(config, workdir, results) of configs/tiny.py trained here, CFP-FF evaluated."""
  root = tmp_path_factory.mktemp("export")
  config = tiny.get_config()
  config.data.data_dir = str(root / "data")
  config.eval.benchmarks = ("cfp_ff",)
  workdir = str(root / "work")
  results = run.main(config, workdir, "train")
  return config, workdir, results


@pytest.fixture(scope="module")
def exported(trained):
  """{format: (path, card)} of the APRN phase's exports."""
  _, workdir, _ = trained
  out = {}
  for fmt in export.FORMATS:
    card = export.export(workdir, fmt)
    out[fmt] = (os.path.join(workdir, "export", card["model"]), card)
  return out


@pytest.fixture(scope="module")
def test_images(trained):
  """(paths, network inputs) of the first 32 CFP-FF images of the tiny test split."""
  config, workdir, _ = trained
  restored = export.restore(workdir)
  _, _, pairs = export.threshold_pairs(config, restored.data)
  paths = pairs.paths[:max(BATCH_SIZES)]
  inputs = network_inputs(images_lib.load_images(paths, restored.data.stored_size),
                          config.data.crop_size, config.data.image_size)
  return paths, inputs


def _in_batches(embed_fn, inputs, size):
  return np.concatenate([embed_fn(inputs[i:i + size]) for i in range(0, len(inputs), size)])


def test_onnx_and_stablehlo_match_jax_at_batch_sizes_1_3_and_32(trained, exported,
                                                                 test_images):
  _, workdir, _ = trained
  _, inputs = test_images
  restored = export.restore(workdir)
  jax_embed = inference.make_embed_fn(restored.phase.recognizer, restored.variables)
  reference = jax_embed(inputs)  # evaluation's pmapped embedding, 32 = 8 per device
  for fmt, (path, card) in exported.items():
    model = export.load_model(path)
    assert card["format"] == fmt and card["source"]["phase"] == "aprn"
    assert card["input"]["shape"] == ["batch", 32, 32, 3]
    for size in BATCH_SIZES:
      out = _in_batches(model.embed, inputs, size)
      cosine = np.sum(out * reference, axis=-1) / np.linalg.norm(out, axis=-1)
      assert cosine.min() >= 0.99999, (fmt, size, cosine.min())
    assert card["verification"]["batch_sizes"] == list(BATCH_SIZES)
    assert card["verification"]["min_cosine"] >= 0.99999


def test_cfp_ff_accuracy_from_the_onnx_model_equals_jax(trained, exported, monkeypatch):
  config, workdir, results = trained
  path, card = exported["onnx"]
  model = export.load_model(path)
  monkeypatch.setattr(evaluate, "Embedder",
                      lambda config, stored_size, recognizer, variables:
                      Embedder(config, stored_size, embed_fn=model.embed))
  figures = evaluate.evaluate(config, run.saved_data(workdir), None, None)["cfp_ff"]
  assert figures["accuracy"] == results["aprn"]["cfp_ff"]["accuracy"]
  # JAX evaluates with its CPU layers (oneDNN's), the ONNX model with ONNX Runtime's: scores
  # differ by float rounding, which may swap a near-tied pair or two (1 / 19,600 of the AUC
  # each, 140 x 140 pairs).
  assert figures["auc"] == pytest.approx(results["aprn"]["cfp_ff"]["auc"], abs=2e-4)
  # The card's threshold was chosen on those pairs, embedded by the ONNX model.
  assert card["threshold"]["pairs"] == "cfp_ff" and card["threshold"]["num_pairs"] == 280
  assert card["threshold"]["ten_fold_accuracy"] == figures["accuracy"]
  assert card["threshold"]["cosine"] == pytest.approx(
      1 - card["threshold"]["squared_l2"] / 2)


def test_the_graph_holds_the_backbone_alone(trained, exported, tmp_path):
  """The APRN export (D trained beside R) and the baseline's, in NCHW, count the baseline
  backbone's parameters and statistics, built alone; only scalars and shapes besides."""
  config, workdir, _ = trained
  reference = backbone_alone_shapes(config)
  expected = {"parameters": _count(reference["params"]),
              "statistics": _count(reference["batch_stats"])}
  path, card = exported["onnx"]
  aprn = export.onnx_parameter_counts(onnx.load(path))
  nchw = export.export(workdir, "onnx", phase="baseline", nchw=True,
                       out=str(tmp_path / "baseline.onnx"))
  baseline = export.onnx_parameter_counts(onnx.load(str(tmp_path / "baseline.onnx")))
  for counts in (aprn, baseline):
    assert {k: counts[k] for k in expected} == expected
    assert counts["constants"] < 100
  assert card["parameters"] == aprn
  assert exported["stablehlo"][1]["parameters"] == expected
  assert nchw["input"]["layout"] == "NCHW" and nchw["input"]["shape"] == ["batch", 3, 32, 32]
  assert nchw["source"]["phase"] == "baseline"
  assert nchw["verification"]["min_cosine"] >= 0.99999


@pytest.mark.slow  # trains its own bfloat16 model; the float32 export tests cover the path
def test_a_bfloat16_trained_model_exports_and_verifies(trained, tmp_path):
  config, workdir, _ = trained
  bf16 = tiny.get_config()
  bf16.data.data_dir = config.data.data_dir
  bf16.model.dtype = "bfloat16"
  bf16.eval.benchmarks = ("cfp_ff",)
  bf16.train.update(phases=("baseline",), baseline_epochs=1, batch_size=64)  # 5 steps
  bf16_workdir = str(tmp_path / "bf16")
  run.main(bf16, bf16_workdir, "train")
  card = export.export(bf16_workdir, "onnx")
  assert (card["source"]["trained_dtype"], card["source"]["dtype"]) == ("bfloat16", "float32")
  assert card["verification"]["min_cosine"] >= 0.99999
  assert card["verification"]["min_cosine_to_bfloat16"] > 0.99
  hlo = export.export(bf16_workdir, "stablehlo", dtype="bfloat16")
  assert hlo["source"]["dtype"] == "bfloat16"
  assert hlo["verification"]["bounds"]["min_cosine"] == export.BOUNDS["bfloat16"][0]
  with pytest.raises(ValueError, match="--format=stablehlo"):
    export.export(bf16_workdir, "onnx", dtype="bfloat16")


def test_a_disagreeing_export_fails_naming_the_difference_and_leaves_no_model(
    trained, tmp_path, monkeypatch):
  _, workdir, _ = trained
  monkeypatch.setitem(export.BOUNDS, "float32", (1.5, 0.0))  # nothing can pass
  out = str(tmp_path / "model.onnx")
  with pytest.raises(export.VerificationError,
                     match=r"lowest cosine .* on .*\.jpg at batch size \d+; largest absolute"):
    export.export(workdir, "onnx", out=out)
  assert os.listdir(tmp_path) == []


def test_errors_name_the_option_or_file(trained, tmp_path):
  _, workdir, _ = trained
  with pytest.raises(FileNotFoundError, match="--workdir=.*no config.json"):
    export.export(str(tmp_path), "onnx")
  empty = tmp_path / "empty"
  empty.mkdir()
  shutil.copy(os.path.join(workdir, "config.json"), empty)
  with pytest.raises(FileNotFoundError, match="no phase checkpoints"):
    export.export(str(empty), "onnx")
  only_baseline = tmp_path / "only_baseline"
  only_baseline.mkdir()
  for name in ("config.json", "data.json", "baseline"):
    source = os.path.join(workdir, name)
    (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, only_baseline / name)
  with pytest.raises(FileNotFoundError, match="--phase=aprn: .* has no aprn checkpoints"):
    export.export(str(only_baseline), "onnx", phase="aprn")
  with pytest.raises(FileNotFoundError, match=r"--step=3: .* are at steps \[36, 40\]"):
    export.export(workdir, "onnx", phase="baseline", step=3)
  with pytest.raises(FileNotFoundError, match="--out=.*does not exist"):
    export.export(workdir, "onnx", out=str(tmp_path / "missing" / "model.onnx"))
  with pytest.raises(ValueError, match="--nchw is for --format=onnx"):
    export.export(workdir, "stablehlo", nchw=True)
  with pytest.raises(FileNotFoundError, match="no model card"):
    (tmp_path / "lone.onnx").write_bytes(b"")
    export.load_model(str(tmp_path / "lone.onnx"))


def _face_folder(trained, root):
  """Two images of identity 001, one of 002 in a subfolder, a truncated JPEG and a text
  file; the CFP images of the tiny test split."""
  config, workdir, _ = trained
  images = os.path.join(run.saved_data(workdir).protocol_root, "cfp", "Data", "Images")
  os.makedirs(root / "sub")
  shutil.copy(os.path.join(images, "001", "frontal", "01.jpg"), root / "a1.jpg")
  shutil.copy(os.path.join(images, "001", "frontal", "02.jpg"), root / "a2.jpg")
  shutil.copy(os.path.join(images, "002", "frontal", "01.jpg"), root / "sub" / "b1.jpg")
  with open(os.path.join(images, "003", "frontal", "01.jpg"), "rb") as f:
    (root / "sub" / "broken.jpg").write_bytes(f.read()[:400])
  (root / "notes.txt").write_text("not an image\n")
  return ["a1.jpg", "a2.jpg", os.path.join("sub", "b1.jpg")]


def test_embed_writes_the_readable_images_and_lists_the_bad_ones(trained, exported,
                                                                 tmp_path):
  _, workdir, _ = trained
  path, _ = exported["onnx"]
  folder = tmp_path / "faces"
  good = _face_folder(trained, folder)
  out = tmp_path / "faces.npy"
  result = subprocess.run([sys.executable, "-m", "aprn_jax.embed", f"--model={path}",
                           f"--images={folder}", f"--out={out}"], cwd=REPO,
                          capture_output=True, text=True, check=True)
  assert "skipped sub/broken.jpg: cannot decode" in result.stderr
  embeddings = np.load(out)
  meta = json.loads(out.with_suffix(".json").read_text())
  assert meta["images"] == good and embeddings.shape == (3, 32)
  assert [s["image"] for s in meta["skipped"]] == ["notes.txt", os.path.join("sub",
                                                                             "broken.jpg")]
  assert "truncated" in meta["skipped"][1]["reason"].lower()
  # The same images embedded by evaluation's embedder in JAX, from the workdir.
  jax_embeddings, paths, _ = embed.embed_folder(export.restore(workdir).embedder(), 36,
                                                str(folder))
  assert [os.path.relpath(p, folder) for p in paths] == good
  assert np.min(np.sum(jax_embeddings * embeddings, axis=-1)) >= 0.99999


def test_compare_decides_by_the_cards_threshold(trained, exported, tmp_path):
  path, card = exported["onnx"]
  model = export.load_model(path)
  folder = tmp_path / "faces"
  _face_folder(trained, folder)
  same_identity = compare.compare(model, str(folder / "a1.jpg"), str(folder / "a2.jpg"))
  two_identities = compare.compare(model, str(folder / "a1.jpg"),
                                   str(folder / "sub" / "b1.jpg"))
  for result in (same_identity, two_identities):
    assert result["threshold_squared_l2"] == card["threshold"]["squared_l2"]
    assert result["squared_distance"] == pytest.approx(2 - 2 * result["cosine"], abs=1e-5)
    assert result["same"] == (result["squared_distance"] < result["threshold_squared_l2"])
    if abs(result["cosine"] - result["threshold_cosine"]) > 1e-5:
      assert result["same"] == (result["cosine"] > result["threshold_cosine"])
  # What the threshold implies for another cut: a threshold just above or below the pair.
  for result in (same_identity, two_identities):
    for shift, expected in ((1e-3, True), (-1e-3, False)):
      shifted = dict(card, threshold=dict(card["threshold"],
                                          squared_l2=result["squared_distance"] + shift))
      moved = compare.compare(export.Model(path, shifted, model.embed),
                              str(folder / "a1.jpg"),
                              str(folder / ("a2.jpg" if result is same_identity
                                            else "sub/b1.jpg")))
      assert moved["same"] is expected
  printed = subprocess.run([sys.executable, "-m", "aprn_jax.compare", f"--model={path}",
                            str(folder / "a1.jpg"), str(folder / "a2.jpg")], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
  decision = "same person" if same_identity["same"] else "different people"
  assert f"cosine similarity {same_identity['cosine']:.4f}" in printed and decision in printed
  with pytest.raises(ValueError, match="cannot decode image file .*broken.jpg"):
    compare.compare(model, str(folder / "a1.jpg"), str(folder / "sub" / "broken.jpg"))


def test_the_readme_snippet_embeds_an_image_without_this_project(trained, exported,
                                                                 tmp_path):
  path, _ = exported["onnx"]
  shutil.copy(path, tmp_path / "model.onnx")
  shutil.copy(path + ".json", tmp_path / "model.onnx.json")
  _face_folder(trained, tmp_path / "faces")
  shutil.copy(tmp_path / "faces" / "a1.jpg", tmp_path / "face.jpg")
  code = (SNIPPET + "import sys; assert not {'aprn_jax', 'input_pipeline'} & set(sys.modules)"
          "\nprint(json.dumps(e.tolist()))")
  result = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=""), capture_output=True, text=True,
                          check=True)
  snippet_embedding = np.array(json.loads(result.stdout))
  expected = export.load_model(path).embedder()([str(tmp_path / "face.jpg")])[0]
  assert float(snippet_embedding @ expected) >= 0.99999


@pytest.mark.slow  # runs a benchmark script end to end
def test_the_onnx_benchmark_counts_the_backbone_and_matches_jax(tmp_path):
  out = tmp_path / "onnx.jsonl"
  result = subprocess.run(
      [sys.executable, "benchmarks/onnx_inference.py", "--config=configs/tiny.py",
       "--batch_size=4", "--steps=1", "--warmup=0", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, check=True)
  record = json.loads(result.stdout.strip().splitlines()[-1])
  assert json.loads(out.read_text()) == record
  assert record["onnx_counts_equal_backbone"] and record["onnx"]["constants"] < 100
  reference = backbone_alone_shapes(tiny.get_config())
  assert record["onnx"]["parameters"] == _count(reference["params"])
  assert record["agreement"]["min_cosine"] >= 0.99999
  assert set(record["runtimes"]) == {"onnxruntime", "jax"}
  assert record["public_code_params"] is None  # the tiny ResNet is not the public code's
