"""Evaluators as registered modules, and the streamed embedder that feeds them."""
import os
import types
import weakref

import numpy as np
import pytest
from PIL import Image

from aprn_jax import evaluate
from aprn_jax.evaluation import embedder as embedder_lib
from aprn_jax.evaluation import embeddings, registry
from configs import default
from input_pipeline.readers import images as images_lib


def _data(stored_size=16):
  return types.SimpleNamespace(stored_size=stored_size, protocol_root="")


class _NoEmbedder:
  def __init__(self, *unused_args):
    pass


@pytest.fixture
def toy(tmp_path):
  """A benchmark of the test's own: one option, a check that opens its file, one figure."""
  list_file = tmp_path / "toy.txt"

  def checks(context):
    return [(("toy_list",), lambda: open(context.paths["toy_list"]).read())]

  def run(context):
    score = float(open(context.paths["toy_list"]).read())
    return {"toy": {"toy_score": score, "toy_score_ci": [score - 0.1, score + 0.1]}}

  evaluator = registry.register(registry.Evaluator(
      name="toy", paths={"toy_list": None}, run=run, checks=checks, table_keys=("toy_score",)))
  yield list_file
  registry.unregister(evaluator.name)


def _toy_config(list_file):
  config = default.get_config()
  config.eval.benchmarks = ("toy",)
  with config.unlocked():
    config.eval.paths.toy_list = str(list_file)
  return config


def test_a_registered_evaluator_adds_its_rows_without_editing_evaluate(toy, monkeypatch):
  toy.write_text("0.25")
  monkeypatch.setattr(evaluate, "Embedder", _NoEmbedder)
  results = evaluate.evaluate(_toy_config(toy), _data(), None, None)
  assert results == {"toy": {"toy_score": 0.25, "toy_score_ci": [0.15, 0.35]}}
  table = evaluate.table({"baseline": results, "aprn": results})
  lines = table.splitlines()
  row = [line for line in lines if line.startswith("  toy_score")]
  assert len(row) == 1 and lines[lines.index(row[0]) - 1] == "toy"  # under its benchmark
  assert row[0].split()[1:] == ["25.00", "+-", "10.00"] * 2 + ["+0.00"]  # aprn - baseline


def test_a_registered_evaluator_is_checked_before_training(toy):
  config = _toy_config(toy)  # the file does not exist yet
  with pytest.raises(FileNotFoundError, match=r"config\.eval\.paths\.toy_list=.*toy\.txt"):
    evaluate.checked_paths(config, _data())
  config.eval.paths.toy_list = ""
  with pytest.raises(ValueError, match=r"'toy' but config\.eval\.paths\.toy_list is empty"):
    evaluate.checked_paths(config, _data())


def test_registry_refuses_a_second_evaluator_of_one_name(toy):
  with pytest.raises(ValueError, match="named 'toy' is registered already"):
    registry.register(registry.Evaluator(name="toy", paths={}, run=lambda c: {}))


def test_builtin_benchmarks_are_found_and_analyses_run_with_theirs():
  names = registry.benchmark_names()
  for name in ("cfp_ff", "cfp_fp", "lfw", "bins", "ijba", "megaface", "multipie"):
    assert name in names
  assert "pose_analyses" not in names
  chosen = [e.name for e in registry.selected(("multipie", "cfp_fp", "multipie"))]
  assert chosen == ["multipie", "cfp_fp", "pose_analyses"]
  assert [e.name for e in registry.selected(("ijba",))] == ["ijba"]


# The streamed embedder.

def _write_jpegs(folder, num, size=20, seed=0):
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(num):
    path = os.path.join(folder, f"{i:03d}.jpg")
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    paths.append(path)
  return paths


class _Projection:
  """A fixed linear embedding; records the network-input chunks alive at each call."""

  def __init__(self, dim, tracked):
    self.matrix, self.tracked, self.alive = None, tracked, []
    self.dim = dim

  def __call__(self, batch):
    if self.matrix is None:
      self.matrix = np.random.default_rng(1).standard_normal(
          (batch[0].size, self.dim)).astype(np.float32)
    self.alive.append(sum(ref() is not None for ref in self.tracked))
    return batch.reshape(len(batch), -1) @ self.matrix


def _config(batch_size=4, flip=True):
  config = default.get_config()
  config.data.crop_size, config.data.image_size = 14, 12
  config.eval.batch_size, config.eval.flip = batch_size, flip
  return config


def test_streamed_embeddings_equal_embedding_everything_at_once(tmp_path, monkeypatch):
  """Files in chunks of 8, with copies of one file's bytes under other names: the same
  embeddings as decoding all files and embedding them in one call; each distinct image is
  decoded once; at most two chunks of network inputs exist while the device embeds."""
  paths = _write_jpegs(str(tmp_path), 30)
  for i in (3, 17):  # same bytes, other names
    copy = str(tmp_path / f"copy{i}.jpg")
    with open(paths[i], "rb") as src, open(copy, "wb") as dst:
      dst.write(src.read())
    paths.append(copy)
  order = paths[::-1] + paths[:5]  # repeats in one call
  tracked = []
  real_inputs = embedder_lib.network_inputs

  def tracking_inputs(*args):
    out = real_inputs(*args)
    tracked.append(weakref.ref(out))
    return out

  monkeypatch.setattr(embedder_lib, "network_inputs", tracking_inputs)
  config = _config()
  embed_fn = _Projection(6, tracked)
  embed = embedder_lib.Embedder(config, 16, embed_fn=embed_fn, chunk_images=8,
                                decode_threads=3)
  streamed = embed(order)
  assert embed.num_decoded == 30 and len(tracked) == 4  # 32 files in 4 chunks; 30 images
  assert max(embed_fn.alive) <= 2

  raw = images_lib.load_images(order, 16)
  inputs = real_inputs(raw, 14, 12)
  reference = embeddings.extract(_Projection(6, []), inputs, 4, flip=True,
                                 progress_every_s=None)
  np.testing.assert_allclose(streamed, reference, rtol=1e-5, atol=1e-6)
  again = embed(paths[:3])  # embedded already: nothing read or decoded again
  assert embed.num_decoded == 30 and np.array_equal(again, streamed[-5:-2])


def test_a_bad_file_in_a_later_chunk_is_named(tmp_path):
  paths = _write_jpegs(str(tmp_path), 10)
  with open(paths[7], "wb") as f:
    f.write(b"not a jpeg")
  embed = embedder_lib.Embedder(_config(), 16, embed_fn=_Projection(4, []), chunk_images=4)
  with pytest.raises(ValueError, match=r"cannot decode image file .*007\.jpg"):
    embed(paths)
  missing = str(tmp_path / "gone.jpg")
  with pytest.raises(FileNotFoundError, match="gone.jpg"):
    embed([paths[0], missing])


def test_in_memory_images_are_embedded_in_chunks_once_each():
  raw = np.random.default_rng(0).integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)
  raw[9] = raw[2]
  embed = embedder_lib.Embedder(_config(flip=False), 16, embed_fn=_Projection(5, []),
                                chunk_images=4)
  out = embed.images(raw)
  assert embed.num_decoded == 10
  reference = embeddings.extract(_Projection(5, []), embedder_lib.network_inputs(raw, 14, 12),
                                 4, flip=False, progress_every_s=None)
  np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)
