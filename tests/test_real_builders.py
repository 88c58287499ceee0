"""RecordIO reading and writing, the face_folder / insightface_rec builders on small fixtures
written here, their refusal (or skip_bad skipping) of broken input, and data.load on them.
"""
import io
import math
import os
import re
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from aprn_jax import data as data_lib
from configs import tiny
from input_pipeline import landmarks as landmarks_lib
from input_pipeline import mean_face, preprocess, recordio
from input_pipeline.real import builders, tables

MAGIC = 0xCED7230A
SIZE = 32


# ---------------------------------------------------------------- fixtures


def face_points(width, height, rng, num_points=51):
  """Mirror-symmetric landmarks of a frontal face inside a width x height image."""
  q = rng.uniform([0.25 * width, 0.2 * height], [0.75 * width, 0.8 * height], (51, 2))
  mirrored = q[landmarks_lib.IBUG51_FLIP].copy()
  mirrored[:, 0] = width - mirrored[:, 0]
  points = (q + mirrored) / 2
  points[19:31, 1] = 0.4 * height  # eyes
  points[31:51, 1] = 0.75 * height  # lips
  if num_points == 68:
    jaw = rng.uniform([0.1 * width, 0.5 * height], [0.9 * width, 0.95 * height], (17, 2))
    points = np.concatenate([jaw, points])
  return points.round(3)


def encode(array, fmt):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def random_image(rng, width, height):
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_csv(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    for key, values in rows.items():
      f.write(f"{key}," + ",".join(repr(float(v)) for v in np.ravel(values)) + "\n")


def write_folder(root, edit=None, table="csv", num_points=51):
  """<root>/manual: `ann` 2 PNGs 32x32 (stored as they are), `bo` 3 JPEGs 48x40 (resized).

  `edit(manual_dir, rows)` may break files or landmark rows before the table is written.
  Returns (manual_dir, {key: (num_points, 2) landmarks of the file}).
  """
  rng = np.random.default_rng(1)
  manual = os.path.join(root, "manual")
  rows = {}
  for identity, count, (width, height), fmt, ext in (("ann", 2, (SIZE, SIZE), "PNG", "png"),
                                                     ("bo", 3, (48, 40), "JPEG", "jpg")):
    os.makedirs(os.path.join(manual, identity))
    for j in range(count):
      key = f"{identity}/{j}.{ext}"
      with open(os.path.join(manual, key), "wb") as f:
        f.write(encode(random_image(rng, width, height), fmt))
      rows[key] = face_points(width, height, rng, num_points)
  if edit:
    edit(manual, rows)
  if table == "csv":
    write_csv(os.path.join(manual, tables.CSV_NAME), rows)
  else:  # npy + keys, in reverse order
    keys = list(rows)[::-1]
    np.save(os.path.join(manual, tables.NPY_NAME), np.stack([rows[k] for k in keys]))
    with open(os.path.join(manual, tables.KEYS_NAME), "w", encoding="utf-8") as f:
      f.write("".join(f"{k}\n" for k in keys))
  return manual, rows


REC_LABELS = (0, 0, 1, 1, 3)  # stored labels; no image of identity 2


def write_rec_folder(root, header_record=True, edit=None):
  """<root>/manual with train.rec/.idx of 5 JPEGs 32x32 (writer) and landmarks.csv by index.

  Returns (manual_dir, {record index: landmarks}).
  """
  rng = np.random.default_rng(2)
  manual = os.path.join(root, "manual")
  os.makedirs(manual)
  images = [encode(random_image(rng, SIZE, SIZE), "JPEG") for _ in REC_LABELS]
  recordio.write_rec(os.path.join(manual, "train"), images, REC_LABELS, header_record)
  first = 1 if header_record else 0
  rows = {first + i: face_points(SIZE, SIZE, rng) for i in range(len(images))}
  if edit:
    edit(manual, rows)
  write_csv(os.path.join(manual, tables.CSV_NAME), rows)
  return manual, rows


def build(builder_cls, manual, data_dir, skip_bad=False):
  builder = builder_cls(config=builders.make_config(image_size=SIZE, skip_bad=skip_bad,
                                                    workers=2),
                        data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, manual_dir=manual))
  return builder


def examples(builder):
  dataset = builder.as_dataset(split="train", shuffle_files=False)
  return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(dataset)}


