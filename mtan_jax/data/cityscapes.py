"""CityScapes from the official files, as users unpack them, made into what the MTAN release holds.

    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png   RGB, 8 bit
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png    label ids 0..33
    disparity/{train,val}/<city>/<city>_<seq>_<frame>_disparity.png       16 bit, 0 = invalid

(leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip, disparity_trainvaltest.zip.) Each example
becomes the release's fields at the chosen resolution: "image" RGB in [0, 1] (bilinear resize),
"label_19" the 19 train ids and "label_7" their 7 categories (flat, construction, object, nature,
sky, human, vehicle), -1 for every label the benchmark ignores (nearest resize), and "depth" the
inverse depth as the release stores it, the 16-bit disparity code / 65535 (nearest resize; 0 =
invalid). Reading PNGs needs Pillow. `builders.MtanCityscapesOfficial` builds a dataset from them.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np

from mtan_jax.data import release
from mtan_jax.data.release import ReleaseError

SPLITS = ("train", "val")
# The official label ids (cityscapesScripts' labels.py) and their train ids; -1: ignored.
TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
            25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
IGNORED_IDS = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)
# The category of each train id: flat, construction, object, nature, sky, human, vehicle (0..6).
CATEGORY = (0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6)
DISPARITY_SCALE = 65535.0  # the release's inverse depth: the 16-bit disparity code / 65535

_NAME = re.compile(r"^(?P<key>[A-Za-z0-9-]+_\d+_\d+)_leftImg8bit\.png$")


def _lookup() -> np.ndarray:
  """label id (0..255) -> train id, -1 ignored, -2 not a CityScapes label id."""
  table = np.full(256, -2, np.int16)
  table[list(IGNORED_IDS)] = -1
  for label_id, train_id in TRAIN_ID.items():
    table[label_id] = train_id
  return table


_TRAIN_IDS = _lookup()


@dataclasses.dataclass(frozen=True)
class Example:
  """The three files of one frame."""

  image: pathlib.Path
  labels: pathlib.Path
  disparity: pathlib.Path


def is_official_layout(root) -> bool:
  """Whether `root` holds the official folders (leftImg8bit/ next to gtFine/ and disparity/)."""
  return (pathlib.Path(root) / "leftImg8bit").is_dir()


def pair_files(root, split: str) -> list[Example]:
  """The frames of one split, sorted by city and name (as the author's preprocessing), each with
  its label and disparity files; ReleaseError naming the first image whose counterpart is missing,
  or a missing folder."""
  root = pathlib.Path(root)
  folders = {kind: root / kind / split for kind in ("leftImg8bit", "gtFine", "disparity")}
  for kind, folder in folders.items():
    if not folder.is_dir():
      raise ReleaseError(f"cityscapes official layout: folder {folder} is missing; expected "
                         f"{root}/{{leftImg8bit,gtFine,disparity}}/{{train,val}}/<city>/*.png")
  examples = []
  for city in sorted(p.name for p in folders["leftImg8bit"].iterdir() if p.is_dir()):
    for image in sorted((folders["leftImg8bit"] / city).glob("*_leftImg8bit.png")):
      match = _NAME.match(image.name)
      if match is None:
        raise ReleaseError(f"{image}: expected a name <city>_<sequence>_<frame>_leftImg8bit.png")
      key = match["key"]
      labels = folders["gtFine"] / city / f"{key}_gtFine_labelIds.png"
      disparity = folders["disparity"] / city / f"{key}_disparity.png"
      for what, path in (("labels", labels), ("disparity", disparity)):
        if not path.is_file():
          raise ReleaseError(f"{image}: its {what} file {path} is missing")
      examples.append(Example(image, labels, disparity))
  if not examples:
    raise ReleaseError(f"{folders['leftImg8bit']}: no <city>/*_leftImg8bit.png images")
  return examples


def train_ids(label_ids: np.ndarray, where: str) -> np.ndarray:
  """Official label ids `[H, W]` -> 19 train ids (int8, -1 ignored); ReleaseError naming `where`
  and the ids for values that are no CityScapes label id."""
  mapped = _TRAIN_IDS[label_ids.astype(np.int64).clip(0, 255)]
  bad = (mapped == -2) | (label_ids < 0) | (label_ids > 255)
  if bad.any():
    raise ReleaseError(f"{where}: expected CityScapes label ids 0..33, found "
                       f"{np.unique(label_ids[bad])[:8].tolist()} at {int(bad.sum())} pixel(s)")
  return mapped.astype(np.int8)


def categories(train: np.ndarray) -> np.ndarray:
  """19 train ids -> their 7 categories (int8, -1 stays -1)."""
  table = np.asarray(CATEGORY + (-1,), np.int8)  # index -1 -> the appended -1
  return table[train.astype(np.int64)]


def inverse_depth(disparity: np.ndarray) -> np.ndarray:
  """16-bit disparity codes `[H, W]` -> inverse depth `[H, W, 1]` float32 as the release stores
  it (code / 65535; 0 stays 0 = invalid)."""
  return (disparity.astype(np.float32) / DISPARITY_SCALE)[..., None]


def load(example: Example, height: int, width: int) -> dict[str, np.ndarray]:
  """One frame as the release's fields at `height` x `width`."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  def read(path: pathlib.Path, mode: str | None = None):
    try:
      with Image.open(path) as picture:
        picture.load()
        return picture if mode is None else picture.convert(mode)
    except (OSError, ValueError) as error:
      raise ReleaseError(f"{path}: not a readable PNG ({error})") from error

  image = read(example.image, "RGB")
  labels, disparity = read(example.labels), read(example.disparity)
  for path, picture in ((example.labels, labels), (example.disparity, disparity)):
    if picture.size != image.size:
      raise ReleaseError(f"{path}: expected the size of {example.image.name}, "
                         f"{image.size[0]}x{image.size[1]}, found "
                         f"{picture.size[0]}x{picture.size[1]}")
  rgb = np.asarray(image.resize((width, height), Image.BILINEAR), np.float32) / 255.0
  ids = np.asarray(labels.resize((width, height), Image.NEAREST))
  codes = np.asarray(disparity.resize((width, height), Image.NEAREST))
  label_19 = train_ids(ids, str(example.labels))
  return {"image": rgb, "label_19": label_19, "label_7": categories(label_19),
          "depth": inverse_depth(codes)}


def list_files(root) -> release.ReleaseFiles:
  """`release.ReleaseFiles` of the official layout: every frame's three files with their sizes and
  modification times, per split ("train", "val"); ReleaseError as `pair_files`. Opens no file."""
  root = pathlib.Path(root).expanduser().resolve()
  counts, files = {}, {}
  for split in SPLITS:
    examples = pair_files(root, split)
    counts[split] = len(examples)
    for example in examples:
      for path in (example.image, example.labels, example.disparity):
        try:
          info = path.stat()
        except OSError as error:
          raise ReleaseError(f"{path}: cannot be read ({error.strerror or error})") from error
        files[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
  return release.ReleaseFiles(root, counts, files)
