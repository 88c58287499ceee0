"""Deployable exports of a trained recognizer, verified before they are reported done.

    python -m aprn_jax.export --workdir=DIR [--phase=aprn|baseline] [--step=N]
        --format=onnx|stablehlo [--out=PATH] [--nchw] [--dtype=float32|bfloat16]

What is exported: R's backbone alone (`inference.backbone_variables` + `Recognizer.embed`),
restored from the phase's orbax checkpoint (default: the last phase saved, its last step)
without the discriminator or the identity head, BatchNorm in inference mode (running
statistics), float32 unless --dtype says otherwise (a bfloat16-trained model exports in
float32: its parameters are float32 already). The graph holds plain convolutions and max-pools
(`recognizer_at`: config.model.layer_forms='portable'), so one file serves CPUs and
accelerators.
- onnx: through jax2onnx, opset 23, a dynamic batch dimension `batch`; input `images`,
  float32 (batch, S, S, 3) NHWC, or with --nchw (batch, 3, S, S) as insightface's `data`;
  output `embedding`, float32 (batch, D), L2-normalised. onnxruntime's CPU provider has no
  bfloat16 convolution, so a bfloat16 ONNX model could not be verified and is refused.
- stablehlo: `jax.export` with a symbolic batch dimension, lowered for CPU, CUDA and TPU;
  the file is `Exported.serialize()`, read back with `jax.export.deserialize(bytes).call`.
The input is evaluation's network input (S = config.data.image_size): the image file decoded
as RGB, its centred square resized to the data set's stored size, the centred
config.data.crop_size square of that resized to S, scaled to [-1, 1] (x / 127.5 - 1).
Evaluation (and `embed`, `compare`) adds the flip: l2_normalize(model(x) + model(mirrored x)).

Beside the model, `<model>.json` (the card) says all of that, with the embedding size, the
run's config, phase and checkpoint step, the parameter counts, the verification figures and
the threshold `compare` decides with:
- threshold: chosen on the CFP-FF pairs of the run's benchmarks (config.eval.paths.cfp, or
  the synthetic faces' own; else LFW's pairs, paths.lfw + lfw_images), embedded by the
  exported model as evaluation embeds them. As in `evaluation.verification`, a pair is the
  same person when the squared L2 distance of its unit embeddings (= 2 - 2 cos) is below the
  threshold; the card's threshold is the grid value with the best accuracy over all those
  pairs (`best_threshold_accuracy`), and its `ten_fold_accuracy` the held-out estimate (each
  fold's threshold chosen on the other nine, `fold_thresholds`). In cosine terms: same when
  cos > 1 - threshold / 2 (`cosine`).
- verification: the first VERIFY_IMAGES images of those pairs (the data set's own test
  images for the synthetic faces), embedded by the written file (onnxruntime, or the
  deserialised StableHLO) in batches of 1, 3 and all of them, against JAX's embedding of the
  same network inputs at the exported dtype. Any row with cosine below BOUNDS' or a component
  differing by more than its bound stops the export (exit status 1) naming the image, batch
  size and difference; the model file is then removed and no card is written.
"""
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aprn_jax import checkpoints, evaluate, inference, models, run, saved_config, trainer
from aprn_jax.evaluation import embeddings as embeddings_lib
from aprn_jax.evaluation import verification
from aprn_jax.evaluation.embedder import Embedder, network_inputs
from input_pipeline import files
from input_pipeline.readers import cfp, lfw
from input_pipeline.readers import images as images_lib

