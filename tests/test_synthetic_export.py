"""The export of the tiny synthetic set, read back with the benchmark readers.

Pairs must be the synthetic CFP protocol's pairs; images the test split's pixels (within JPEG
error; exactly for PNG packs) and byte copies of the protocol tree's files.
"""
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from aprn_jax.evaluation import identification, templates
from input_pipeline.readers import cfp
from input_pipeline.readers import ijba
from input_pipeline.readers import images
from input_pipeline.readers import insightface_bin
from input_pipeline.readers import lfw
from input_pipeline.readers import megaface
from input_pipeline.synthetic import builder as builder_lib
from input_pipeline.synthetic import export
from input_pipeline.synthetic import protocols

SIZE = 36  # the tiny config's stored size
# Mean |pixel difference| allowed after JPEG quality 95 with 4:2:0 chroma subsampling (the
# protocol tree's and insightface's setting): about 7 on these small, saturated faces.
JPEG_MEAN_ERROR = 10.0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(builder, protocol root, test pixels by file name, export root)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = builder_lib.SyntheticFaces(config="tiny", data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  out = export.export(builder, str(tmp_path_factory.mktemp("export") / "out"))
  return builder, protocols.ensure(builder), export.read_test_images(builder), out


@pytest.fixture(scope="module")
def protocol_files(exported):
  """{bytes of a protocol-tree image: its test-split file name}."""
  _, root, pixels, _ = exported
  by_bytes = {}
  for name in pixels:
    with open(os.path.join(root, name), "rb") as f:
      by_bytes[f.read()] = name
  assert len(by_bytes) == len(pixels)
  return by_bytes


def _source(protocol_files, path):
  """The test-split file name of an exported image, found by its bytes."""
  with open(path, "rb") as f:
    return protocol_files[f.read()]


def _subject(file_name):
  return int(re.match(r"^(?:cfp/Data/Images|multipie/images)/(\d{3})/", file_name).group(1))


def _close_to(loaded, pixels):
  error = np.abs(loaded.astype(int) - np.asarray(pixels, int))
  assert error.mean() < JPEG_MEAN_ERROR, error.mean()


def test_summary_counts(exported):
  out = exported[3]
  lines = open(os.path.join(out, export.SUMMARY)).read()
  for key, value in [("cfp_ff_pairs", 280), ("cfp_fp_pairs", 280), ("lfw_pairs", 280),
                     ("lfw_images", 200), ("ijba_templates", 60), ("megaface_probes", 140),
                     ("megaface_distractors", 10 * 28)]:
    assert f'"{key}": {value}' in lines


@pytest.mark.parametrize("protocol", ["FF", "FP"])
def test_bins_hold_the_cfp_pairs_and_pixels(exported, protocol):
  _, root, pixels, out = exported
  expected = cfp.read_cfp(os.path.join(root, "cfp"), protocol)
  pack = insightface_bin.read_bin(os.path.join(out, f"cfp_{protocol.lower()}.bin"), SIZE)
  np.testing.assert_array_equal(pack.pairs.is_same, expected.is_same)
  np.testing.assert_array_equal(pack.pairs.fold, expected.fold)  # contiguous = CFP folds
  # Image 2i and 2i + 1 are pair i's images, as the protocol tree's JPEGs decode them.
  tree = images.load_images(expected.paths, SIZE)
  np.testing.assert_array_equal(pack.images[pack.pairs.index_a], tree[expected.index_a])
  np.testing.assert_array_equal(pack.images[pack.pairs.index_b], tree[expected.index_b])
  names = [os.path.relpath(p, root) for p in expected.paths]
  _close_to(pack.images[pack.pairs.index_a], [pixels[names[i]] for i in expected.index_a])


def test_lfw_tree_holds_the_cfp_ff_pairs(exported, protocol_files):
  _, root, pixels, out = exported
  expected = cfp.read_cfp(os.path.join(root, "cfp"), "FF")
  pairs = lfw.read_lfw(os.path.join(out, "lfw", "pairs.txt"), os.path.join(out, "lfw", "images"))
  sources = [_source(protocol_files, p) for p in pairs.paths]
  for path, source in zip(pairs.paths, sources):
    name = os.path.basename(path)  # Person_NNN_00KK.jpg <- cfp/Data/Images/NNN/frontal/KK.jpg
    assert source == f"cfp/Data/Images/{name[7:10]}/frontal/{name[-6:-4]}.jpg"
  expected_names = [os.path.relpath(p, root) for p in expected.paths]
  got = [(sources[a], sources[b], s, f) for a, b, s, f in
         zip(pairs.index_a, pairs.index_b, pairs.is_same, pairs.fold)]
  assert got == [(expected_names[a], expected_names[b], s, f) for a, b, s, f in
                 zip(expected.index_a, expected.index_b, expected.is_same, expected.fold)]
  order = [expected_names.index(s) for s in sources]
  np.testing.assert_allclose(pairs.landmarks, expected.landmarks[order], atol=1e-3)
  _close_to(images.load_images(pairs.paths, SIZE), [pixels[s] for s in sources])


def test_ijba_splits(exported, protocol_files):
  builder, _, pixels, out = exported
  n = builder.builder_config.num_test_identities
  splits = ijba.read_ijba(os.path.join(out, "ijba", "protocol"),
                          os.path.join(out, "ijba", "images"))
  assert len(splits) == 10
  for k, split in enumerate(splits):
    subjects = sorted(set(range(1, n + 1)) - {k * 2 + 1, k * 2 + 2})  # fold k held out
    np.testing.assert_array_equal(np.unique(split.template_subjects), subjects)
    assert len(split.templates) == 3 * len(subjects)
    assert len(split.tid1) == len(split.templates) * (len(split.templates) - 1) // 2
    assert split.genuine.sum() == 3 * len(subjects)
    np.testing.assert_array_equal(split.boxes, np.tile([0, 0, SIZE, SIZE], (len(split.paths), 1)))
    # Template images: 5 photos; 7 photos; 2 photos and a 13-frame video.
    for t in split.templates[:3]:
      media = split.media_ids[split.template_ids == t]
      counts = sorted(np.unique(media, return_counts=True)[1])
      assert counts in ([1] * 5, [1] * 7, [1, 1, 13])
    # Every image is one of its subject's test images; templates verify perfectly when
    # embeddings are the subject.
    sources = [_source(protocol_files, p) for p in split.paths]
    np.testing.assert_array_equal([_subject(s) for s in sources], split.subject_ids)
    embeddings = np.eye(n + 1)[split.subject_ids]
    result = templates.verify_split(embeddings, split.template_ids, split.media_ids,
                                    split.tid1, split.tid2, split.genuine)
    assert all(tar == 1.0 for tar in result.values())
  _close_to(images.load_images(splits[-1].paths, SIZE), [pixels[s] for s in sources])


def test_megaface_lists(exported, protocol_files):
  builder, _, pixels, out = exported
  n = builder.builder_config.num_test_identities
  folder = os.path.join(out, "megaface")
  probes = megaface.read_probe_list(os.path.join(folder, "facescrub_features_list.json"),
                                    os.path.join(folder, "facescrub"))
  distractors = megaface.read_distractor_list(
      os.path.join(folder, f"megaface_features_list.json_{n // 2 * 28}_1"),
      os.path.join(folder, "megaface"))
  probe_sources = [_source(protocol_files, p) for p in probes.paths]
  distractor_sources = [_source(protocol_files, p) for p in distractors]
  assert probes.names == [f"Person_{s:03d}" for s in range(1, n // 2 + 1)]
  np.testing.assert_array_equal(probes.labels + 1, [_subject(s) for s in probe_sources])
  assert np.bincount(probes.labels).tolist() == [14] * (n // 2)
  assert all(s.startswith("cfp/") for s in probe_sources)
  assert {_subject(s) for s in distractor_sources} == set(range(n // 2 + 1, n + 1))
  assert len(set(probe_sources + distractor_sources)) == len(probes.paths) + len(distractors)
  # The lists feed the rank-1 protocol: with subject embeddings every probe is found.
  unit = np.eye(n + 1, dtype=np.float32)
  result = identification.identify_with_distractors(
      unit[probes.labels + 1], probes.labels,
      unit[[_subject(s) for s in distractor_sources]])
  assert result.rank1 == 1.0
  _close_to(images.load_images(probes.paths[:14], SIZE), [pixels[s] for s in probe_sources[:14]])


def test_export_refuses_a_foreign_folder(exported, tmp_path):
  (tmp_path / "keep.txt").write_text("not an export")
  with pytest.raises(FileExistsError, match="not an earlier export"):
    export.export(exported[0], str(tmp_path))
  assert (tmp_path / "keep.txt").exists()


def test_command_line_with_png_bins_is_exact(exported, tmp_path):
  _, root, pixels, _ = exported
  data_dir = exported[0].data_dir.split(os.sep + "synthetic_faces" + os.sep)[0]
  export.main([f"--data_dir={data_dir}", "--builder_config=tiny",
               f"--out={tmp_path / 'cli'}", "--bin_format=png"])
  for protocol in cfp.PROTOCOLS:
    expected = cfp.read_cfp(os.path.join(root, "cfp"), protocol)
    pack = insightface_bin.read_bin(str(tmp_path / "cli" / f"cfp_{protocol.lower()}.bin"),
                                    SIZE)
    names = [os.path.relpath(p, root) for p in expected.paths]
    for ours, theirs in ((pack.pairs.index_a, expected.index_a),
                         (pack.pairs.index_b, expected.index_b)):
      np.testing.assert_array_equal(pack.images[ours], [pixels[names[i]] for i in theirs])
