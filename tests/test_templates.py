"""Template pooling and IJB-A TAR@FAR against hand computations."""
import numpy as np
import pytest

from aprn_jax.evaluation import templates


def test_pooling_averages_within_media_then_sums_media():
  # Template 7: media "v" (a video, two frames) and media "p" (a photo); template 3: media
  # "v" again (a different media of another template: pooled separately).
  embeddings = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)
  template_ids = [7, 7, 7, 3]
  media_ids = ["v", "v", "p", "v"]
  ids, features = templates.pool_templates(embeddings, template_ids, media_ids)
  np.testing.assert_array_equal(ids, [3, 7])
  # Template 7: mean of the video (0.5, 0.5, 0) + photo (0, 0, 1), normalised by sqrt(1.5);
  # a plain mean over the three images would point along (1, 1, 1) instead.
  np.testing.assert_allclose(features[1], np.array([0.5, 0.5, 1]) / np.sqrt(1.5), rtol=1e-6)
  np.testing.assert_allclose(features[0], [1, 0, 0])
  scores = templates.template_scores(ids, features, [7, 3], [3, 3])
  np.testing.assert_allclose(scores, [0.5 / np.sqrt(1.5), 1.0], rtol=1e-6)


def test_unknown_template_in_comparisons_raises():
  ids, features = templates.pool_templates(np.eye(2), [1, 2], [0, 0])
  with pytest.raises(ValueError, match="tid2: template 5"):
    templates.template_scores(ids, features, [1, 2], [2, 5])


def brute_force_tar(scores, genuine, target):
  best = 0.0
  for threshold in np.unique(scores):
    accepted = scores >= threshold
    if accepted[~genuine].mean() <= target:
      best = max(best, accepted[genuine].mean())
  return best


def test_split_tar_and_summary_match_brute_force():
  rng = np.random.default_rng(0)
  split_results, expected = [], []
  for _ in range(3):
    subjects = np.repeat(np.arange(20), 3)  # 60 templates, 3 per subject
    centres = rng.standard_normal((20, 8))
    num_images = rng.integers(1, 4, size=60)
    template_ids = np.repeat(np.arange(60), num_images)
    media_ids = rng.integers(0, 2, size=len(template_ids))
    embeddings = centres[subjects[template_ids]] + rng.standard_normal((len(template_ids), 8))
    tid1, tid2 = rng.integers(0, 60, 400), rng.integers(0, 60, 400)
    genuine = subjects[tid1] == subjects[tid2]
    fars = (0.1, 0.01)
    split_results.append(templates.verify_split(
        embeddings, template_ids, media_ids, tid1, tid2, genuine, fars))

    features = {}
    for t in range(60):
      media_sum = sum(embeddings[(template_ids == t) & (media_ids == m)].mean(axis=0)
                      for m in np.unique(media_ids[template_ids == t]))
      features[t] = media_sum / np.linalg.norm(media_sum)
    scores = np.array([features[a] @ features[b] for a, b in zip(tid1, tid2)])
    expected.append({far: brute_force_tar(scores, genuine, far) for far in fars})
    for far in fars:
      assert split_results[-1][far] == pytest.approx(expected[-1][far])
  summary = templates.summarize_splits(split_results)
  for far in (0.1, 0.01):
    tars = [e[far] for e in expected]
    assert summary[far] == pytest.approx((np.mean(tars), np.std(tars)))