FORMATS = {"onnx": ".onnx", "stablehlo": ".stablehlo"}
INPUT_NAME, OUTPUT_NAME = "images", "embedding"
BATCH = "batch"  # the name of the dynamic batch dimension in both formats
PLATFORMS = ("cpu", "cuda", "tpu")
OPSET = 23
# (lowest cosine, largest absolute difference of one component) between an exported model's
# unit embedding and JAX's, by dtype. float32 differs by rounding only: components by at most
# 1e-6 (the tiny model) and 3.5e-7 (ResNet-101 at 224, benchmarks/onnx_inference.py);
# bfloat16 rounds every activation to 8 bits, so two compilations of one bfloat16 network
# differ by up to 5e-3 (cosine 0.99993, the tiny model).
BOUNDS = {"float32": (0.99999, 1e-3), "bfloat16": (0.999, 3e-2)}
VERIFY_IMAGES = 32
# The ONNX operators whose inputs are the network's parameters (by input index), and
# BatchNormalization's running statistics, each an initializer or one seen through VIEW_OPS
# (jax2onnx stores kernels in JAX's HWIO layout and transposes them in the graph); any other
# initializer is a constant of the graph (a shape, a pad, the max-pool's -inf, an epsilon).
PARAMETER_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
                    "BatchNormalization": (1, 2)}
STATISTICS_INPUTS = {"BatchNormalization": (3, 4)}
VIEW_OPS = ("Transpose", "Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze")
INSTALL_HINT = "pip install --no-deps -r requirements-export.txt"


def _package(name):
  """The optional extra's module `name`, or an error that says how to install it."""
  try:
    return importlib.import_module(name)
  except ImportError:
    raise ModuleNotFoundError(f"{name} is not installed; run `{INSTALL_HINT}`") from None


class VerificationError(RuntimeError):
  """The exported model's embeddings differ from JAX's by more than BOUNDS allow."""


def load_config(workdir):
  """The run's config from <workdir>/config.json, with the fields added since it was written
  (`saved_config.complete`)."""
  path = os.path.join(workdir, "config.json")
  if not files.isfile(path):
    raise FileNotFoundError(f"--workdir={workdir} holds no config.json: not a training "
                            f"workdir (main.py writes it when training starts)")
  with files.open(path) as f:
    saved = json.load(f)
  return ml_collections.ConfigDict(saved_config.complete(saved))


@dataclasses.dataclass
class Restored:
  """A phase's recognizer as its checkpoint holds it."""
  config: ml_collections.ConfigDict
  data: object                    # `data.DataInfo`: stored_size, protocol_root, ...
  phase: trainer.PhaseCheckpoints
  step: int
  variables: dict                 # R's variables (backbone and identity head)

  def embedder(self, **kwargs):
    """Evaluation's embedder with this recognizer in JAX (its trained dtype)."""
    return Embedder(self.config, self.data.stored_size, self.phase.recognizer, self.variables,
                    **kwargs)


def restore(workdir, phase=None, step=None):
  """The recognizer of `phase` (default: the last one saved) at checkpoint `step` (default:
  the last), errors naming --workdir, --phase or --step when it is not there."""
  config = load_config(workdir)
  saved = trainer.saved_phases(workdir)
  if phase is None:
    phase = saved[-1]
  elif phase not in saved:
    raise FileNotFoundError(f"--phase={phase}: {workdir} has no {phase} checkpoints (it has "
                            f"{', '.join(saved)})")
  data = run.load_data(config, workdir, "eval")
  checkpointed = trainer.PhaseCheckpoints(config, data, workdir, phase)
  steps = checkpoints.manager(checkpointed.checkpoint_dir(), read_only=True).all_steps()
  if step is not None and step not in steps:
    raise FileNotFoundError(f"--step={step}: the {phase} checkpoints in "
                            f"{checkpointed.checkpoint_dir()} are at steps {sorted(steps)}")
  variables, step = checkpointed.saved_recognizer(step)
  return Restored(config, data, checkpointed, int(step), jax.device_get(variables))


def recognizer_at(config, recognizer, dtype):
  """`recognizer` as it is exported: its backbone computing in `dtype`, with the portable
  layer forms (models/layers.py: the same computation on every runtime) and no BatchNorm axis
  name (a pmap's axis means nothing to a deployed graph); same parameters."""
  model = ml_collections.ConfigDict(config.model.to_dict())
  model.update(dtype=dtype, layer_forms="portable")
  return models.Recognizer(backbone=models.make_backbone(model), head=recognizer.head)


