"""Writes the synthetic test identities as the files real evaluation sets are distributed in.

    python -m input_pipeline.synthetic.export --data_dir=DIR --builder_config=tiny --out=OUT
        [--split=validation]

So the readers of `input_pipeline.readers` (insightface_bin, lfw, ijba, ijbc, megaface) can be
run end to end without the real data. The CFP and Multi-PIE trees are `protocols`'s (in
`<data_dir>/.../protocols`, written if missing) and are not repeated here. Under OUT:

- `cfp_ff.bin`, `cfp_fp.bin`: insightface packs of the synthetic CFP-FF / CFP-FP pairs in the
  protocol's order (fold by fold, same before different); every fold has as many pairs, so
  insightface's 10 contiguous folds are the protocol's folds. Images at the stored size,
  encoded from the test split's lossless pixels: JPEG at the protocol tree's quality (so they
  decode as the tree's files do) or, with --bin_format=png, PNG (the exact pixels).
- `lfw/pairs.txt`, `lfw/images/Person_NNN/Person_NNN_00KK.jpg` (every CFP frontal image:
  KK of subject NNN) and `lfw/images/landmarks.csv`: the CFP-FF pairs in LFW's format, one
  set per fold.
- `ijba/protocol/split{k}/verify_metadata_{k}.csv` and `verify_comparisons_{k}.csv`, images
  under `ijba/images` (`img/<media>.jpg` photos, `frame/<media>_<frame>.jpg` video frames).
  Three templates per subject: frontal photos 1-5; frontal 6-10 and profile 1-2; profile 3-4
  and (for subjects with Multi-PIE images) a video, one media, of the Multi-PIE light-1
  probes from -90 to 90 degrees. Template id
  3 (NNN - 1) + t + 1, subject NNN, face box the whole image. Split k holds the subjects
  outside CFP fold k - 1 and compares every genuine pair of its templates (3 per subject) and
  `IJBA_IMPOSTORS` impostor pairs drawn without replacement (all of them when there are fewer),
  about as many per genuine pair as IJB-A's 1:1 lists have.
- `ijbc/meta/ijbc_face_tid_mid.txt`, `ijbc_name_5pts_score.txt`, `ijbc_template_pair_label.txt`
  and `ijbc/loose_crop/<k>.png`: IJB-C's layout (`readers.ijbc`) of the IJB-A templates above
  (same template and media ids), over all subjects, comparing every genuine pair and
  `IJBA_IMPOSTORS` impostor pairs. Loose crop k is image k of the templates moved by a random
  similarity transform (scale 0.8-1.2, rotation within +-15 degrees, shift within +-2
  pixels; a square of 1.5 times the stored side plus 4 pixels, so the whole face stays in
  it), and its five points are that transform applied to the ArcFace template at the stored
  size: aligning by the file's points undoes the transform and gives back the stored face, so
  the copy exercises the alignment path exactly; its points are not detector output.
  Faceness 1.0. Written from the split's lossless pixels as PNG, so interpolation is the only
  difference from the stored face.
- `megaface/facescrub_features_list.json` (probes: the 14 CFP images of each subject in the
  first half, under `megaface/facescrub`) and `megaface/megaface_features_list.json_<M>_1`
  (distractors: all M test images of the other half, under `megaface/megaface`).
- `summary.json`: counts; written last, so its presence means the export is complete (one
  written before the IJB-C copy existed lacks the ijbc counts, and `ensure` adds the copy).

All other image files are the protocol tree's JPEGs (quality 95), byte for byte (hard links
where the file system allows, copies elsewhere). `ensure` adds the IJB-C copy to an export
written before it existed.
"""
import argparse
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import files
from input_pipeline.readers import cfp
from input_pipeline.readers import face_align
from input_pipeline.readers import folds
from input_pipeline.readers import images as images_lib
from input_pipeline.readers import insightface_bin
from input_pipeline.synthetic import builder as builder_lib
from input_pipeline.synthetic import protocols

