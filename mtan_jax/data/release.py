"""The published MTAN releases of NYUv2 and CityScapes on disk, checked before anything is built.

NYUv2: `ROOT/{train,val}/{image,label,depth,normal}/<i>.npy`, i = 0..N-1 (795 train, 654
val), image (288, 384, 3) float in [0, 1], label (288, 384) integers in {-1, 0..12} (stored as
floats), depth (288, 384, 1) metres with 0 = invalid, normal (288, 384, 3) unit vectors, 0 = invalid.

CityScapes: `ROOT/{train,val}/{image,label_7,label_19,depth}/<i>.npy` at 128x256 or 256x512 (2975
train, 500 val), labels in {-1, 0..6} and {-1, 0..18}, depth (H, W, 1) inverse depth, 0 = invalid.

Every problem is reported with the file, the field, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import stat

import numpy as np


class ReleaseError(ValueError):
  """A release folder or file that does not have the expected layout, shape, dtype or values."""


@dataclasses.dataclass(frozen=True)
class Field:
  """One per-example array of a release: its folder and what it must hold.

  Attributes:
    name: folder name, also the feature name (image, label, label_7, label_19, depth, normal).
    channels: trailing channel count, or None for a 2-D map.
    kind: "image" (float in [0, 1]), "label" (integers in {-1, 0..classes-1}), "depth" (finite,
      >= 0), "normal" (finite).
    classes: class count for labels.
  """

  name: str
  channels: int | None
  kind: str
  classes: int = 0

  def shape(self, height: int, width: int) -> tuple[int, ...]:
    return (height, width) if self.channels is None else (height, width, self.channels)

  @property
  def storage_dtype(self):
    return np.int8 if self.kind == "label" else np.float32


@dataclasses.dataclass(frozen=True)
class Layout:
  """A release: its fields, its split folders and the resolutions it comes in."""

  name: str
  fields: tuple[Field, ...]
  splits: tuple[str, ...] = ("train", "val")

  def describe(self, root) -> str:
    return (f"{root}/{{{','.join(self.splits)}}}/{{{','.join(f.name for f in self.fields)}}}"
            f"/<i>.npy with i = 0..N-1")


NYUV2 = Layout("nyuv2", (Field("image", 3, "image"), Field("label", None, "label", 13),
                         Field("depth", 1, "depth"), Field("normal", 3, "normal")))
CITYSCAPES = Layout("cityscapes", (Field("image", 3, "image"), Field("label_7", None, "label", 7),
                                   Field("label_19", None, "label", 19),
                                   Field("depth", 1, "depth")))
LAYOUTS = {"nyuv2": NYUV2, "cityscapes": CITYSCAPES}

_INDEX = re.compile(r"^(0|[1-9][0-9]*)\.npy$")


def _header(path: pathlib.Path) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype from a .npy header, without reading the data."""
  try:
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
      shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype)
  except Exception as e:  # a truncated or foreign file
    raise ReleaseError(f"{path}: not a readable .npy file ({e})") from e


def _dtype_ok(field: Field, dtype: np.dtype) -> bool:
  if field.kind == "label":
    return dtype.kind in "fi"  # the release stores labels as floats; integers are accepted too
  return dtype.kind == "f"


