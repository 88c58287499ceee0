"""MXNet RecordIO (`train.rec` + `train.idx`) in pure Python: insightface's packed face data.

Read and written here without MXNet, byte-compatible with `mxnet.recordio`.

`.rec` (little-endian) is a sequence of parts, each: the uint32 magic word 0xced7230a, a
uint32 length word (lower 29 bits: the part's length in bytes; upper 3 bits: a continuation
flag), the part's bytes, zero padding to a multiple of 4. A record is one part (flag 0) unless
its payload holds the magic word at a 4-byte aligned position: MXNet then cuts the payload
there and drops the word (first part flag 1, middle parts 2, last part 3), and a reader joins
the parts with the word between them.

`.idx` is text, one line per record, `key<TAB>offset`: the record's integer key (insightface:
its index) and the byte offset of its first part in the `.rec`. Opening a Reader checks every
line, including those of records never read, against the `.rec`'s size.

Record payload (`mxnet.recordio.pack`): an IRHeader `<IfQQ` (flag uint32, label float32, id
uint64, id2 uint64); when flag > 0, `flag` float32 labels follow (the header's own label
field is then 0); then the encoded image.

Header record convention (insightface): when record 0 has flag > 0 and labels (a, b), the
images are records 1 .. a-1 and records a .. b-1 describe the identities, one each, in label
order, with labels (first, end): the range of that identity's image records. Otherwise every
record is an image. `image_keys` applies the convention.

Errors are `RecordError`s (ValueErrors) naming the file and the record key and offset, or the
`.idx` file and line.
"""
import dataclasses
import math
import os
import struct

import numpy as np

from input_pipeline import files
from input_pipeline.readers import images as images_lib

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
_PART_HEAD = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")
IR_HEADER_SIZE = _IR_HEADER.size  # 24 bytes
# Continuation flags of a part.
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3


class RecordError(ValueError):
  """A malformed .rec or .idx file; the message names the file and where."""


@dataclasses.dataclass(frozen=True)
class IRHeader:
  """The header of a record: `label` is a float, or a tuple of `flag` floats when flag > 0."""
  flag: int
  label: float | tuple
  id: int
  id2: int

  @property
  def first_label(self):
    """The scalar label, or the first of several (insightface's identity of an image)."""
    return self.label[0] if isinstance(self.label, tuple) else self.label


def pack(label, image=b"", id=0, id2=0):  # pylint: disable=redefined-builtin
  """The payload of a record: IRHeader (+ label array), then the encoded image bytes."""
  if np.ndim(label) == 0:
    return _IR_HEADER.pack(0, float(label), id, id2) + bytes(image)
  labels = np.asarray(label, "<f4").ravel()
  return _IR_HEADER.pack(labels.size, 0.0, id, id2) + labels.tobytes() + bytes(image)


def unpack(payload, where="record"):
  """(IRHeader, image bytes) of a record payload; `where` names it in errors."""
  if len(payload) < IR_HEADER_SIZE:
    raise RecordError(f"{where}: {len(payload)} bytes, shorter than the {IR_HEADER_SIZE}-byte "
                      f"IRHeader")
  flag, label, id_, id2 = _IR_HEADER.unpack_from(payload)
  start = IR_HEADER_SIZE
  if flag > 0:
    end = start + 4 * flag
    if len(payload) < end:
      raise RecordError(f"{where}: header flag {flag} announces {flag} labels, but the record "
                        f"has only {len(payload)} bytes")
    label = tuple(float(x) for x in np.frombuffer(payload[start:end], "<f4"))
    start = end
  return IRHeader(flag, label, id_, id2), payload[start:]


def _padded(length):
  return (length + 3) & ~3


def _parts(payload):
  """[(flag, bytes)] of one record: cut at the magic word where it sits 4-byte aligned."""
  parts, begin = [], 0
  for i in range(0, len(payload) - len(payload) % 4, 4):
    if payload[i:i + 4] == _MAGIC_BYTES:
      parts.append((_FIRST if begin == 0 else _MIDDLE, payload[begin:i]))
      begin = i + 4
  parts.append((_WHOLE if begin == 0 else _LAST, payload[begin:]))
  return parts


def _write_record(stream, payload):
  """Writes one record; returns its size in bytes."""
  size = 0
  for flag, data in _parts(payload):
    if len(data) > _LENGTH_MASK:
      raise ValueError(f"a record part of {len(data)} bytes is over the format's limit "
                       f"({_LENGTH_MASK})")
    stream.write(_PART_HEAD.pack(MAGIC, (flag << _LENGTH_BITS) | len(data)))
    stream.write(data)
    stream.write(b"\0" * (_padded(len(data)) - len(data)))
    size += _PART_HEAD.size + _padded(len(data))
  return size