SUMMARY = "summary.json"
IJBA_COLUMNS = ("TEMPLATE_ID", "SUBJECT_ID", "FILE", "MEDIA_ID", "SIGHTING_ID", "FRAME",
                "FACE_X", "FACE_Y", "FACE_WIDTH", "FACE_HEIGHT")
TEMPLATES_PER_SUBJECT = 3
IJBA_IMPOSTORS = 30_000  # per split; FAR 1e-4 is then 3 false accepts
IJBC_SCALES, IJBC_MAX_DEGREES, IJBC_MAX_SHIFT = (0.8, 1.2), 15.0, 2.0  # the loose crops
IJBC_FACENESS = 1.0
_OFFLINE = tfds.download.DownloadConfig(try_download_gcs=False)


def cfp_name(subject, kind, k):
  """File name (test split, protocol tree) of CFP image k of `kind` of 1-based `subject`."""
  return f"cfp/Data/Images/{subject:03d}/{kind}/{k:02d}.jpg"


def multipie_name(subject, yaw, light):
  """File name of the Multi-PIE image at `yaw` under `light` of 1-based `subject`."""
  return f"multipie/images/{subject:03d}/{yaw}_{light}.jpg"


def person(subject):
  """The LFW / FaceScrub-style name of a subject."""
  return f"Person_{subject:03d}"


def read_test_images(builder):
  """{file_name: uint8 image} of a prepared builder's test split (lossless PNG pixels)."""
  return {ex["file_name"]: ex["image"] for ex in protocols.test_examples(builder)}


def _test_file_name(protocol_root, path):
  """The test-split file name of an absolute path in the protocol tree."""
  return files.relpath(path, protocol_root).replace(os.sep, "/")


def _write_lines(path, lines):
  files.makedirs(os.path.dirname(path), exist_ok=True)
  with files.open(path, "w", encoding="utf-8") as f:
    f.writelines(line + "\n" for line in lines)


def _copy(protocol_root, file_name, destination):
  """The tree's file at `destination`: a hard link where the file system allows, or a copy."""
  files.makedirs(os.path.dirname(destination), exist_ok=True)
  files.link_or_copy(os.path.join(protocol_root, file_name), destination)


def write_bins(protocol_root, pixels, out, image_format="jpeg"):
  """`cfp_ff.bin` and `cfp_fp.bin` in `out` from the CFP protocol and the test pixels."""
  counts, encoded = {}, {}
  for protocol in cfp.PROTOCOLS:
    pairs = cfp.read_cfp(os.path.join(protocol_root, "cfp"), protocol)
    num_pairs = len(pairs.is_same)
    if not np.array_equal(pairs.fold,
                          folds.contiguous_folds(num_pairs, insightface_bin.NUM_FOLDS)):
      raise ValueError(f"CFP-{protocol} folds are not {insightface_bin.NUM_FOLDS} equal "
                       f"contiguous blocks; a pack would change them")
    order = np.stack([pairs.index_a, pairs.index_b], axis=1).ravel()
    names = [_test_file_name(protocol_root, pairs.paths[i]) for i in order]
    for name in set(names) - set(encoded):  # each image encoded once for both packs
      encoded[name] = insightface_bin.encode_image(pixels[name], image_format,
                                                   protocols.JPEG_QUALITY)
    insightface_bin.write_encoded_bin(os.path.join(out, f"cfp_{protocol.lower()}.bin"),
                                      [encoded[name] for name in names], pairs.is_same)
    counts[f"cfp_{protocol.lower()}_pairs"] = num_pairs
  return counts


