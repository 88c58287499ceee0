"""The paper's noise test (Table 12 discussion): does D look at its input?

One hundred images of uniform noise in [-1, 1] go through R' and D; the L1 between D's output
and the frontal mean face, per image, is reported as mean +- std. A D trained only towards the
mean face (the L2_Reg variant) emits the mean face for anything (paper: 0.83 +- 0.13); a D
trained by the adversarial loss regresses landmarks and lands far from it (4.12 +- 0.67). Our
L1 is per coordinate in the normalised [-1, 1] frame (the training losses' unit).
"""
import numpy as np


def noise_images(num_images, image_size, seed=0):
  """float32 (num_images, S, S, 3), uniform in [-1, 1]; the same for the same seed."""
  rng = np.random.default_rng(seed)
  return rng.uniform(-1.0, 1.0, (num_images, image_size, image_size, 3)).astype(np.float32)


def noise_test(predict, mean_face, *, num_images=100, image_size, seed=0):
  """{num_images, l1_mean, l1_std} of predict(noise) against `mean_face` (M, 2).

  `predict`: images (N, S, S, 3) -> landmarks (N, M, 2). std has ddof=0.
  """
  predicted = np.asarray(predict(noise_images(num_images, image_size, seed)), np.float64)
  per_image = np.abs(predicted - np.asarray(mean_face, np.float64)).mean(axis=(-1, -2))
  return {"num_images": int(num_images), "l1_mean": float(per_image.mean()),
          "l1_std": float(per_image.std())}