def embedding_fn(recognizer, variables):
  """images (B, S, S, 3) float32 in [-1, 1] -> (B, D) unit embeddings, the backbone alone:
  only the backbone's variables are in the closure, so no D or head parameter can be."""
  backbone = inference.backbone_variables(variables)
  return lambda images: recognizer.apply(backbone, images, method=models.Recognizer.embed)


@contextlib.contextmanager
def _quiet(loggers):
  """Only errors from these Python loggers: jax2onnx warns about each of its plugins for
  libraries this project does not install (equinox, dm-pix) and onnx_ir about every graph."""
  saved = {name: logging.getLogger(name).level for name in loggers}
  for name in loggers:
    logging.getLogger(name).setLevel(logging.ERROR)
  try:
    yield
  finally:
    for name, level in saved.items():
      logging.getLogger(name).setLevel(level)


def onnx_model(fn, image_size, nchw=False):
  """The ONNX ModelProto of `fn` (see the module docstring for its input and output)."""
  jax2onnx = _package("jax2onnx")
  with _quiet(("jax2onnx", "onnx_ir")):
    model = jax2onnx.to_onnx(fn, [(BATCH, image_size, image_size, 3)],
                             model_name="aprn_recognizer", opset=OPSET,
                             input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                             inputs_as_nchw=[0] if nchw else None)
  # jax2onnx annotates activations it moved to NCHW with their NHWC shapes, which
  # onnxruntime warns about for every layer; without the annotations it infers the shapes.
  del model.graph.value_info[:]
  return model


def stablehlo_bytes(fn, image_size):
  """`jax.export` of `fn` with a symbolic batch dimension, serialised."""
  shape = jax.export.symbolic_shape(f"{BATCH}, {image_size}, {image_size}, 3")
  exported = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(
      jax.ShapeDtypeStruct(shape, jnp.float32))
  return exported.serialize()


def onnx_parameter_counts(model):
  """{parameters, statistics, constants}: scalars of the ONNX initializers that are layer
  parameters, BatchNorm running statistics, and anything else (shapes, pads, epsilons)."""
  numpy_helper = _package("onnx").numpy_helper
  producer = {name: node for node in model.graph.node for name in node.output}

  def source(name):  # the tensor a layer input is a view of
    while name in producer and producer[name].op_type in VIEW_OPS:
      name = producer[name].input[0]
    return name

  role = {}
  for node in model.graph.node:
    for roles, kind in ((PARAMETER_INPUTS, "parameters"), (STATISTICS_INPUTS, "statistics")):
      for index in roles.get(node.op_type, ()):
        if index < len(node.input):
          role[source(node.input[index])] = kind
  counts = {"parameters": 0, "statistics": 0, "constants": 0}
  for initializer in model.graph.initializer:
    counts[role.get(initializer.name, "constants")] += int(
        numpy_helper.to_array(initializer).size)
  return counts


def onnx_embed_fn(path, nchw):
  """NHWC float32 images -> embeddings by onnxruntime on the ONNX file at `path`."""
  onnxruntime = _package("onnxruntime")
  # onnxruntime opens local files itself; a model elsewhere (gs://...) goes as its bytes.
  model = files.local_path(path) if files.is_local(path) else files.read_bytes(path)
  session = onnxruntime.InferenceSession(model, providers=onnxruntime.get_available_providers())

  def embed(images):
    images = np.asarray(images, np.float32)
    if nchw:
      images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]

  return embed


def stablehlo_embed_fn(path):
  """NHWC float32 images -> embeddings by the deserialised StableHLO file at `path`."""
  exported = jax.export.deserialize(bytearray(files.read_bytes(path)))
  call = jax.jit(exported.call)
  return lambda images: np.asarray(call(np.asarray(images, np.float32)))


@dataclasses.dataclass
class Model:
  """An exported model read back: `embed` (NHWC network inputs -> unit embeddings) and its
  card."""
  path: str
  card: dict
  embed: object

  def embedder(self, **kwargs):
    """Evaluation's embedder (files -> decoded, cropped, flipped embeddings) on this model."""
    config = ml_collections.ConfigDict(self.card["source"]["config"])
    return Embedder(config, self.card["preprocessing"]["stored_size"], embed_fn=self.embed,
                    **kwargs)