def _write_lfw(protocol_root, folder, num_subjects):
  """The CFP-FF pairs as an LFW tree: pairs.txt, every frontal image, landmarks.csv."""
  pairs = cfp.read_cfp(os.path.join(protocol_root, "cfp"), "FF")
  image_root = os.path.join(folder, "images")
  frontal = [(s, k) for s in range(1, num_subjects + 1)
             for k in range(1, builder_lib.CFP_FRONTAL + 1)]
  relative = [f"{person(s)}/{person(s)}_{k:04d}.jpg" for s, k in frontal]
  sources = [os.path.join(protocol_root, cfp_name(s, "frontal", k)) for s, k in frontal]
  for (s, k), destination in zip(frontal, relative):
    _copy(protocol_root, cfp_name(s, "frontal", k), os.path.join(image_root, destination))
  points = images_lib.read_landmarks_csv(
      os.path.join(protocol_root, "cfp", "landmarks.csv"), sources)
  _write_lines(os.path.join(image_root, "landmarks.csv"), [
      ",".join([name] + [f"{v:.3f}" for v in p.ravel()]) for name, p in zip(relative, points)])
  key = dict(zip(map(files.normpath, sources), frontal))
  keys = [key[files.normpath(path)] for path in pairs.paths]  # (subject, k) of each path

  folds = np.unique(pairs.fold)
  per_set = int(pairs.is_same[pairs.fold == folds[0]].sum())
  lines = [f"{len(folds)} {per_set}"]
  for fold in folds:
    for same in (True, False):
      chosen = np.flatnonzero((pairs.fold == fold) & (pairs.is_same == same))
      if len(chosen) != per_set:
        raise ValueError(f"CFP-FF fold {fold} has {len(chosen)} {'same' if same else 'diff'}"
                         f" pairs, not {per_set}; LFW sets need equal counts")
      for i in chosen:
        (s, j), (t, k) = keys[pairs.index_a[i]], keys[pairs.index_b[i]]
        lines.append(f"{person(s)} {j} {k}" if same else f"{person(s)} {j} {person(t)} {k}")
  _write_lines(os.path.join(folder, "pairs.txt"), lines)
  return {"lfw_pairs": len(lines) - 1, "lfw_images": len(relative)}


def _ijba_templates(subject, has_multipie):
  """The 3 templates of a subject, each a list of media, each a list of file names (the
  video only for subjects with Multi-PIE images)."""
  photos = lambda kind, ks: [[cfp_name(subject, kind, k)] for k in ks]
  video = [[multipie_name(subject, yaw, 1) for yaw in builder_lib.YAW_BINS]]
  return [photos("frontal", range(1, 6)),
          photos("frontal", range(6, 11)) + photos("profile", range(1, 3)),
          photos("profile", range(3, 5)) + (video if has_multipie else [])]


def _ijba_comparisons(rng, subject_of, limit):
  """Sorted (a, b) template pairs, a < b, of the templates {id: subject}: every genuine pair
  and `limit` impostor pairs drawn without replacement (all when there are fewer)."""
  tids = np.array(sorted(subject_of))
  subjects = np.array([subject_of[t] for t in tids])
  i, j = np.triu_indices(len(tids), 1)
  same = subjects[i] == subjects[j]
  impostor = np.flatnonzero(~same)
  if len(impostor) > limit:
    impostor = np.sort(rng.choice(impostor, limit, replace=False))
  chosen = np.sort(np.concatenate([np.flatnonzero(same), impostor]))
  return list(zip(tids[i[chosen]].tolist(), tids[j[chosen]].tolist()))


def _ijba_sightings(num_subjects, num_multipie):
  """Yields (subject, template id, media id, frame or None for a photo, file name) of every
  image of the subjects' templates (`_ijba_templates`), subject by subject."""
  for subject in range(1, num_subjects + 1):
    for t, template in enumerate(_ijba_templates(subject, subject <= num_multipie)):
      template_id = TEMPLATES_PER_SUBJECT * (subject - 1) + t + 1
      for m, media in enumerate(template):
        media_id = 100 * subject + 10 * t + m + 1
        for frame, file_name in enumerate(media):
          yield subject, template_id, media_id, frame if len(media) > 1 else None, file_name