def skipped(builder):
  with open(os.path.join(builder.data_dir, builders.SKIPPED_FILE), encoding="utf-8") as f:
    return f.read().splitlines()


# ---------------------------------------------------------------- RecordIO


def hand_part(flag, data):
  """One RecordIO part assembled by hand: magic, length word, data, padding."""
  return struct.pack("<II", MAGIC, (flag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


def hand_payload(label, image, id_=0):
  return struct.pack("<IfQQ", 0, label, id_, 0) + image


def test_reader_reads_a_hand_assembled_file_and_the_writer_writes_the_same_bytes(tmp_path):
  # Record 1's payload holds the magic word at an aligned offset: MXNet stores it in two
  # parts (flags 1 and 3) with the word dropped.
  images = [b"first image", b"\x01\x02\x03\x04" + struct.pack("<I", MAGIC) + b"xyz", b""]
  labels = [7.0, 2.5, 0.0]
  payloads = [hand_payload(label, image, i) for i, (label, image) in
              enumerate(zip(labels, images))]
  split = payloads[1].index(struct.pack("<I", MAGIC))
  parts = [hand_part(0, payloads[0]),
           hand_part(1, payloads[1][:split]) + hand_part(3, payloads[1][split + 4:]),
           hand_part(0, payloads[2])]
  offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
  (tmp_path / "hand.rec").write_bytes(b"".join(parts))
  (tmp_path / "hand.idx").write_text("".join(f"{i}\t{o}\n" for i, o in enumerate(offsets)))

  with recordio.Reader(tmp_path / "hand.rec", tmp_path / "hand.idx") as reader:
    assert reader.keys() == [0, 1, 2]
    for key in (2, 0, 1):  # random access
      header, image = reader.read_unpacked(key)
      assert (header.flag, header.label, header.id, image) == (0, labels[key], key,
                                                               images[key])
      assert reader.read_header(key) == header
    assert [payload for _, payload in reader.scan()] == payloads
    assert recordio.image_keys(reader) == [0, 1, 2]  # no header record
  with recordio.Reader(tmp_path / "hand.rec") as reader:  # no .idx: one sequential pass
    assert [reader.read(k) for k in reader.keys()] == payloads

  rec, idx = recordio.write_rec(tmp_path / "written", images, labels, header_record=False)
  assert open(rec, "rb").read() == (tmp_path / "hand.rec").read_bytes()
  assert open(idx).read() == (tmp_path / "hand.idx").read_text()


def test_writer_header_record_convention(tmp_path):
  images = [bytes([i]) * (i + 1) for i in range(5)]
  recordio.write_rec(tmp_path / "train", images, REC_LABELS)
  with recordio.Reader(tmp_path / "train.rec", tmp_path / "train.idx") as reader:
    header = reader.read_header(0)
    assert header.flag == 2 and header.label == (6.0, 9.0)  # 5 images, 3 identities
    assert recordio.image_keys(reader) == [1, 2, 3, 4, 5]
    for i, key in enumerate(range(1, 6)):
      header, image = reader.read_unpacked(key)
      assert (header.label, image) == (REC_LABELS[i], images[i])
    ranges = [reader.read_header(key).label for key in (6, 7, 8)]
    assert ranges == [(1.0, 3.0), (3.0, 5.0), (5.0, 6.0)]  # labels 0, 1, 3
  with pytest.raises(ValueError, match="contiguous"):
    recordio.write_rec(tmp_path / "mixed", images[:3], [0, 1, 0])


def _rec_with_idx(tmp_path):
  recordio.write_rec(tmp_path / "train", [b"a" * 30, b"b" * 30, b"c" * 30], [0, 1, 2],
                     header_record=False)
  return tmp_path / "train.rec", tmp_path / "train.idx"


def _offsets(idx):
  return [int(line.split()[1]) for line in idx.read_text().splitlines()]


def test_reader_errors_name_the_file_and_record(tmp_path):
  rec, idx = _rec_with_idx(tmp_path)
  data, offsets = bytearray(rec.read_bytes()), _offsets(idx)
  data[offsets[1]:offsets[1] + 4] = b"\xff\xff\xff\xff"
  rec.write_bytes(bytes(data))
  with recordio.Reader(rec, idx) as reader:
    reader.read(0)
    with pytest.raises(ValueError, match=r"train\.rec: record 1 \(offset \d+, from .*train\.idx"
                                         r"\): bad magic word 0xffffffff"):
      reader.read(1)
  rec.write_bytes(bytes(data[:offsets[2] + 12]))
  with recordio.Reader(rec, idx) as reader, pytest.raises(ValueError,
                                                         match="record 2 .* truncated"):
    reader.read(2)
  idx.write_text(f"0\t{offsets[0]}\n1\t99999\n")
  with pytest.raises(ValueError, match=r"train\.idx:2: record 1 at offset 99999 is past the "
                                       r"end of .*train\.rec"):
    recordio.Reader(rec, idx)  # on opening, before record 1 is read
  idx.write_text("0\t0\n1 zero\n")
  with pytest.raises(ValueError, match=r"train\.idx:2: offset 'zero' is not an integer"):
    recordio.Reader(rec, idx)


# ---------------------------------------------------------------- builders


def test_face_folder_builds_labels_landmarks_and_images(tmp_path):
  manual, rows = write_folder(tmp_path)
  builder = build(builders.FaceFolder, manual, tmp_path / "tfds")
  got = examples(builder)
  assert builder.info.features["label"].names == ["ann", "bo"]
  assert builder.info.splits["train"].num_examples == len(got) == 5
  assert skipped(builder) == []
  for key, points in rows.items():
    ex = got[key]
    assert ex["label"] == (1 if key.startswith("bo") else 0)
    assert ex["image"].shape == (SIZE, SIZE, 3) and ex["visibility"].all()
    if key.startswith("ann"):  # stored as it is: same pixels, same landmarks
      original = np.asarray(Image.open(os.path.join(manual, key)))
      np.testing.assert_array_equal(ex["image"], original)
      np.testing.assert_allclose(ex["landmarks"], points, atol=1e-4)
    else:  # 48x40 -> centred 40x40 square -> 32x32
      np.testing.assert_allclose(ex["landmarks"], (points - [4, 0]) * 0.8, atol=1e-4)
    assert abs(ex["yaw"]) < 1.0  # symmetric fixture faces are frontal
  mean = mean_face.read(builder.data_dir)
  assert mean.shape == (51, 2) and np.isfinite(mean).all()
  # The same build opened again (as data.load does) keeps names and counts.
  again = builders.FaceFolder(config=builder.builder_config, data_dir=str(tmp_path / "tfds"))
  assert again.info.features["label"].names == ["ann", "bo"]


def test_face_folder_npy_table_with_68_points(tmp_path):
  manual, rows = write_folder(tmp_path, table="npy", num_points=68)
  got = examples(build(builders.FaceFolder, manual, tmp_path / "tfds"))
  assert len(got) == 5
  np.testing.assert_allclose(got["ann/1.png"]["landmarks"],
                             landmarks_lib.ibug68_to_51(rows["ann/1.png"]), atol=1e-4)


@pytest.mark.parametrize("header_record", [True, False])
def test_insightface_rec_keeps_stored_labels(tmp_path, header_record):
  manual, rows = write_rec_folder(tmp_path, header_record)
  builder = build(builders.InsightfaceRec, manual, tmp_path / "tfds")
  got = examples(builder)
  assert builder.info.features["label"].num_classes == 4  # largest stored label + 1
  assert sorted(got) == [str(k) for k in rows]
  for i, (key, points) in enumerate(rows.items()):
    assert got[str(key)]["label"] == REC_LABELS[i]
    np.testing.assert_allclose(got[str(key)]["landmarks"], points, atol=1e-4)
  assert skipped(builder) == []


def test_insightface_rec_reads_a_hand_assembled_file(tmp_path):
  rng = np.random.default_rng(3)
  manual = tmp_path / "manual"
  manual.mkdir()
  images = [encode(random_image(rng, SIZE, SIZE), "PNG") for _ in range(3)]
  parts = [hand_part(0, struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 4, 6))]
  parts += [hand_part(0, hand_payload(label, image, i + 1))
            for i, (label, image) in enumerate(zip((5.0, 5.0, 1.0), images))]
  parts += [hand_part(0, struct.pack("<IfQQ", 2, 0.0, 4 + i, 0) + struct.pack("<2f", *r))
            for i, r in enumerate(((1, 3), (3, 4)))]
  offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
  (manual / "train.rec").write_bytes(b"".join(parts))
  (manual / "train.idx").write_text("".join(f"{i}\t{o}\n" for i, o in enumerate(offsets)))
  rows = {k: face_points(SIZE, SIZE, rng) for k in (1, 2, 3)}
  write_csv(manual / tables.CSV_NAME, rows)
  got = examples(build(builders.InsightfaceRec, str(manual), tmp_path / "tfds"))
  assert {k: int(ex["label"]) for k, ex in got.items()} == {"1": 5, "2": 5, "3": 1}
  np.testing.assert_array_equal(got["3"]["image"], np.asarray(Image.open(io.BytesIO(images[2]))))


# ---------------------------------------------------------------- broken input


def _truncate(path):
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def _set(rows, key, index, value):
  rows[key] = np.array(rows[key], np.float64)
  rows[key].flat[index] = value


FOLDER_CASES = {
    # name: (edit, text of the error, images left with skip_bad, identities)
    "truncated image": (lambda m, r: _truncate(os.path.join(m, "bo", "1.jpg")),
                        r"bo/1\.jpg: cannot decode", 4, 2),
    "wrong count": (lambda m, r: r.update({"ann/1.png": r["ann/1.png"][:-1]}),
                    r"landmarks\.csv:2: expected a key and 102 numbers", 4, 2),
    "NaN": (lambda m, r: _set(r, "bo/0.jpg", 7, math.nan),
            r"landmarks\.csv:3: coordinate 'nan' is not finite", 4, 2),
    "missing row": (lambda m, r: r.pop("bo/2.jpg"),
                    r"landmarks\.csv: no landmarks for bo/2\.jpg", 4, 2),
    "out of frame": (lambda m, r: _set(r, "ann/0.png", 40, -3.0),
                     r"ann/0\.png: landmark 20 at \(-3\.0, .*landmarks\.csv is outside", 4, 2),
    "empty identity": (lambda m, r: os.makedirs(os.path.join(m, "abe")) or open(
        os.path.join(m, "abe", "notes.txt"), "w").close(),
                       r"manual/abe: identity folder with no image files", 5, 2),
}


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_face_folder_refuses_or_skips_broken_input(tmp_path, case):
  edit, message, left, identities = FOLDER_CASES[case]
  manual, _ = write_folder(tmp_path, edit)
  with pytest.raises(ValueError, match=message):
    build(builders.FaceFolder, manual, tmp_path / "strict")
  builder = build(builders.FaceFolder, manual, tmp_path / "lenient", skip_bad=True)
  assert len(examples(builder)) == left
  assert builder.info.features["label"].names == ["ann", "bo"][:identities]
  lines = skipped(builder)
  assert len(lines) == 1 and re.search(message, lines[0])


def _damage_rec(manual, what):
  rec, idx = os.path.join(manual, "train.rec"), os.path.join(manual, "train.idx")
  with open(idx) as f:
    offsets = [int(line.split()[1]) for line in f]
  data = bytearray(open(rec, "rb").read())
  if what == "magic":
    data[offsets[2]:offsets[2] + 4] = b"\0\0\0\0"
  elif what == "truncated":
    data = data[:offsets[-1] + 40]
  with open(rec, "wb") as f:
    f.write(bytes(data))


REC_CASES = {
    "magic": (True, r"train\.rec: record 2 \(offset \d+, from .*train\.idx\): bad magic"),
    "truncated": (False, r"train\.rec: record 4 .*truncated record"),
}


@pytest.mark.parametrize("case", list(REC_CASES))
def test_insightface_rec_refuses_or_skips_broken_records(tmp_path, case):
  header_record, message = REC_CASES[case]
  manual, _ = write_rec_folder(tmp_path, header_record,
                               edit=lambda m, r: _damage_rec(m, case))
  with pytest.raises(ValueError, match=message):
    build(builders.InsightfaceRec, manual, tmp_path / "strict")
  builder = build(builders.InsightfaceRec, manual, tmp_path / "lenient", skip_bad=True)
  assert len(examples(builder)) == 4
  lines = skipped(builder)
  assert len(lines) == 1 and re.search(message, lines[0])


def test_idx_line_past_the_end_is_an_error_even_unread(tmp_path):
  """The last .idx line, an identity record the build never reads, points past train.rec."""
  def edit(manual, unused_rows):
    idx = os.path.join(manual, "train.idx")
    with open(idx) as f:
      lines = f.read().splitlines()
    key = lines[-1].split()[0]
    lines[-1] = f"{key}\t{os.path.getsize(os.path.join(manual, 'train.rec')) + 64}"
    with open(idx, "w") as f:
      f.write("\n".join(lines) + "\n")
  manual, _ = write_rec_folder(tmp_path, edit=edit)
  last = len(REC_LABELS) + 1 + len(set(REC_LABELS)) - 1  # header + images + identities
  with pytest.raises(ValueError, match=rf"train\.idx:{last + 1}: record {last} at offset \d+ "
                                       r"is past the end of .*train\.rec"):
    build(builders.InsightfaceRec, manual, tmp_path / "tfds", skip_bad=True)


def test_printed_skipped_path_is_the_final_one(tmp_path, capsys):
  manual, _ = write_folder(tmp_path, FOLDER_CASES["truncated image"][0])
  builder = build(builders.FaceFolder, manual, tmp_path / "tfds", skip_bad=True)
  printed = re.search(r"\(listed in (\S+)\)", capsys.readouterr().err).group(1)
  assert "incomplete" not in printed and os.path.isfile(printed)
  assert printed == os.path.join(os.path.normpath(builder.data_dir), builders.SKIPPED_FILE)
  assert len(skipped(builder)) == 1


def test_malformed_idx_is_an_error_even_with_skip_bad(tmp_path):
  def edit(manual, unused_rows):
    with open(os.path.join(manual, "train.idx"), "a") as f:
      f.write("9\n")
  manual, _ = write_rec_folder(tmp_path, edit=edit)
  with pytest.raises(ValueError, match=r"train\.idx:10: expected 'key<TAB>offset'"):
    build(builders.InsightfaceRec, manual, tmp_path / "tfds", skip_bad=True)


# ---------------------------------------------------------------- data.load


def test_data_load_face_folder(tmp_path):
  manual, _ = write_folder(tmp_path)
  config = tiny.get_config()
  config.data.update(name="face_folder", manual_dir=manual, stored_size=SIZE,
                     data_dir=str(tmp_path / "data"), crop_size=28, image_size=28)
  data = data_lib.load(config, str(tmp_path / "work"))
  assert (data.num_examples, data.num_classes, data.stored_size) == (5, 2, SIZE)
  assert data.num_landmarks == 51 and data.protocol_root == ""
  assert data.mean_face.shape == (51, 2) and np.isfinite(data.mean_face).all()
  assert np.abs(data.mean_face).max() < 1.5  # normalised over the network input
  batch = next(preprocess.train_batches(
      data.dataset_fn, num_examples=data.num_examples, global_batch_size=4, crop_size=28,
      image_size=28, seed=0, process_index=0, process_count=1, local_device_count=1))
  assert batch["image"].shape == (1, 4, 28, 28, 3) and batch["landmarks"].shape == (1, 4, 51, 2)
  config.data.manual_dir = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="config.data.manual_dir"):
    data_lib.load(config, str(tmp_path / "work"))