@dataclasses.dataclass(frozen=True)
class ReleaseFiles:
  """What a release folder holds, from names and `stat` alone (cheap enough for every run).

  Attributes:
    root: the folder, resolved (absolute, symbolic links followed).
    counts: examples per split folder ({"train": 795, "val": 654}).
    files: every file as `split/field/<i>.npy` -> (size in bytes, modification time in ns).
  """

  root: pathlib.Path
  counts: dict[str, int]
  files: dict[str, tuple[int, int]]

  @property
  def counts_text(self) -> str:
    """"795 train + 654 val"."""
    return " + ".join(f"{n} {split}" for split, n in self.counts.items())

  @property
  def fingerprint(self) -> str:
    """A hash of every file's name, size and modification time: another folder or a file changed
    (rewritten, touched, resized) gives another fingerprint."""
    digest = hashlib.sha256()
    for name in sorted(self.files):
      size, mtime = self.files[name]
      digest.update(f"{name}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()

  def changes(self, recorded: dict[str, list[int]]) -> list[str]:
    """What differs from an earlier listing (`files` as JSON), one readable line per file."""
    out = []
    for name in sorted(set(recorded) | set(self.files)):
      was, now = recorded.get(name), self.files.get(name)
      if was is None:
        out.append(f"{self.root / name}: added")
      elif now is None:
        out.append(f"{self.root / name}: removed")
      elif tuple(was) != tuple(now):
        out.append(f"{self.root / name}: changed (size {was[0]} -> {now[0]} bytes, modified "
                   f"{'at another time' if was[1] != now[1] else 'at the same time'})")
    return out


def list_files(layout: Layout, root) -> ReleaseFiles:
  """Checks that `root` has the layout's split and field folders, each field folder holding the
  same `<i>.npy` files (i = 0..N-1), every one a readable regular file; lists them with their sizes
  and modification times. Reads no file's contents."""
  given = pathlib.Path(root).expanduser()
  if given.exists() and not given.is_dir():
    raise ReleaseError(f"{layout.name} release folder {given} is a file, not a folder; expected "
                       f"{layout.describe(given)}")
  if not given.is_dir():
    raise ReleaseError(f"{layout.name} release folder {given} does not exist; expected "
                       f"{layout.describe(given)}")
  root = given.resolve()
  counts, files = {}, {}
  for split in layout.splits:
    split_dir = root / split
    if not split_dir.is_dir():
      raise ReleaseError(f"{layout.name} release: split folder {split_dir} is missing; expected "
                         f"{layout.describe(root)}")
    entries = {}
    for field in layout.fields:
      folder = split_dir / field.name
      if not folder.is_dir():
        raise ReleaseError(f"{layout.name} release: folder {folder} (field {field.name!r}) is "
                           f"missing; expected {layout.describe(root)}")
      found = {e.name: e for e in os.scandir(folder) if e.name.endswith(".npy")}
      odd = sorted(n for n in found if not _INDEX.match(n))
      if odd:
        raise ReleaseError(f"{folder}: expected files named <i>.npy (i = 0, 1, ...), found "
                           f"{odd[:5]}")
      entries[field.name] = {int(n[:-4]): e for n, e in found.items()}
    count = _check_same_examples(layout, split_dir, {f: set(e) for f, e in entries.items()})
    counts[split] = count
    for field in layout.fields:
      for i in range(count):
        entry = entries[field.name][i]
        try:
          info = entry.stat()  # follows a symbolic link
        except OSError as error:
          raise ReleaseError(f"{entry.path}: field {field.name!r} cannot be read "
                             f"({error.strerror or error})") from error
        if not stat.S_ISREG(info.st_mode) or not os.access(entry.path, os.R_OK):
          what = "not a regular file" if not stat.S_ISREG(info.st_mode) else "not readable"
          raise ReleaseError(f"{entry.path}: field {field.name!r} cannot be read ({what})")
        files[f"{split}/{field.name}/{i}.npy"] = (info.st_size, info.st_mtime_ns)
  return ReleaseFiles(root, counts, files)


def _check_same_examples(layout: Layout, split_dir: pathlib.Path,
                         indices: dict[str, set[int]]) -> int:
  """The example count of a split whose field folders hold the same indices 0..N-1."""
  count = len(indices[layout.fields[0].name])
  if count == 0:
    raise ReleaseError(f"{split_dir / layout.fields[0].name}: no <i>.npy files; expected "
                       f"{layout.describe(split_dir.parent)}")
  expected = set(range(count))
  problems = []
  for field in layout.fields:
    missing = sorted(expected - indices[field.name])
    extra = sorted(indices[field.name] - expected)
    if missing:
      problems.append(f"{split_dir / field.name}: missing {len(missing)} file(s), e.g. "
                      f"{[f'{i}.npy' for i in missing[:5]]}")
    if extra:
      problems.append(f"{split_dir / field.name}: {len(extra)} file(s) beyond the {count} images "
                      f"of {split_dir / layout.fields[0].name}, e.g. "
                      f"{[f'{i}.npy' for i in extra[:5]]}")
  if problems:
    raise ReleaseError(f"{layout.name} release, split {split_dir.name!r}: the field folders do "
                       f"not hold the same examples (counted {count} in "
                       f"{layout.fields[0].name}/):\n  " + "\n  ".join(problems))
  return count


def scan(layout: Layout, root, height: int, width: int) -> ReleaseFiles:
  """`list_files`, then every file's .npy header (shape, dtype) against the layout.

  Reads only the headers; values are checked by `load_example` while building.
  """
  listing = list_files(layout, root)
  for split, count in listing.counts.items():
    for i in range(count):
      for field in layout.fields:
        path = listing.root / split / field.name / f"{i}.npy"
        shape, dtype = _header(path)
        want = field.shape(height, width)
        if shape != want:
          raise ReleaseError(f"{path}: field {field.name!r} expected shape {want}, found {shape}")
        if not _dtype_ok(field, dtype):
          wanted = "a float or integer dtype" if field.kind == "label" else "a float dtype"
          raise ReleaseError(f"{path}: field {field.name!r} expected {wanted}, found {dtype}")
  return listing


def check_values(field: Field, array: np.ndarray, where: str) -> np.ndarray:
  """Checks one field's values and returns them in the storage dtype (int8 labels, float32 else)."""
  if field.kind == "label":
    bad = ~np.isfinite(array) if array.dtype.kind == "f" else np.zeros(array.shape, bool)
    finite = np.where(bad, 0, array)
    bad |= (finite != np.round(finite)) | (finite < -1) | (finite >= field.classes)
    if bad.any():
      found = np.unique(array[bad])[:8]
      raise ReleaseError(f"{where}: field {field.name!r} expected labels in "
                         f"{{-1, 0..{field.classes - 1}}}, found {found.tolist()} at "
                         f"{int(bad.sum())} pixel(s)")
    return finite.astype(np.int8)
  values = array.astype(np.float32)
  if not np.all(np.isfinite(values)):
    raise ReleaseError(f"{where}: field {field.name!r} expected finite values, found "
                       f"{int(np.sum(~np.isfinite(values)))} NaN or inf")
  if field.kind == "image" and (values.min() < 0 or values.max() > 1):
    raise ReleaseError(f"{where}: field 'image' expected values in [0, 1], found "
                       f"[{values.min():g}, {values.max():g}]")
  if field.kind == "depth" and values.min() < 0:
    raise ReleaseError(f"{where}: field 'depth' expected values >= 0 (0 = invalid), found "
                       f"{values.min():g}")
  return values


def load_example(layout: Layout, root, split: str, index: int) -> dict[str, np.ndarray]:
  """Reads and checks example `index` of a split (after `scan`)."""
  example = {}
  for field in layout.fields:
    path = pathlib.Path(root) / split / field.name / f"{index}.npy"
    try:
      array = np.load(path, allow_pickle=False)
    except Exception as e:
      raise ReleaseError(f"{path}: field {field.name!r} could not be read ({e})") from e
    example[field.name] = check_values(field, array, str(path))
  return example