def _write_ijba(protocol_root, folder, num_subjects, num_multipie, image_size, seed):
  """IJB-A split CSVs and their images (see the module docstring)."""
  rows = {subject: [] for subject in range(1, num_subjects + 1)}  # metadata rows (fields)
  sightings = _ijba_sightings(num_subjects, num_multipie)
  for sighting, (subject, template_id, media_id, frame, file_name) in enumerate(sightings, 1):
    relative = f"img/{media_id}.jpg" if frame is None else f"frame/{media_id}_{frame:05d}.jpg"
    _copy(protocol_root, file_name, os.path.join(folder, "images", relative))
    rows[subject].append([template_id, subject, relative, media_id, sighting,
                          "" if frame is None else frame, 0, 0, image_size, image_size])
  per_fold = num_subjects // builder_lib.NUM_FOLDS
  num_comparisons = 0
  for split in range(1, builder_lib.NUM_FOLDS + 1):
    held_out = range((split - 1) * per_fold + 1, split * per_fold + 1)
    subjects = [s for s in range(1, num_subjects + 1) if s not in held_out]
    split_dir = os.path.join(folder, "protocol", f"split{split}")
    _write_lines(os.path.join(split_dir, f"verify_metadata_{split}.csv"),
                 [",".join(IJBA_COLUMNS)] + [",".join(map(str, row)) for s in subjects
                                             for row in rows[s]])
    subject_of = {row[0]: s for s in subjects for row in rows[s]}
    comparisons = [f"{a},{b}" for a, b in _ijba_comparisons(
        np.random.default_rng([seed, 3, split]), subject_of, IJBA_IMPOSTORS)]
    _write_lines(os.path.join(split_dir, f"verify_comparisons_{split}.csv"), comparisons)
    num_comparisons += len(comparisons)
  return {"ijba_templates": TEMPLATES_PER_SUBJECT * num_subjects,
          "ijba_images": sum(map(len, rows.values())), "ijba_comparisons": num_comparisons}


def _loose_crop_transform(rng, stored_size, loose_size):
  """2x3 matrix from the stored face to its loose crop: a random similarity transform about
  the two images' centres (see the module docstring)."""
  scale = rng.uniform(*IJBC_SCALES)
  angle = np.deg2rad(rng.uniform(-IJBC_MAX_DEGREES, IJBC_MAX_DEGREES))
  linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  shift = rng.uniform(-IJBC_MAX_SHIFT, IJBC_MAX_SHIFT, 2)
  centre_in, centre_out = (stored_size - 1) / 2, (loose_size - 1) / 2
  return np.hstack([linear, (centre_out + shift - linear @ [centre_in, centre_in])[:, None]])


def _write_ijbc(pixels, folder, num_subjects, num_multipie, image_size, seed):
  """The IJB-C copy of the IJB-A templates: meta files and loose crops (module docstring)."""
  rng = np.random.default_rng([seed, 4])
  # Holds the moved face: half its width along either axis is at most
  # 1.2 (cos 15 + sin 15) / 2 = 0.735 of the stored side, plus the shift.
  loose_size = int(np.ceil(1.5 * image_size + 2 * IJBC_MAX_SHIFT))
  template = face_align.template(image_size)
  files.makedirs(os.path.join(folder, "loose_crop"))
  media_lines, point_lines, subject_of = [], [], {}
  for k, (subject, template_id, media_id, _, file_name) in enumerate(
      _ijba_sightings(num_subjects, num_multipie), 1):
    matrix = _loose_crop_transform(rng, image_size, loose_size)
    name = f"{k}.png"
    with files.open(os.path.join(folder, "loose_crop", name), "wb") as f:
      Image.fromarray(face_align.warp(pixels[file_name], matrix, loose_size)).save(
          f, format="PNG")
    points = face_align.apply(matrix, template)
    media_lines.append(f"{name} {template_id} {media_id}")
    point_lines.append(" ".join([name] + [f"{v:.4f}" for v in points.ravel()]
                                + [f"{IJBC_FACENESS:g}"]))
    subject_of[template_id] = subject
  pair_lines = [f"{a} {b} {int(subject_of[a] == subject_of[b])}" for a, b in
                _ijba_comparisons(rng, subject_of, IJBA_IMPOSTORS)]
  meta = os.path.join(folder, "meta")
  _write_lines(os.path.join(meta, "ijbc_face_tid_mid.txt"), media_lines)
  _write_lines(os.path.join(meta, "ijbc_name_5pts_score.txt"), point_lines)
  _write_lines(os.path.join(meta, "ijbc_template_pair_label.txt"), pair_lines)
  return {"ijbc_templates": len(subject_of), "ijbc_images": len(media_lines),
          "ijbc_comparisons": len(pair_lines)}


