"""How long the every-run check of a release folder takes at full size.

  python benchmarks/release_check.py                      # a fake NYUv2 release: 795 + 654 a field
  python benchmarks/release_check.py --dataset=cityscapes  # 2975 + 500 per field
  python benchmarks/release_check.py --release=~/data/nyuv2   # a real one

Every run lists the release folder (names, sizes, modification times; no file is opened) and
compares the fingerprint with the built dataset's record. The fake release holds sparse files of the
real sizes, so it takes no disk space. Prints the file count and the time of each repeat; the first
repeat runs after asking the kernel to drop its caches where that is allowed (root), so it is the
cold time a first run after a reboot sees.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mtan_jax.data import release  # noqa: E402

COUNTS = {"nyuv2": {"train": 795, "val": 654}, "cityscapes": {"train": 2975, "val": 500}}
RESOLUTION = {"nyuv2": (288, 384), "cityscapes": (128, 256)}


def fake_release(root: pathlib.Path, dataset: str) -> None:
  """Sparse files with the sizes of the real .npy files (float32; labels float64 as published)."""
  layout, (height, width) = release.LAYOUTS[dataset], RESOLUTION[dataset]
  for split, count in COUNTS[dataset].items():
    for field in layout.fields:
      folder = root / split / field.name
      folder.mkdir(parents=True)
      size = 128 + height * width * (field.channels or 1) * (8 if field.kind == "label" else 4)
      for i in range(count):
        with open(folder / f"{i}.npy", "wb") as f:
          f.truncate(size)


def drop_caches() -> bool:
  try:
    subprocess.run(["sync"], check=False)
    pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")
    return True
  except OSError:
    return False


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="nyuv2", choices=tuple(COUNTS))
  parser.add_argument("--release", default=None, help="a real release folder (default: a fake one)")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    root = pathlib.Path(args.release).expanduser() if args.release else pathlib.Path(scratch)
    if not args.release:
      fake_release(root, args.dataset)
    cold = drop_caches()
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      listing = release.list_files(release.LAYOUTS[args.dataset], root)
      listing.fingerprint  # pylint: disable=pointless-statement
      times.append(time.perf_counter() - start)
    print(f"{args.dataset}: {len(listing.files)} files ({listing.counts}); check and fingerprint "
          f"in {', '.join(f'{t * 1000:.0f}' for t in times)} ms"
          f" ({'first after dropping the caches' if cold else 'caches not dropped'}; "
          f"{os.cpu_count()} CPUs)")


if __name__ == "__main__":
  main()
