"""The frontal mean face: selection by yaw, the 2-D yaw estimate, storage."""
import numpy as np
import pytest

from input_pipeline import landmarks as landmarks_lib
from input_pipeline import mean_face
from input_pipeline.synthetic import faces, renderer

PARTS = landmarks_lib.IBUG51_PARTS


def model_face(height=6.6):
  """A 3-D 51-point face (x right, y down, z away from the camera) whose nose tip sits
  height / NOSE_RATIO in front of the eyes; every other point lies in the eye plane."""
  rng = np.random.RandomState(0)
  points = np.zeros((51, 3))
  points[:, :2] = rng.uniform(-1, 1, (51, 2))
  points[list(PARTS["right_eye"]), :2] = [-3.2, 0.0] + rng.uniform(-0.5, 0.5, (6, 2))
  points[list(PARTS["left_eye"]), :2] = [3.2, 0.0] + rng.uniform(-0.5, 0.5, (6, 2))
  lips = list(PARTS["outer_lips"]) + list(PARTS["inner_lips"])
  points[lips, :2] = [0.0, height] + rng.uniform(-1.0, 1.0, (20, 2))
  # Symmetric eyes and lips, so the eye midpoint and mouth centre sit on the midline.
  points[list(PARTS["left_eye"]), :2] = points[list(PARTS["right_eye"]), :2] * [-1, 1]
  points[lips, 0] -= points[lips, 0].mean()
  eye_level = points[list(PARTS["right_eye"]), 1].mean()
  points[lips, 1] += eye_level + height - points[lips, 1].mean()
  tip = PARTS["nose_bridge"][-1]
  points[tip] = [0.0, 3.0, -height / mean_face.NOSE_RATIO]
  return points


def project(points, yaw, roll=0.0, scale=5.0, shift=(40.0, 50.0)):
  """Orthographic projection after a yaw (nose to the image's right for yaw > 0) and an
  in-plane roll, written out independently of the renderer."""
  y, r = np.deg2rad(yaw), np.deg2rad(roll)
  x = points[:, 0] * np.cos(y) - points[:, 2] * np.sin(y)
  xy = np.stack([x, points[:, 1]], -1)
  rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
  return xy @ rot.T * scale + shift


def test_yaw_estimate_is_exact_on_a_face_with_the_assumed_proportions():
  face = model_face()
  yaws = np.array([-80.0, -45.0, -10.0, 0.0, 5.0, 30.0, 70.0])
  points = np.stack([project(face, yaw, roll=r) for yaw, r in zip(yaws, [0, 10, -20, 5, 0,
                                                                          15, -8])])
  np.testing.assert_allclose(mean_face.estimate_yaw(points), yaws, atol=1e-6)


def test_yaw_estimate_accepts_68_points():
  points51 = project(model_face(), 25.0)[None]
  points68 = np.zeros((1, 68, 2))
  points68[:, 17:] = points51
  np.testing.assert_allclose(mean_face.estimate_yaw(points68),
                             mean_face.estimate_yaw(points51))


def test_yaw_estimate_tracks_the_synthetic_faces():
  rng = np.random.default_rng(0)
  errors, signs = [], []
  for seed in range(12):
    head = faces.build_head(faces.sample_identity(seed))
    for yaw in (-45.0, -20.0, 0.0, 20.0, 45.0):
      points, _ = renderer.project_landmarks(head, renderer.sample_view(rng, yaw), 64)
      estimate = mean_face.estimate_yaw(points[None])[0]
      errors.append(estimate - yaw)
      signs.append(yaw == 0 or np.sign(estimate) == np.sign(yaw))
  assert np.mean(np.abs(errors)) < 10.0
  assert np.all(signs)


def test_compute_averages_the_frontal_images_only():
  rng = np.random.RandomState(1)
  points = rng.uniform(0, 64, (6, 51, 2))
  yaw = np.array([0.0, 9.9, -9.9, 10.0, -45.0, 3.0])
  expected = (points[0] + points[1] + points[2] + points[5]) / 4
  result = mean_face.compute(points, yaw)
  assert result.dtype == np.float32 and result.shape == (51, 2)
  np.testing.assert_allclose(result, expected, rtol=1e-6)
  np.testing.assert_allclose(mean_face.compute(points, yaw, max_yaw=50.0),
                             points.mean(0), rtol=1e-6)


def test_compute_without_yaw_uses_the_estimate():
  face = model_face()
  points = np.stack([project(face, yaw, shift=(40.0 + yaw, 50.0))
                     for yaw in (-60.0, -5.0, 4.0, 40.0)])
  np.testing.assert_allclose(mean_face.compute(points), points[1:3].mean(0), rtol=1e-6)


def test_compute_rejects_bad_input():
  with pytest.raises(ValueError, match="no image has"):
    mean_face.compute(np.zeros((2, 51, 2)), np.array([30.0, -40.0]))
  with pytest.raises(ValueError, match="shape"):
    mean_face.compute(np.zeros((2, 51)), np.zeros(2))
  with pytest.raises(ValueError, match="yaw must have shape"):
    mean_face.compute(np.zeros((2, 51, 2)), np.zeros(3))
  with pytest.raises(ValueError, match="no landmark scheme has 50"):
    mean_face.estimate_yaw(np.zeros((2, 50, 2)))


def test_write_and_read_round_trip(tmp_path):
  mean = np.random.RandomState(2).uniform(0, 72, (51, 2)).astype(np.float32)
  path = mean_face.write(tmp_path / "data", mean)
  assert path.endswith(mean_face.FILE_NAME)
  np.testing.assert_array_equal(mean_face.read(tmp_path / "data"), mean)
  with pytest.raises(FileNotFoundError, match="no mean face at"):
    mean_face.read(tmp_path / "missing")
  np.save(tmp_path / mean_face.FILE_NAME, np.zeros((51, 3)))
  with pytest.raises(ValueError, match="float32"):
    mean_face.read(tmp_path)
