"""Whether two face images show the same person, by an exported model and its card.

    python -m aprn_jax.compare --model=PATH.onnx IMAGE_A IMAGE_B

Both images are embedded as evaluation embeds them (`Model.embedder`); the decision is
verification's: same person when the squared L2 distance of the two unit embeddings (= 2 -
2 cos) is below the card's threshold (`threshold.squared_l2`, chosen by the export on the
run's CFP-FF or LFW pairs), i.e. when the cosine similarity is above `threshold.cosine`.
"""
import sys

from aprn_jax.evaluation import verification


def compare(model, image_a, image_b):
  """{cosine, squared_distance, threshold_cosine, threshold_squared_l2, same} of two files."""
  embedder = model.embedder(progress_every_s=None)
  a, b = embedder([image_a, image_b])
  distance = float(verification.squared_distances(a[None], b[None])[0])
  threshold = model.card["threshold"]
  return {"cosine": float(a @ b), "squared_distance": distance,
          "threshold_cosine": threshold["cosine"],
          "threshold_squared_l2": threshold["squared_l2"],
          "same": distance < threshold["squared_l2"]}


def main(argv):
  from absl import flags
  from aprn_jax import export
  f = flags.FLAGS
  try:
    if len(argv) != 3:
      raise ValueError(f"expected two image files after the flags, got {len(argv) - 1}: "
                       f"{argv[1:]}")
    model = export.load_model(f.model)
    result = compare(model, argv[1], argv[2])
  except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
    sys.exit(f"compare: {error}")
  decision = "same person" if result["same"] else "different people"
  print(f"cosine similarity {result['cosine']:.4f} (squared L2 distance "
        f"{result['squared_distance']:.4f}): {decision} (same when cosine > "
        f"{result['threshold_cosine']:.4f}, the threshold chosen on "
        f"{model.card['threshold']['pairs']} pairs)")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("model", None, "An exported model (python -m aprn_jax.export).")
  flags.mark_flags_as_required(["model"])


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
