"""The published MTAN releases of NYUv2 and CityScapes on disk, checked before anything is built.

NYUv2 (spec §13): `ROOT/{train,val}/{image,label,depth,normal}/<i>.npy`, i = 0..N-1 (795 train, 654
val), image (288, 384, 3) float in [0, 1], label (288, 384) integers in {-1, 0..12} (stored as
floats), depth (288, 384, 1) metres with 0 = invalid, normal (288, 384, 3) unit vectors, 0 = invalid.

CityScapes: `ROOT/{train,val}/{image,label_7,label_19,depth}/<i>.npy` at 128x256 or 256x512 (2975
train, 500 val), labels in {-1, 0..6} and {-1, 0..18}, depth (H, W, 1) inverse depth, 0 = invalid.

Every problem is reported with the file, the field, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

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


def scan(layout: Layout, root, split: str, height: int, width: int) -> int:
  """Checks the files of one split (names, presence, shapes, dtypes) and returns N.

  Reads only the .npy headers; values are checked by `load_example` while building.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ReleaseError(f"{layout.name} release folder {root} does not exist; expected "
                       f"{layout.describe(root)}")
  split_dir = root / split
  if not split_dir.is_dir():
    raise ReleaseError(f"{layout.name} release: split folder {split_dir} is missing; expected "
                       f"{layout.describe(root)}")
  indices = {}
  for field in layout.fields:
    folder = split_dir / field.name
    if not folder.is_dir():
      raise ReleaseError(f"{layout.name} release: folder {folder} (field {field.name!r}) is "
                         f"missing; expected {layout.describe(root)}")
    names = [p.name for p in folder.iterdir() if p.suffix == ".npy"]
    odd = sorted(n for n in names if not _INDEX.match(n))
    if odd:
      raise ReleaseError(f"{folder}: expected files named <i>.npy (i = 0, 1, ...), found "
                         f"{odd[:5]}")
    indices[field.name] = {int(n[:-4]) for n in names}
  count = len(indices[layout.fields[0].name])
  if count == 0:
    raise ReleaseError(f"{split_dir / layout.fields[0].name}: no <i>.npy files; expected "
                       f"{layout.describe(root)}")
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
    raise ReleaseError(f"{layout.name} release, split {split!r}: the field folders do not hold "
                       f"the same examples (counted {count} in "
                       f"{layout.fields[0].name}/):\n  " + "\n  ".join(problems))
  for i in range(count):
    for field in layout.fields:
      path = split_dir / field.name / f"{i}.npy"
      shape, dtype = _header(path)
      want = field.shape(height, width)
      if shape != want:
        raise ReleaseError(f"{path}: field {field.name!r} expected shape {want}, found {shape}")
      if not _dtype_ok(field, dtype):
        wanted = "a float or integer dtype" if field.kind == "label" else "a float dtype"
        raise ReleaseError(f"{path}: field {field.name!r} expected {wanted}, found {dtype}")
  return count


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