def _identity_ranges(labels):
  """[(label, first, end)] of the contiguous runs of each label, in label order."""
  runs = []
  for i, label in enumerate(labels):
    if runs and runs[-1][0] == label:
      runs[-1][2] = i + 1
    else:
      runs.append([label, i, i + 1])
  if len({run[0] for run in runs}) != len(runs):
    raise ValueError("with header_record=True the images of each identity must be "
                     "contiguous (sort them by label)")
  return sorted(tuple(run) for run in runs)


def write_rec(prefix, images_bytes, labels, header_record=True):
  """Writes `<prefix>.rec` and `<prefix>.idx`; returns their paths.

  images_bytes: encoded images; labels: their identities (numbers). With `header_record`
  the file follows insightface's convention (module docstring): record 0, the images as
  records 1..N, then one range record per identity (each identity's images contiguous).
  Otherwise the images are records 0..N-1.
  """
  images_bytes, labels = list(images_bytes), [float(label) for label in labels]
  if len(images_bytes) != len(labels):
    raise ValueError(f"{len(images_bytes)} images but {len(labels)} labels")
  if header_record:
    ranges = _identity_ranges(labels)
    first_identity = len(images_bytes) + 1
    payloads = [pack((first_identity, first_identity + len(ranges)))]
    payloads += [pack(label, image, id=i + 1)
                 for i, (image, label) in enumerate(zip(images_bytes, labels))]
    payloads += [pack((first + 1, end + 1), id=first_identity + k)
                 for k, (_, first, end) in enumerate(ranges)]
  else:
    payloads = [pack(label, image, id=i)
                for i, (image, label) in enumerate(zip(images_bytes, labels))]
  rec_path, idx_path = f"{prefix}.rec", f"{prefix}.idx"
  with files.open(rec_path, "wb") as rec, files.open(idx_path, "w", encoding="utf-8") as idx:
    offset = 0  # counted: not every filesystem's writable files tell() (ram:// does not)
    for key, payload in enumerate(payloads):
      idx.write(f"{key}\t{offset}\n")
      offset += _write_record(rec, payload)
  return rec_path, idx_path


def read_idx(path, rec_size=None, rec_path="the .rec file"):
  """{key: offset} of an .idx file, in file order; RecordErrors name the file and line.

  With `rec_size` (bytes of `rec_path`) every line is checked against it, read later or not:
  an offset whose part header would not fit in the file is an error here.
  """
  path = os.fspath(path)
  if not files.isfile(path):
    raise FileNotFoundError(f"index file not found: {path}")
  offsets = {}
  with files.open(path, encoding="utf-8") as lines:
    for line_number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      row = images_lib.Row(path, line_number, line.split())
      if len(row.fields) != 2:
        raise RecordError(str(row.error(
            f"expected 'key<TAB>offset', got {len(row.fields)} fields: {line.strip()!r}")))
      try:
        key, offset = row.integer(0, "key"), row.integer(1, "offset")
      except ValueError as error:
        raise RecordError(str(error)) from None
      if offset < 0:
        raise RecordError(str(row.error(f"negative offset {offset}")))
      if key in offsets:
        raise RecordError(str(row.error(f"second entry for key {key}")))
      if rec_size is not None and offset + _PART_HEAD.size > rec_size:
        raise RecordError(str(row.error(
            f"record {key} at offset {offset} is past the end of {rec_path} ({rec_size} "
            f"bytes): the .idx does not belong to this .rec, or the .rec is truncated")))
      offsets[key] = offset
  return offsets