def _cfp_names(subject):
  """The file names of a subject's CFP images: frontal 1..10, then profile 1..4."""
  return ([cfp_name(subject, "frontal", k) for k in range(1, builder_lib.CFP_FRONTAL + 1)]
          + [cfp_name(subject, "profile", k) for k in range(1, builder_lib.CFP_PROFILE + 1)])


def _write_megaface(protocol_root, folder, num_subjects, num_multipie, illuminations):
  """FaceScrub probe and MegaFace distractor lists and their images."""
  half = num_subjects // 2
  ids, probe_paths = [], []
  for subject in range(1, half + 1):
    for j, file_name in enumerate(_cfp_names(subject), 1):
      relative = f"{person(subject)}/{person(subject)}_{j}.jpg"
      _copy(protocol_root, file_name, os.path.join(folder, "facescrub", relative))
      ids.append(person(subject))
      probe_paths.append(relative)
  distractors = []
  for subject in range(half + 1, num_subjects + 1):
    names = _cfp_names(subject)
    if subject <= num_multipie:
      names += [multipie_name(subject, 0, 0)] + [
          multipie_name(subject, yaw, light) for yaw in builder_lib.YAW_BINS
          for light in range(1, illuminations + 1)]
    for file_name in names:
      source = file_name.split("/")
      kind = f"cfp_{source[-2]}" if source[0] == "cfp" else "multipie"
      relative = f"{subject:03d}/{kind}_{source[-1]}"
      _copy(protocol_root, file_name, os.path.join(folder, "megaface", relative))
      distractors.append(relative)
  with files.open(os.path.join(folder, "facescrub_features_list.json"), "w") as f:
    json.dump({"id": ids, "path": probe_paths}, f)
  with files.open(os.path.join(folder, f"megaface_features_list.json_{len(distractors)}_1"),
                  "w") as f:
    json.dump({"path": distractors}, f)
  return {"megaface_probes": len(probe_paths), "megaface_distractors": len(distractors)}


def export(builder, out, bin_format="jpeg", split="test", pixels=None):
  """Writes the export of a prepared SyntheticFaces builder's `split` to `out`; returns `out`.

  pixels: {file_name: lossless uint8 image} of the split (default: read from the TFDS test
  split, or rendered for validation). An existing `out` is replaced only when it is an
  earlier export (holds summary.json) or empty.
  """
  out = files.abspath(out)
  if (files.isdir(out) and files.listdir(out)
      and not files.isfile(os.path.join(out, SUMMARY))):
    raise FileExistsError(f"{out} exists and is not an earlier export; not replacing it")
  config = builder.builder_config
  examples = None
  if pixels is None:  # read (or render) the split once, for the tree and the packs
    examples = _examples(builder, split)
    pixels = {ex["file_name"]: ex["image"] for ex in examples}
  protocol_root = protocols.ensure(builder, split, examples)
  num_subjects, num_multipie = _subjects(config, split)
  partial = f"{out}.partial-{os.getpid()}"
  files.rmtree(partial, ignore_errors=True)
  files.makedirs(partial)
  summary = {"builder_config": config.name, "split": split, "image_size": config.image_size,
             "bin_format": bin_format}
  summary.update(write_bins(protocol_root, pixels, partial, bin_format))
  summary.update(_write_lfw(protocol_root, os.path.join(partial, "lfw"), num_subjects))
  summary.update(_write_ijba(protocol_root, os.path.join(partial, "ijba"), num_subjects,
                             num_multipie, config.image_size, config.seed))
  summary.update(_write_ijbc(pixels, os.path.join(partial, "ijbc"), num_subjects,
                             num_multipie, config.image_size, config.seed))
  summary.update(_write_megaface(protocol_root, os.path.join(partial, "megaface"),
                                 num_subjects, num_multipie, config.illuminations))
  with files.open(os.path.join(partial, SUMMARY), "w") as f:
    json.dump(summary, f, indent=1)
  if files.exists(out):
    files.rmtree(out)
  files.replace(partial, out)
  return out


