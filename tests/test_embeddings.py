"""Embedding extraction (flip averaging, fixed-size padded batches) and .npy storage."""
import json

import numpy as np
import pytest

from aprn_jax.evaluation import embeddings


class LinearEmbedder:
  """A fixed linear map of the pixels (not flip-invariant) that records its batch shapes."""

  def __init__(self, image_shape, dim, seed=0):
    self.weights = np.random.default_rng(seed).standard_normal((int(np.prod(image_shape)), dim))
    self.batch_shapes = []

  def __call__(self, batch):
    self.batch_shapes.append(batch.shape)
    return batch.reshape(len(batch), -1).astype(np.float64) @ self.weights

  def one(self, image):
    return image.reshape(-1).astype(np.float64) @ self.weights


@pytest.fixture(name="images")
def fixture_images():
  return np.random.default_rng(1).uniform(-1, 1, (10, 4, 5, 3)).astype(np.float32)


def test_flip_averaging_matches_hand_computation(images):
  embed = LinearEmbedder(images.shape[1:], 6)
  result = embeddings.extract(embed, images, batch_size=4, flip=True)
  for image, row in zip(images, result):
    mirrored = image[:, ::-1]  # (H, W, 3): reverse the columns
    expected = embed.one(image) + embed.one(mirrored)
    np.testing.assert_allclose(row, expected / np.linalg.norm(expected), atol=1e-6)
  plain = embeddings.extract(embed, images, batch_size=4, flip=False)
  for image, row in zip(images, plain):
    np.testing.assert_allclose(row, embed.one(image) / np.linalg.norm(embed.one(image)),
                               atol=1e-6)
  assert result.dtype == np.float32 and result.shape == (10, 6)


def test_padding_keeps_batch_shape_and_results(images):
  reference = embeddings.extract(LinearEmbedder(images.shape[1:], 6), images, batch_size=10)
  for batch_size in (1, 3, 4, 16):
    embed = LinearEmbedder(images.shape[1:], 6)
    result = embeddings.extract(embed, images, batch_size=batch_size)
    assert set(embed.batch_shapes) == {(batch_size, 4, 5, 3)}
    np.testing.assert_allclose(result, reference, atol=1e-6)


def test_iterable_of_images_and_batches(images):
  embed = LinearEmbedder(images.shape[1:], 6)
  from_array = embeddings.extract(embed, images, batch_size=3)
  mixed = [images[0], images[1:4], images[4], images[5:]]
  np.testing.assert_allclose(embeddings.extract(embed, iter(mixed), batch_size=3), from_array,
                             atol=1e-6)


def test_progress_line_on_stderr(images, capsys):
  embeddings.extract(LinearEmbedder(images.shape[1:], 6), images, 4, progress_every_s=0.0)
  assert "extract: 10 images" in capsys.readouterr().err


def test_bad_images_and_outputs_raise(images):
  embed = LinearEmbedder(images.shape[1:], 6)
  with pytest.raises(ValueError, match="dtype uint8"):
    embeddings.extract(embed, np.zeros((2, 4, 5, 3), np.uint8), 2)
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    embeddings.extract(embed, images * 3, 2)
  with pytest.raises(ValueError, match="embed_fn"):
    embeddings.extract(lambda batch: np.zeros((1, 6)), images, 2)
  with pytest.raises(ValueError, match="no images"):
    embeddings.extract(embed, [], 2)


def test_save_load_roundtrip(tmp_path):
  values = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
  path = tmp_path / "sub" / "cfp.npy"
  embeddings.save(path, values, model="resnet101", flip=True)
  loaded, meta = embeddings.load(path)
  np.testing.assert_array_equal(loaded, values)
  assert meta == {"model": "resnet101", "flip": True}
  assert json.loads(path.with_suffix(".json").read_text())["model"] == "resnet101"
  with pytest.raises(FileNotFoundError, match="missing.npy"):
    embeddings.load(tmp_path / "missing.npy")
  with pytest.raises(ValueError, match="must end in .npy"):
    embeddings.save(tmp_path / "cfp.bin", values)
  with pytest.raises(ValueError, match="JSON"):
    embeddings.save(path, values, when=object())


def test_check_unit_norm():
  embeddings.check_unit_norm("x", embeddings.l2_normalize([[3.0, 4.0], [0.0, 2.0]]))
  with pytest.raises(ValueError, match="x: rows must be L2-normalised"):
    embeddings.check_unit_norm("x", [[3.0, 4.0]])
