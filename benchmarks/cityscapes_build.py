"""How long building CityScapes from the official files takes, on a fake of the full release's size.

  python benchmarks/cityscapes_build.py                          # 2975 + 500 frames, 128x256
  python benchmarks/cityscapes_build.py --resolution=256x512
  python benchmarks/cityscapes_build.py --root=/tmp/cs --keep    # keep the fake to train on it

The fake has the official layout and sizes: `leftImg8bit/`, `gtFine/` and `disparity/` with
2975 train frames in 18 cities and 500 val frames in 3, each 2048x1024 (RGB, 8-bit label ids,
16-bit disparity codes). A few distinct frames (street-like structure plus sensor noise, valid
label ids, disparity with invalid pixels) are drawn once and copied to every frame's name, so each
file is read and decoded as a real one would be (`--links` hard-links them instead, to save the
disk: about 8 GiB of copies). Prints the sizes, the every-run check of the files (cold and warm),
the build through `builders.prepare` (as a training run builds it, caches dropped first where that
is allowed) and the check of the built dataset a second run does.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.release_check import drop_caches  # noqa: E402
from mtan_jax.data import builders, cityscapes  # noqa: E402

TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt",
                "hamburg", "hanover", "jena", "krefeld", "monchengladbach", "strasbourg",
                "stuttgart", "tubingen", "ulm", "weimar", "zurich")
VAL_CITIES = ("frankfurt", "lindau", "munster")
KINDS = (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds"), ("disparity", "disparity"))


def draw_frame(seed: int, height: int = 1024, width: int = 2048) -> dict[str, np.ndarray]:
  """One frame's three images: road, buildings, sky and cars as bands and boxes, with noise."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  horizon = height * (0.4 + 0.1 * rng.random())
  ids = np.where(y < horizon * 0.6, 23, np.where(y < horizon, 11, 7)).astype(np.uint8)  # sky, building, road
  ids[(y > horizon) & (x < width * 0.08)] = 8  # sidewalk
  for _ in range(12):  # cars, people, poles, vegetation
    label = rng.choice([26, 24, 17, 21, 20, 0])
    top, left = int(rng.uniform(horizon * 0.7, height * 0.9)), int(rng.uniform(0, width * 0.9))
    ids[top:top + int(rng.uniform(40, 200)), left:left + int(rng.uniform(20, 300))] = label
  palette = rng.integers(0, 256, (256, 3))
  rgb = palette[ids].astype(np.float32) + 20 * np.sin(x / 37.0 + y / 53.0)[..., None]
  rgb = (rgb + rng.normal(0, 3, rgb.shape)).clip(0, 255).astype(np.uint8)
  depth_m = np.where(y < horizon, 60.0, 2.0 + 3000.0 / np.maximum(y - horizon, 1.0))
  disparity = (256.0 * 0.209313 * 2262.52 / depth_m + 1.0)  # the official encoding
  disparity = (disparity + rng.normal(0, 8, disparity.shape)).clip(1, 32257).astype(np.uint16)
  disparity[rng.random(disparity.shape) < 0.15] = 0  # invalid pixels
  disparity[y < horizon * 0.6] = 0  # no disparity in the sky
  return {"leftImg8bit": Image.fromarray(rgb), "gtFine": Image.fromarray(ids),
          "disparity": Image.fromarray(disparity)}


def fake_official(root: pathlib.Path, frames: dict[str, int], distinct: int, links: bool) -> None:
  """The official layout with `frames` per split, each a copy (or hard link) of one of `distinct`
  drawn frames."""
  originals = root / "_originals"
  originals.mkdir(parents=True)
  drawn = []
  for seed in range(distinct):
    paths = {}
    for kind, _ in KINDS:
      paths[kind] = originals / f"{seed}_{kind}.png"
      draw_frame(seed)[kind].save(paths[kind])
    drawn.append(paths)
  place = os.link if links else shutil.copyfile
  for split, cities in (("train", TRAIN_CITIES), ("val", VAL_CITIES)):
    for i in range(frames[split]):
      city = cities[i * len(cities) // frames[split]]
      key = f"{city}_{i // 300:06d}_{i % 300 * 19:06d}"
      for kind, suffix in KINDS:
        folder = root / kind / split / city
        folder.mkdir(parents=True, exist_ok=True)
        place(drawn[i % distinct][kind], folder / f"{key}_{suffix}.png")
  shutil.rmtree(originals)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--frames", default="2975,500", help="train,val frames")
  parser.add_argument("--resolution", default="128x256", choices=("128x256", "256x512"))
  parser.add_argument("--distinct", type=int, default=8, help="distinct frames drawn")
  parser.add_argument("--links", action="store_true", help="hard links instead of copies")
  parser.add_argument("--root", default=None, help="where the fake goes (default: a temporary folder)")
  parser.add_argument("--keep", action="store_true", help="keep the fake and its built dataset")
  args = parser.parse_args(argv)
  train, val = (int(v) for v in args.frames.split(","))
  height, width = (int(v) for v in args.resolution.split("x"))
  scratch = pathlib.Path(args.root or tempfile.mkdtemp(prefix="cityscapes_fake_"))
  release, tfds_dir = scratch / "official", scratch / "tfds"
  try:
    start = time.perf_counter()
    reused = release.is_dir()  # --root of a kept fake
    if not reused:
      fake_official(release, {"train": train, "val": val}, args.distinct, args.links)
    sizes = {kind: sum(p.stat().st_size for p in (release / kind).rglob("*.png")) / (train + val)
             for kind, _ in KINDS}
    written = "reused" if reused else f"{time.perf_counter() - start:.0f} s to write"
    print(f"fake official release: {train} + {val} frames of 2048x1024 in {release} "
          f"({written}; mean file "
          + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sizes.items()) + ")")
    cold = drop_caches()
    start = time.perf_counter()
    listing = cityscapes.list_files(release)
    checked = time.perf_counter() - start
    start = time.perf_counter()
    cityscapes.list_files(release)
    print(f"every-run check of {len(listing.files)} files: {checked * 1e3:.0f} ms "
          f"({'cold' if cold else 'caches not dropped'}), {(time.perf_counter() - start) * 1e3:.0f}"
          f" ms warm")
    drop_caches()
    start = time.perf_counter()
    built = builders.prepare("cityscapes", release_dir=str(release), data_dir=str(tfds_dir),
                             resolution=(height, width))
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in pathlib.Path(built.data_dir).rglob("*") if p.is_file())
    print(f"build at {height}x{width}: {seconds:.0f} s ({(train + val) / seconds:.1f} frames/s, "
          f"{seconds / (train + val) * 1e3:.0f} ms a frame; {os.cpu_count()} CPUs); built dataset "
          f"{size / 2**20:.0f} MiB in {built.data_dir}")
    start = time.perf_counter()
    source = builders.locate("cityscapes", release_dir=str(release), data_dir=str(tfds_dir),
                             resolution=(height, width))
    print(f"a second run's check: {source.status} in {(time.perf_counter() - start) * 1e3:.0f} ms")
  finally:
    if not args.keep:
      shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  main()