def _runtime(path, fmt, layout):
  return onnx_embed_fn(path, layout == "NCHW") if fmt == "onnx" else stablehlo_embed_fn(path)


def load_model(path, option="--model"):
  """The exported model at `path` with the card `python -m aprn_jax.export` wrote beside it."""
  card_path = path + ".json"
  if not files.isfile(path):
    raise FileNotFoundError(f"{option}={path}: no such file")
  if not files.isfile(card_path):
    raise FileNotFoundError(f"{option}={path}: no model card {card_path} beside it "
                            f"(python -m aprn_jax.export writes both)")
  with files.open(card_path) as f:
    card = json.load(f)
  return Model(path, card, _runtime(path, card["format"], card["input"]["layout"]))


def verify(embed, reference, inputs, dtype, batch_sizes, names):
  """{min_cosine, max_abs_difference, ...} of `embed` against `reference` ((N, D) JAX
  embeddings of `inputs`), the inputs fed in batches of each size; a VerificationError naming
  the worst image (names[i]) and batch size when a bound of BOUNDS[dtype] is broken."""
  min_cosine, max_abs = BOUNDS[dtype]
  lowest, largest = (np.inf, None, None), (-np.inf, None, None)  # (value, batch size, image)
  for size in batch_sizes:
    out = np.concatenate([np.asarray(embed(inputs[i:i + size]), np.float32)
                          for i in range(0, len(inputs), size)])
    if out.shape != reference.shape:
      raise VerificationError(f"batch size {size}: the exported model returned embeddings "
                              f"of shape {out.shape}, JAX {reference.shape}")
    cosine = np.sum(embeddings_lib.l2_normalize(out) * embeddings_lib.l2_normalize(reference),
                    axis=-1)
    difference = np.max(np.abs(out - reference), axis=-1)
    cosine = np.where(np.isfinite(cosine), cosine, -np.inf)  # NaN or inf: the worst
    difference = np.where(np.isfinite(difference), difference, np.inf)
    i, j = int(np.argmin(cosine)), int(np.argmax(difference))
    if cosine[i] < lowest[0]:
      lowest = (float(cosine[i]), size, i)
    if difference[j] > largest[0]:
      largest = (float(difference[j]), size, j)
  if lowest[0] < min_cosine or largest[0] > max_abs:
    raise VerificationError(
        f"the exported model's embeddings differ from JAX's ({dtype}): lowest cosine "
        f"{lowest[0]:.7f} (bound >= {min_cosine}) on {names[lowest[2]]} at batch size "
        f"{lowest[1]}; largest absolute difference {largest[0]:.3g} (bound <= {max_abs}) on "
        f"{names[largest[2]]} at batch size {largest[1]}")
  return {"images": len(inputs), "batch_sizes": list(batch_sizes),
          "min_cosine": lowest[0], "max_abs_difference": largest[0],
          "bounds": {"min_cosine": min_cosine, "max_abs_difference": max_abs}}


def threshold_pairs(config, data):
  """(benchmark name, protocol file, `VerificationPairs`) the threshold is chosen on."""
  paths = evaluate.benchmark_paths(config, data)
  if paths["cfp"]:
    return "cfp_ff", paths["cfp"], cfp.read_cfp(paths["cfp"], "FF")
  if paths["lfw"] and paths["lfw_images"]:
    return "lfw", paths["lfw"], lfw.read_lfw(paths["lfw"], paths["lfw_images"])
  raise ValueError("export chooses compare's threshold on CFP-FF or LFW pairs, but "
                   "config.eval.paths.cfp and config.eval.paths.lfw (+ lfw_images) of the "
                   "run's config.json are empty and the data set has no files of its own; "
                   "set one of them there (eval fields may change in a workdir)")


