"""Writes the synthetic test (or validation) identities as benchmark folders (CFP, Multi-PIE).

The same readers read them as the real benchmarks (`input_pipeline.readers.cfp`,
`input_pipeline.readers.multipie`). A prepared builder's trees are `<data_dir>/protocols/test`
(from its TFDS test split) and `<data_dir>/protocols/validation` (rendered when first asked
for: people of their own seed stream, for tuning). Under `root`:

- `cfp/Data/Images/NNN/frontal/01..10.jpg` (|yaw| <= 8) and `profile/01..04.jpg`
  (|yaw| >= 75), NNN = test identity + 1; `cfp/Protocol/Pair_list_F.txt` and
  `Pair_list_P.txt`: lines `<1-based index> ../Data/Images/NNN/<kind>/KK.jpg`, index
  (NNN - 1) * 10 + KK and (NNN - 1) * 4 + KK; `cfp/Protocol/Split/{FF,FP}/01..10/{same,diff}.txt`:
  lines `a,b` (FF: both index the F list; FP: a the F list, b the P list). Folds are
  identity-disjoint (fold f holds the f-th tenth of the identities) and hold 7 same and 7
  different pairs per identity (real CFP: 350 of each per fold of 50 identities); different
  pairs join two identities of the same fold. `cfp/landmarks.csv`: `Data/Images/...jpg,x1,y1,
  ...,x51,y51` per image (format of `readers.images`).
- `multipie/images/NNN/<yaw>_<light>.jpg`; `multipie/gallery.txt`: `images/NNN/0_0.jpg
  <subject>` (frontal, light 0), `multipie/probe.txt`: `images/NNN/<yaw>_<light>.jpg <subject>
  <yaw>` for the 13 yaw bins -90..90 and lights 1..L; subject = NNN as an integer.
- `summary.json`: counts; written last, so its presence means the tree is complete.

Images are JPEG, quality 95, at the stored size of the data set, like real CFP.
"""
import dataclasses
import json
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import files
from input_pipeline.synthetic import builder as builder_lib

SUMMARY = "summary.json"
PAIRS_PER_IDENTITY = 7  # real CFP: 350 pairs per fold of 50 identities
JPEG_QUALITY = 95
_CFP_NAME = re.compile(r"^cfp/Data/Images/(\d{3})/(frontal|profile)/(\d{2})\.jpg$")
_MULTIPIE_NAME = re.compile(r"^multipie/images/(\d{3})/(-?\d+)_(\d+)\.jpg$")


def rendered_examples(config, split="test"):
  """Yields {file_name, image, landmarks} of a protocol split, rendered (no TFDS build)."""
  for _, file_name, _, image, points, _ in builder_lib.generate(config, split):
    yield {"file_name": file_name, "image": image, "landmarks": points}


def write_protocols(root, config="tiny", seed=None, split="test"):
  """Renders the test (or validation) identities of `config` (a name or a config) and
  writes the tree. seed: overrides the config's seed. Deterministic; returns `root`."""
  config = builder_lib.resolve_config(config)
  if seed is not None:
    config = dataclasses.replace(config, seed=seed)
  return _write(root, rendered_examples(config, split), config.seed, split)


def root_of(builder, split="test"):
  """Where a prepared builder's protocol tree of `split` lives."""
  if split not in builder_lib.PROTOCOL_SPLITS:
    raise ValueError(f"the synthetic faces have protocol trees for {builder_lib.PROTOCOL_SPLITS}"
                     f", not {split!r}")
  return os.path.join(builder.data_dir, "protocols", split)


def is_complete(root):
  return files.isfile(os.path.join(root, SUMMARY))


def test_examples(builder):
  """Yields {file_name, image, landmarks} of a prepared builder's TFDS test split."""
  dataset = builder.as_dataset(split="test", shuffle_files=False)
  for ex in tfds.as_numpy(dataset):
    yield {"file_name": ex["file_name"].decode(), "image": ex["image"],
           "landmarks": ex["landmarks"]}


def ensure(builder, split="test", examples=None):
  """The protocol tree of `split` of a prepared SyntheticFaces builder, written once.

  The test tree comes from the TFDS test split, the validation tree from `examples` or a
  rendering; either holds the same files `write_protocols` writes for the builder's config.
  """
  root = root_of(builder, split)
  if is_complete(root):
    return root
  config = builder.builder_config
  if split == "validation" and not config.num_validation_identities:
    raise ValueError(f"synthetic_faces config {config.name!r} has no validation identities "
                     f"(num_validation_identities=0)")
  if examples is None:
    examples = test_examples(builder) if split == "test" else rendered_examples(config, split)
  return _write(root, examples, config.seed, split)


def _write(root, examples, seed, split="test"):
  """Writes images and lists into a temporary folder, then moves it to `root`."""
  root = files.abspath(root)
  partial = f"{root}.partial-{os.getpid()}"
  files.rmtree(partial, ignore_errors=True)
  cfp, multipie = {}, {}
  for example in examples:
    name = example["file_name"]
    cfp_match, multipie_match = _CFP_NAME.match(name), _MULTIPIE_NAME.match(name)
    if cfp_match:
      subject, kind, k = cfp_match.groups()
      cfp[(int(subject), kind, int(k))] = example["landmarks"]
    elif multipie_match:
      subject, yaw, light = map(int, multipie_match.groups())
      multipie[(subject, yaw, light)] = name
    else:
      raise ValueError(f"test example {name!r} is neither a CFP nor a Multi-PIE image")
    path = os.path.join(partial, name)
    files.makedirs(os.path.dirname(path), exist_ok=True)
    with files.open(path, "wb") as f:
      Image.fromarray(example["image"]).save(f, format="JPEG", quality=JPEG_QUALITY)
  summary = {**_write_cfp(os.path.join(partial, "cfp"), cfp, seed, split),
             **_write_multipie(os.path.join(partial, "multipie"), multipie)}
  with files.open(os.path.join(partial, SUMMARY), "w") as f:
    json.dump(summary, f, indent=1)
  if files.exists(root):
    files.rmtree(root)
  files.makedirs(os.path.dirname(root), exist_ok=True)
  files.replace(partial, root)
  return root