class Reader:
  """Random access to the records of a .rec file by the keys of its .idx file.

  Without an .idx the records are found by one sequential pass and keyed 0, 1, ... in file
  order. Reads are positioned (`files.RandomAccessFile`: os.pread on local files), so threads
  may share one Reader.
  """

  def __init__(self, rec_path, idx_path=None):
    self._file = None
    self.rec_path = os.fspath(rec_path)
    if not files.isfile(self.rec_path):
      raise FileNotFoundError(f"record file not found: {self.rec_path}")
    self.idx_path = None if idx_path is None else os.fspath(idx_path)
    self.size = files.getsize(self.rec_path)
    self._file = files.RandomAccessFile(self.rec_path)
    if self.idx_path is None:
      self._offsets = {key: offset for key, (offset, _) in enumerate(self.scan())}
    else:
      self._offsets = read_idx(self.idx_path, self.size, self.rec_path)

  def close(self):
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self):
    return self

  def __exit__(self, *unused_exc):
    self.close()

  def __del__(self):
    self.close()

  def __len__(self):
    return len(self._offsets)

  def __contains__(self, key):
    return key in self._offsets

  def keys(self):
    """The record keys in .idx order."""
    return list(self._offsets)

  def offset(self, key):
    if key not in self._offsets:
      where = self.idx_path or self.rec_path
      raise RecordError(f"{where}: no record with key {key}")
    return self._offsets[key]

  def where(self, key):
    """The record's description in errors: file, key, offset and where the offset came from."""
    source = f", from {self.idx_path}" if self.idx_path else ""
    return f"{self.rec_path}: record {key} (offset {self.offset(key)}{source})"

  def _read_at(self, offset, where):
    """(payload, offset after the record) of the record whose first part is at `offset`."""
    if offset >= self.size:
      raise RecordError(f"{where}: the offset is past the end of the file ({self.size} bytes)")
    parts, first = [], True
    while True:
      head = self._file.pread(_PART_HEAD.size, offset)
      if len(head) < _PART_HEAD.size:
        raise RecordError(f"{where}: truncated record: the part at offset {offset} has "
                          f"{len(head)} of its {_PART_HEAD.size} header bytes")
      magic, word = _PART_HEAD.unpack(head)
      if magic != MAGIC:
        raise RecordError(f"{where}: bad magic word 0x{magic:08x} at offset {offset} "
                          f"(expected 0x{MAGIC:08x})")
      flag, length = word >> _LENGTH_BITS, word & _LENGTH_MASK
      if flag not in ((_WHOLE, _FIRST) if first else (_MIDDLE, _LAST)):
        raise RecordError(f"{where}: continuation flag {flag} at offset {offset} out of "
                          f"sequence")
      data = self._file.pread(length, offset + _PART_HEAD.size)
      if len(data) < length:
        raise RecordError(f"{where}: truncated record: the part at offset {offset} announces "
                          f"{length} bytes, the file holds {len(data)}")
      parts.append(data)
      offset += _PART_HEAD.size + _padded(length)
      if flag in (_WHOLE, _LAST):
        return _MAGIC_BYTES.join(parts), offset
      first = False

  def read(self, key):
    """The payload (IRHeader + image) of the record with this key."""
    return self._read_at(self.offset(key), self.where(key))[0]

  def read_unpacked(self, key):
    """(IRHeader, image bytes) of the record with this key."""
    where = self.where(key)
    return unpack(self._read_at(self.offset(key), where)[0], where)

  def read_header(self, key):
    """The IRHeader of a record (reads its start only unless the record has several parts)."""
    offset, where = self.offset(key), self.where(key)
    head = self._file.pread(_PART_HEAD.size + IR_HEADER_SIZE, offset)
    if len(head) == _PART_HEAD.size + IR_HEADER_SIZE:
      magic, word = _PART_HEAD.unpack_from(head)
      length = word & _LENGTH_MASK
      flag, label, id_, id2 = _IR_HEADER.unpack_from(head, _PART_HEAD.size)
      whole = magic == MAGIC and word >> _LENGTH_BITS == _WHOLE
      if (whole and flag == 0 and length >= IR_HEADER_SIZE
          and offset + _PART_HEAD.size + length <= self.size):
        return IRHeader(0, label, id_, id2)
    return unpack(self._read_at(offset, where)[0], where)[0]

  def scan(self):
    """Yields (offset, payload) of every record in file order, without the .idx."""
    offset, count = 0, 0
    while offset < self.size:
      payload, end = self._read_at(offset, f"{self.rec_path}: record #{count} (offset "
                                            f"{offset}, sequential scan)")
      yield offset, payload
      offset, count = end, count + 1


def image_keys(reader, require_all=True):
  """The keys of the image records, by the header record convention (module docstring).

  require_all=False keeps announced keys that the .idx lacks (a caller lists them).
  """
  if 0 in reader:
    header = reader.read_header(0)
    if header.flag > 0:
      end = header.label[0]
      if not (math.isfinite(end) and end == int(end) and end >= 1):
        raise RecordError(f"{reader.rec_path}: header record 0 has labels {header.label}; "
                          f"expected (first identity record, end) as whole numbers")
      keys = list(range(1, int(end)))
      missing = [key for key in keys if key not in reader]
      if missing and require_all:
        raise RecordError(f"{reader.idx_path or reader.rec_path}: header record 0 announces "
                          f"images 1..{int(end) - 1} but records {missing[:5]} are missing"
                          + (" ..." if len(missing) > 5 else ""))
      return keys
  return reader.keys()