def choose_threshold(embedder, name, path, pairs):
  """The card's threshold (see the module docstring) from the pairs embedded by `embedder`."""
  emb = embedder(pairs.paths)
  distances = verification.squared_distances(emb[pairs.index_a], emb[pairs.index_b])
  accuracy, threshold = verification.best_threshold_accuracy(distances, pairs.is_same)
  folds = verification.evaluate_distances(distances, pairs.is_same, pairs.fold)
  return {
      "squared_l2": threshold, "cosine": 1.0 - threshold / 2.0,
      "rule": "same person when the squared L2 distance of the unit embeddings is below "
              "squared_l2, i.e. when their cosine similarity is above cosine",
      "pairs": name, "file": path, "num_pairs": int(len(distances)),
      "accuracy_at_threshold": accuracy, "ten_fold_accuracy": folds.accuracy,
      "fold_thresholds": folds.fold_thresholds.tolist(),
  }


def default_out(workdir, phase, step, fmt, nchw, dtype):
  tags = ("_nchw" if nchw else "") + ("" if dtype == "float32" else f"_{dtype}")
  return os.path.join(workdir, "export", f"{phase}_step{step}{tags}{FORMATS[fmt]}")


def _card(restored, fmt, dtype, nchw, out, parameters, figures, threshold):
  config = restored.config
  size, dim = config.data.image_size, config.model.embedding_dim
  return {
      "format": fmt, "model": os.path.basename(out),
      "input": {"name": INPUT_NAME, "layout": "NCHW" if nchw else "NHWC",
                "shape": [BATCH, 3, size, size] if nchw else [BATCH, size, size, 3],
                "dtype": "float32", "range": [-1.0, 1.0],
                "normalisation": "RGB, x / 127.5 - 1 of the uint8 pixels"},
      "output": {"name": OUTPUT_NAME, "shape": [BATCH, dim], "size": dim,
                 "l2_normalised": True},
      "preprocessing": {
          "stored_size": restored.data.stored_size, "crop_size": config.data.crop_size,
          "image_size": size, "flip": bool(config.eval.flip),
          "steps": [
              "decode the file as RGB (Pillow), cut its centred square and resize that to "
              "stored_size x stored_size (bilinear, antialiased when shrinking)",
              "cut the centred crop_size square (offset (stored_size - crop_size) // 2) and, "
              "when image_size differs, resize it to image_size (antialiased bilinear)",
              "scale to [-1, 1]: x / 127.5 - 1",
              "flip: l2_normalize(model(x) + model(x mirrored left-right)); otherwise model(x)",
          ]},
      "threshold": threshold,
      "parameters": parameters,
      "verification": figures,
      "source": {"workdir": files.abspath(restored.phase.dir), "phase": restored.phase.name,
                 "step": restored.step, "trained_dtype": config.model.get("dtype", "float32"),
                 "dtype": dtype, "config": json.loads(config.to_json())},
  }