def _image(subject, kind, k):
  return f"Data/Images/{subject:03d}/{kind}/{k:02d}.jpg"


def _write_lines(path, lines):
  files.makedirs(os.path.dirname(path), exist_ok=True)
  with files.open(path, "w") as f:
    f.writelines(line + "\n" for line in lines)


def _write_cfp(folder, landmarks, seed, split):
  """Pair lists, splits and landmarks.csv for the CFP images {(subject, kind, k): points}."""
  subjects = sorted({s for s, _, _ in landmarks})
  per_kind = {"frontal": builder_lib.CFP_FRONTAL, "profile": builder_lib.CFP_PROFILE}
  expected = {(s, kind, k) for s in subjects for kind, n in per_kind.items()
              for k in range(1, n + 1)}
  if (set(landmarks) != expected or subjects != list(range(1, len(subjects) + 1))
      or len(subjects) % builder_lib.NUM_FOLDS):
    raise ValueError(f"CFP images must be subjects 1..N (N a multiple of "
                     f"{builder_lib.NUM_FOLDS}) with {per_kind} images each; got "
                     f"{len(landmarks)} images of {len(subjects)} subjects")
  protocol = os.path.join(folder, "Protocol")
  for kind, list_name in (("frontal", "F"), ("profile", "P")):
    n = per_kind[kind]
    _write_lines(os.path.join(protocol, f"Pair_list_{list_name}.txt"), [
        f"{(s - 1) * n + k} ../{_image(s, kind, k)}" for s in subjects for k in range(1, n + 1)])
  _write_lines(os.path.join(folder, "landmarks.csv"), [
      ",".join([_image(*key)] + [f"{v:.3f}" for v in np.ravel(landmarks[key])])
      for key in sorted(landmarks)])

  rng = np.random.default_rng([seed, 2, builder_lib.PROTOCOL_SPLITS.index(split) + 1])
  per_fold = len(subjects) // builder_lib.NUM_FOLDS
  n_f, n_p = per_kind["frontal"], per_kind["profile"]
  for protocol_name, n_b in (("FF", n_f), ("FP", n_p)):
    for fold in range(builder_lib.NUM_FOLDS):
      fold_subjects = subjects[fold * per_fold:(fold + 1) * per_fold]
      same, diff = _fold_pairs(rng, fold_subjects, n_f, n_b, symmetric=protocol_name == "FF")
      split = os.path.join(protocol, "Split", protocol_name, f"{fold + 1:02d}")
      _write_lines(os.path.join(split, "same.txt"), [f"{a},{b}" for a, b in same])
      _write_lines(os.path.join(split, "diff.txt"), [f"{a},{b}" for a, b in diff])
  pairs = PAIRS_PER_IDENTITY * per_fold
  return {"cfp_identities": len(subjects), "cfp_same_pairs_per_fold": pairs,
          "cfp_diff_pairs_per_fold": pairs}


def _fold_pairs(rng, fold_subjects, n_a, n_b, symmetric):
  """(same, diff) lists of 1-based (a, b) list indices for one fold.

  Same: PAIRS_PER_IDENTITY distinct pairs per subject (a from its n_a images, b from its n_b;
  when `symmetric` both come from the same list and a < b). Diff: as many distinct pairs of two
  different subjects of the fold.
  """
  index_a = lambda s, k: (s - 1) * n_a + k + 1
  index_b = lambda s, k: (s - 1) * n_b + k + 1
  same = []
  for s in fold_subjects:
    candidates = [(a, b) for a in range(n_a) for b in range(n_b) if not symmetric or a < b]
    for c in rng.choice(len(candidates), PAIRS_PER_IDENTITY, replace=False):
      a, b = candidates[c]
      same.append((index_a(s, a), index_b(s, b)))
  diff = set()
  while len(diff) < len(same):
    s, t = rng.choice(fold_subjects, 2, replace=False)
    pair = (index_a(s, rng.integers(n_a)), index_b(t, rng.integers(n_b)))
    diff.add(tuple(sorted(pair)) if symmetric else pair)
  return same, sorted(diff)


def _write_multipie(folder, names):
  """gallery.txt and probe.txt for the images {(subject, yaw, light): file name}."""
  gallery = sorted(key for key in names if key[1:] == (0, 0))
  probes = sorted(key for key in names if key[2] > 0)
  if {s for s, _, _ in probes} - {s for s, _, _ in gallery}:
    raise ValueError("every Multi-PIE probe subject needs a gallery image (yaw 0, light 0)")
  relative = lambda key: os.path.relpath(names[key], "multipie")
  _write_lines(os.path.join(folder, "gallery.txt"),
               [f"{relative(key)} {key[0]}" for key in gallery])
  _write_lines(os.path.join(folder, "probe.txt"),
               [f"{relative(key)} {key[0]} {key[1]}" for key in probes])
  return {"multipie_gallery": len(gallery), "multipie_probes": len(probes)}