def test_crop_keeping_little_of_the_face_warns(tmp_path, capsys):
  """configs/tiny.py on faces stored at 112: random 32x32 patches of 112x112 faces."""
  manual, _ = write_folder(tmp_path)
  config = tiny.get_config()
  config.data.update(name="face_folder", manual_dir=manual, stored_size=112,
                     data_dir=str(tmp_path / "data"))
  data_lib.load(config, str(tmp_path / "work"))
  printed = capsys.readouterr().out
  assert re.search(r"warning: config\.data\.crop_size=32 keeps 29% of the side of the "
                   r"112x112 images .*--config\.data\.crop_size=101 .*"
                   r"--config\.data\.stored_size=36", printed)
  config.data.update(crop_size=100, image_size=32)  # the fix: no warning
  data_lib.load(config, str(tmp_path / "work"))
  assert "warning" not in capsys.readouterr().out


def test_crop_leaving_most_landmarks_outside_is_an_error():
  config = tiny.get_config()
  grid = np.linspace(0.2 * 112, 0.8 * 112, 8)
  face = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)[:51]  # a face 67 px wide
  mean = data_lib.to_network_frame(face, 112, 32, 32)
  with pytest.raises(ValueError, match=r"config\.data\.crop_size=32 of the 112x112 images of "
                                       r"/data/x leaves \d+% of the mean face's landmarks "
                                       r"outside the network input; .*crop_size=101"):
    data_lib.check_crop(config, 112, mean, "/data/x")
  config.data.crop_size = 100
  assert data_lib.check_crop(config, 112, data_lib.to_network_frame(face, 112, 100, 32),
                             "/data/x") == 0