def export(workdir, fmt, phase=None, step=None, out=None, nchw=False, dtype="float32"):
  """Writes the verified model and its card (see the module docstring); returns the card."""
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}; choose one of {tuple(FORMATS)}")
  if dtype not in BOUNDS:
    raise ValueError(f"--dtype={dtype!r}; choose one of {tuple(BOUNDS)}")
  if fmt == "onnx" and dtype != "float32":
    raise ValueError(f"--dtype={dtype} with --format=onnx: onnxruntime's CPU provider has no "
                     f"{dtype} convolution, so the model could not be verified; export "
                     f"float32 (the default) or --format=stablehlo")
  if nchw and fmt != "onnx":
    raise ValueError("--nchw is for --format=onnx (insightface's NCHW `data` input)")
  if out is not None and not files.isdir(os.path.dirname(files.abspath(out))):
    raise FileNotFoundError(f"--out={out}: the folder {os.path.dirname(files.abspath(out))} "
                            f"does not exist")
  restored = restore(workdir, phase, step)
  config = restored.config
  name, pairs_file, pairs = threshold_pairs(config, restored.data)
  out = out or default_out(workdir, restored.phase.name, restored.step, fmt, nchw, dtype)
  files.makedirs(os.path.dirname(files.abspath(out)), exist_ok=True)

  recognizer = recognizer_at(config, restored.phase.recognizer, dtype)
  fn = embedding_fn(recognizer, restored.variables)
  names = pairs.paths[:VERIFY_IMAGES]
  inputs = network_inputs(images_lib.load_images(names, restored.data.stored_size),
                          config.data.crop_size, config.data.image_size)
  reference = np.asarray(jax.jit(fn)(inputs))

  partial = out + ".partial"
  if fmt == "onnx":
    model = onnx_model(fn, config.data.image_size, nchw)
    with files.open(partial, "wb") as f:
      _package("onnx").save_model(model, f)
    parameters = onnx_parameter_counts(model)
    del model
  else:
    files.write_bytes(partial, stablehlo_bytes(fn, config.data.image_size))
    parameters = {"parameters": backbone_count(restored.variables, "params"),
                  "statistics": backbone_count(restored.variables, "batch_stats")}
  try:
    embed = _runtime(partial, fmt, "NCHW" if nchw else "NHWC")
    figures = verify(embed, reference, inputs, dtype, (1, 3, len(inputs)), names)
  except VerificationError:
    files.remove(partial)
    raise
  trained_dtype = config.model.get("dtype", "float32")
  if trained_dtype != dtype:  # how far the export is from the network as trained
    trained = embedding_fn(restored.phase.recognizer, restored.variables)
    figures[f"min_cosine_to_{trained_dtype}"] = float(np.min(np.sum(
        np.asarray(jax.jit(trained)(inputs)) * reference, axis=-1)))
  threshold = choose_threshold(
      Embedder(config, restored.data.stored_size, embed_fn=embed, progress_every_s=None),
      name, pairs_file, pairs)
  files.replace(partial, out)
  card = _card(restored, fmt, dtype, nchw, out, parameters, figures, threshold)
  files.write_json(out + ".json", card)
  return card


def backbone_count(variables, kind):
  """Scalars of the backbone's `kind` ('params', 'batch_stats') in R's variables."""
  tree = inference.backbone_variables(variables).get(kind, {})
  return int(sum(np.size(leaf) for leaf in jax.tree.leaves(tree)))


def main(argv):
  from absl import flags
  from absl import logging as absl_logging
  del argv
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax logs every restore
  f = flags.FLAGS
  try:
    card = export(f.workdir, f.format, f.phase, f.step, f.out, f.nchw, f.dtype)
  except (VerificationError, ValueError, FileNotFoundError, ModuleNotFoundError) as error:
    sys.exit(f"export: {error}")
  check = card["verification"]
  print(f"{card['model']}: {card['format']} recognizer of {card['source']['phase']} step "
        f"{card['source']['step']}, {card['parameters']['parameters']:,} parameters; "
        f"matches JAX on {check['images']} images (lowest cosine {check['min_cosine']:.7f}, "
        f"largest difference {check['max_abs_difference']:.2g}); threshold: same when "
        f"cosine > {card['threshold']['cosine']:.4f} ({card['threshold']['pairs']}, accuracy "
        f"{card['threshold']['accuracy_at_threshold']:.2%}); card beside it (.json)")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("workdir", None, "A training workdir (main.py's --workdir).")
  flags.DEFINE_enum("phase", None, list(trainer.PHASES),
                    "The phase to export (default: the last one saved).")
  flags.DEFINE_integer("step", None, "The checkpoint step (default: the phase's last).")
  flags.DEFINE_enum("format", None, list(FORMATS), "onnx (onnxruntime) or stablehlo.")
  flags.DEFINE_string("out", None, "The model file (default: <workdir>/export/"
                      "<phase>_step<N>.onnx|.stablehlo); its card is <out>.json.")
  flags.DEFINE_bool("nchw", False, "ONNX input in NCHW layout (insightface's `data`).")
  flags.DEFINE_enum("dtype", "float32", list(BOUNDS), "The exported network's compute dtype.")
  flags.mark_flags_as_required(["workdir", "format"])


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
