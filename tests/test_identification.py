"""MegaFace rank-1/CMC against brute force and hand cases; Multi-PIE per-pose rank-1."""
import numpy as np
import pytest

from aprn_jax.evaluation import identification


def unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force_ranks(probes, labels, distractors):
  """Rank of the gallery image for every (probe, gallery) pair, straight from the protocol."""
  probes, distractors = probes.astype(np.float64), distractors.astype(np.float64)
  ranks = []
  for p in range(len(probes)):
    distractor_sims = distractors @ probes[p]
    for g in range(len(probes)):
      if g != p and labels[g] == labels[p]:
        ranks.append(1 + np.sum(distractor_sims >= probes[p] @ probes[g]))
  return np.array(ranks)


@pytest.fixture(name="megaface_like")
def fixture_megaface_like():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(15), rng.integers(1, 9, size=15))  # some with one image
  centres = rng.standard_normal((15, 32))
  probes = unit(centres[labels] + 1.2 * rng.standard_normal((len(labels), 32)))
  distractors = unit(rng.standard_normal((1003, 32)))
  return probes, labels, distractors


def test_rank1_and_cmc_match_brute_force(megaface_like):
  probes, labels, distractors = megaface_like
  result = identification.identify_with_distractors(probes, labels, distractors, max_rank=10)
  ranks = brute_force_ranks(probes, labels, distractors)
  assert result.num_pairs == len(ranks)
  np.testing.assert_allclose(result.cmc, [np.mean(ranks <= r) for r in range(1, 11)])
  assert result.rank1 == np.mean(ranks == 1)
  assert 0.2 < result.rank1 < 0.9  # a case where both outcomes occur
  assert np.all(np.diff(result.cmc) >= 0)


def test_chunking_gives_identical_results(megaface_like):
  probes, labels, distractors = megaface_like
  top = {chunk: identification.distractor_top_similarities(probes, distractors, 10, chunk)
         for chunk in (3, 64, 250, 1003, 5000)}  # 3, 64 and 250 do not divide 1003
  for chunk, values in top.items():
    np.testing.assert_array_equal(values, top[1003], err_msg=f"chunk_size={chunk}")
  exact = -np.sort(-(probes.astype(np.float64) @ distractors.T.astype(np.float64)), axis=1)
  np.testing.assert_allclose(top[1003], exact[:, :10], rtol=0, atol=1e-12)
  results = [identification.identify_with_distractors(probes, labels, distractors,
                                                      chunk_size=chunk)
             for chunk in (7, 1003)]
  np.testing.assert_array_equal(results[0].cmc, results[1].cmc)


def test_memmap_distractors(megaface_like, tmp_path):
  probes, labels, distractors = megaface_like
  stored = np.lib.format.open_memmap(tmp_path / "d.npy", "w+", np.float32, distractors.shape)
  stored[:] = distractors
  from_disk = identification.identify_with_distractors(probes, labels, stored, chunk_size=100)
  in_memory = identification.identify_with_distractors(probes, labels, distractors)
  np.testing.assert_array_equal(from_disk.cmc, in_memory.cmc)


def test_hand_built_ties_count_against_the_probe():
  h = 0.5
  probes = np.array([[1, 0, 0, 0], [h, h, h, h],  # identity 0: similarity 0.5
                     [0, 0, 0, 1], [0, 0, 1, 0],  # identity 1: similarity 0
                     [-1, 0, 0, 0], [-h, -h, -h, -h]], np.float32)  # identity 2: 0.5
  labels = np.array([0, 0, 1, 1, 2, 2])
  distractors = np.array([[h, h, h, h], [0, 1, 0, 0]], np.float32)
  # (probe, gallery) -> distractors with similarity >= the genuine one:
  # (a, b): 0.5 >= 0.5 -> rank 2; (b, a): 1 and 0.5 -> rank 3; identity 1 both ways: 0.5 and
  # a tie at 0 -> rank 3; identity 2 both ways: none -> rank 1.
  result = identification.identify_with_distractors(probes, labels, distractors, max_rank=4)
  np.testing.assert_allclose(result.cmc, [2 / 6, 3 / 6, 1, 1])
  assert result.rank1 == 2 / 6
  # Fewer distractors than max_rank: the tail of the CMC is 1.
  one = identification.identify_with_distractors(probes, labels, distractors[:1], max_rank=3)
  np.testing.assert_allclose(one.cmc, [2 / 6, 1, 1])  # ranks 2, 2, 2, 2, 1, 1


def test_identification_bad_inputs():
  probes = unit(np.eye(3))
  with pytest.raises(ValueError, match="no identity has 2"):
    identification.identify_with_distractors(probes, [0, 1, 2], probes)
  with pytest.raises(ValueError, match=r"distractors\[0:3\].*L2-normalised"):
    identification.identify_with_distractors(probes, [0, 0, 1], 2 * probes)


def test_rank1_by_pose_hand_built():
  gallery = np.eye(3, dtype=np.float32)  # subjects 10, 20, 30
  gallery_ids = np.array([10, 20, 30])
  c, s = np.cos(0.3), np.sin(0.3)
  probes = np.array([[1, 0, 0], [c, s, 0], [0, 1, 0],  # yaw 0: all right
                     [s, c, 0], [0, s, c], [c, 0, s],  # yaw 45: subject 10 is nearest 20
                     [0, c, s]], np.float32)  # yaw 90: right
  probe_ids = np.array([10, 10, 20, 10, 30, 30, 20])
  yaws = np.array([0, 0, 0, 45, 45, 45, 90])
  result = identification.rank1_by_pose(gallery, gallery_ids, probes, probe_ids, yaws)
  assert result.per_yaw == {0: 1.0, 45: pytest.approx(1 / 3), 90: 1.0}
  assert result.counts == {0: 3, 45: 3, 90: 1}
  assert result.overall == pytest.approx(5 / 7)
  with pytest.raises(ValueError, match="subject 40 has no gallery image"):
    identification.rank1_by_pose(gallery, gallery_ids, probes[:1], [40], [0])