def _examples(builder, split):
  """[{file_name, image, landmarks}] of the split: the TFDS test split, or rendered."""
  return list(protocols.test_examples(builder) if split == "test"
              else protocols.rendered_examples(builder.builder_config, split))


def _subjects(config, split):
  """(number of subjects of the split, how many of them have Multi-PIE images)."""
  return (config.num_test_identities if split == "test" else config.num_validation_identities,
          config.multipie_identities(split))


def add_ijbc(builder, out, split="test"):
  """Writes the IJB-C copy into an export made without it (`out` holds summary.json but no
  ijbc counts), leaving the rest as it is, and adds its counts to the summary."""
  config = builder.builder_config
  pixels = {ex["file_name"]: ex["image"] for ex in _examples(builder, split)}
  partial = os.path.join(out, f"ijbc.partial-{os.getpid()}")
  files.rmtree(partial, ignore_errors=True)
  counts = _write_ijbc(pixels, partial, *_subjects(config, split), config.image_size,
                       config.seed)
  # An ijbc folder here was left by a run stopped before it updated the summary.
  files.rmtree(os.path.join(out, "ijbc"), ignore_errors=True)
  files.replace(partial, os.path.join(out, "ijbc"))
  with files.open(os.path.join(out, SUMMARY)) as f:
    summary = json.load(f)
  partial_summary = os.path.join(out, f"{SUMMARY}.partial-{os.getpid()}")
  with files.open(partial_summary, "w") as f:
    json.dump({**summary, **counts}, f, indent=1)
  files.replace(partial_summary, os.path.join(out, SUMMARY))  # names ijbc once it is whole


def ensure(builder, split="test"):
  """The builder's protocol tree of `split` (`protocols.ensure`) with this export in its
  `export/`. Each is written once (an export from before the IJB-C copy gains it); the
  evaluation finds every benchmark's files below the returned root."""
  root = protocols.root_of(builder, split)
  out = os.path.join(root, "export")
  summary_file = os.path.join(out, SUMMARY)
  if not files.isfile(summary_file):
    export(builder, out, split=split)
  else:
    with files.open(summary_file) as f:
      if "ijbc_images" not in json.load(f):
        add_ijbc(builder, out, split)
  return root


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True, help="TFDS data dir of synthetic_faces")
  parser.add_argument("--builder_config", default="tiny", help="synthetic_faces config name")
  parser.add_argument("--out", required=True, help="folder to write the export into")
  parser.add_argument("--bin_format", default="jpeg", choices=insightface_bin.FORMATS,
                      help="image encoding inside the .bin packs")
  parser.add_argument("--split", default="test", choices=builder_lib.PROTOCOL_SPLITS,
                      help="the test identities, or the validation ones (for tuning)")
  args = parser.parse_args(argv)
  builder = builder_lib.SyntheticFaces(config=args.builder_config,
                                       data_dir=files.local_path(args.data_dir))
  builder.download_and_prepare(download_config=_OFFLINE)  # renders; fetches nothing
  out = export(builder, args.out, args.bin_format, args.split)
  with files.open(os.path.join(out, SUMMARY)) as f:
    print(f"wrote {out}: {f.read()}")


if __name__ == "__main__":
  main()
