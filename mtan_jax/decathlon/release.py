"""The Visual Decathlon's 72-pixel release on disk, checked before anything is built.

    ROOT/<dataset>/train/<class folder>/<image>    e.g. decathlon-1.0-data/aircraft/train/0001/...
    ROOT/<dataset>/val/<class folder>/<image>
    ROOT/<dataset>/test/.../<image>                (no labels: the challenge server holds them)

(decathlon-1.0-data.tar and decathlon-1.0-data-imagenet.tar, unpacked.) As the reference reads them
(torchvision's ImageFolder): a class is a folder of `train`, classes in sorted order (label = its
position), an image any file with an image extension below it; `val` has the same class folders.
Images are RGB, resized so that the shorter side is 72 pixels (torchvision's Resize(72): nothing
to do for the release's own images) and kept whole, so that training can crop them at random.

Every problem names the folder or file, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import stat

import numpy as np

from mtan_jax import decathlon
from mtan_jax.data.release import ReleaseError, ReleaseFiles

SPLITS = ("train", "val", "test")
# torchvision's ImageFolder extensions (IMG_EXTENSIONS), compared in lower case.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def describe(root, dataset: str = "<dataset>") -> str:
  return (f"{root}/{dataset}/{{train,val}}/<class folder>/<image> and "
          f"{root}/{dataset}/test/.../<image>")


@dataclasses.dataclass(frozen=True)
class DatasetFiles:
  """One dataset of the release, from names and `stat` alone (cheap enough for every run).

  Attributes:
    listing: the files (`split/...` relative to the dataset's folder -> (size, mtime in ns)) and
      the example count per split, as the dense releases' listing.
    classes: the class folders of `train`, sorted: class index -> folder name.
    examples: per split, the images in sorted order as (path relative to the release root, e.g.
      "aircraft/train/0001/0000001.jpg", class index; -1 in test).
  """

  listing: ReleaseFiles
  dataset: str
  classes: tuple[str, ...]
  examples: dict[str, tuple[tuple[str, int], ...]]


def _images_below(folder: pathlib.Path) -> list[pathlib.Path]:
  """Every image file below `folder` (symbolic links followed), in sorted order."""
  found = []
  for directory, subfolders, names in os.walk(folder, followlinks=True):
    subfolders.sort()
    found += [pathlib.Path(directory) / n for n in sorted(names)
              if n.lower().endswith(EXTENSIONS)]
  return found


def _stat(path: pathlib.Path) -> tuple[int, int]:
  try:
    info = path.stat()
  except OSError as error:
    raise ReleaseError(f"{path}: cannot be read ({error.strerror or error})") from error
  if not stat.S_ISREG(info.st_mode) or not os.access(path, os.R_OK):
    raise ReleaseError(f"{path}: cannot be read "
                       f"({'not a regular file' if not stat.S_ISREG(info.st_mode) else 'not readable'})")
  return info.st_size, info.st_mtime_ns


def list_files(root, dataset: str, classes: int | None = None) -> DatasetFiles:
  """Checks `root/<dataset>` for the release's layout: `train`, `val` and `test` folders; `train`
  with `classes` class folders (default: the dataset's own count), each holding at least one
  image; `val` with class folders among those of `train`; `test` with at least one image. Lists
  every image with its size and modification time; opens none."""
  decathlon.get(dataset)  # a known dataset name, or ValueError naming the ten
  given = pathlib.Path(root).expanduser()
  if not given.is_dir():
    what = "is a file, not a folder" if given.exists() else "does not exist"
    raise ReleaseError(f"Decathlon release folder {given} {what}; expected {describe(given)}")
  root = given.resolve()
  folder = root / dataset
  if not folder.is_dir():
    raise ReleaseError(f"Decathlon release: dataset folder {folder} is missing; expected "
                       f"{describe(root, dataset)}")
  expected = decathlon.get(dataset).classes if classes is None else classes
  class_folders = tuple(sorted(e.name for e in os.scandir(folder / "train") if e.is_dir())) \
      if (folder / "train").is_dir() else ()
  counts, files, examples = {}, {}, {}
  for split in SPLITS:
    split_dir = folder / split
    if not split_dir.is_dir():
      raise ReleaseError(f"Decathlon release: split folder {split_dir} is missing; expected "
                         f"{describe(root, dataset)}")
    entries: list[tuple[str, int]] = []
    if split == "test":
      entries = [(str(p.relative_to(root)), -1) for p in _images_below(split_dir)]
    else:
      found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
      if split == "train" and len(found) != expected:
        raise ReleaseError(f"{split_dir}: expected {expected} class folders ({dataset} has "
                           f"{expected} classes), found {len(found)}")
      unknown = sorted(set(found) - set(class_folders))
      if unknown:
        raise ReleaseError(f"{split_dir}: class folder(s) {unknown[:5]} are not among the "
                           f"{len(class_folders)} class folders of {folder / 'train'}")
      for name in found:
        images = _images_below(split_dir / name)
        if split == "train" and not images:
          raise ReleaseError(f"{split_dir / name}: expected images of class {name!r} "
                             f"({', '.join(EXTENSIONS)}), found none")
        label = class_folders.index(name)
        entries += [(str(p.relative_to(root)), label) for p in images]
    if not entries:
      raise ReleaseError(f"{split_dir}: expected images ({', '.join(EXTENSIONS)}), found none")
    for name, _ in entries:
      files[name.removeprefix(f"{dataset}/")] = _stat(root / name)
    counts[split] = len(entries)
    examples[split] = tuple(entries)
  return DatasetFiles(ReleaseFiles(folder, counts, files), dataset, class_folders, examples)


def resized_size(width: int, height: int, size: int = decathlon.IMAGE_SIZE) -> tuple[int, int]:
  """(width, height) after torchvision's Resize(size): the shorter side `size`, the longer one
  scaled and truncated (`int(size * long / short)`)."""
  if width <= height:
    return size, int(size * height / width)
  return int(size * width / height), size


def load_image(path, size: int = decathlon.IMAGE_SIZE) -> np.ndarray:
  """One image as RGB uint8 `[H, W, 3]` with its shorter side `size` (Pillow's bilinear resize
  when it is not already, as torchvision's Resize); ReleaseError names an unreadable file."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as picture:
      picture = picture.convert("RGB")
  except (OSError, ValueError, Image.DecompressionBombError) as error:
    raise ReleaseError(f"{path}: not a readable image ({error})") from error
  target = resized_size(*picture.size, size)
  if target != picture.size:
    picture = picture.resize(target, Image.BILINEAR)
  return np.asarray(picture, np.uint8)


def crop_offset(length: int, size: int, rng: np.random.Generator | None) -> int:
  """Where a `size` crop of a side of `length` starts: torchvision's RandomCrop (uniform over
  0..length-size) with `rng`, its CenterCrop (`int(round((length - size) / 2))`) without."""
  if length < size:
    raise ValueError(f"crop: expected a side of at least {size} pixels, found {length}")
  if rng is None:
    return int(round((length - size) / 2.0))
  return int(rng.integers(0, length - size + 1))


def crop(image: np.ndarray, size: int, rng: np.random.Generator | None) -> np.ndarray:
  """`[H, W, C]` -> `[size, size, C]`: a random crop with `rng`, the centre crop without."""
  top = crop_offset(image.shape[0], size, rng)
  left = crop_offset(image.shape[1], size, rng)
  return image[top:top + size, left:left + size]
