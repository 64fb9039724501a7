"""Input-pipeline throughput: synthetic rendering on one core, and loader images/s with augmentation.

  python benchmarks/input_pipeline.py                       # 288x384, all cores, augmentation on
  python benchmarks/input_pipeline.py --release_dir=PATH    # the NYUv2 release instead of synthetic
  python benchmarks/input_pipeline.py --height=64 --width=96 --examples=32   # a quick CPU check

Prints one JSON line per measurement, then a table. The loader figure is what a train step can be
fed at: reading records, augmenting (scale-crop and flip) and assembling [devices, batch, H, W, C].
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtan_jax import tasks as tasks_lib  # noqa: E402
from mtan_jax.data import pipeline  # noqa: E402
from mtan_jax.data import synthetic  # noqa: E402


def render_rate(height: int, width: int, count: int) -> float:
  """Synthetic indoor samples per second, rendered one after another in this (one) thread."""
  synthetic.render_indoor(0, 0, height, width)
  start = time.perf_counter()
  for i in range(count):
    synthetic.render_indoor(0, i, height, width)
  return count / (time.perf_counter() - start)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--height", type=int, default=288)
  parser.add_argument("--width", type=int, default=384)
  parser.add_argument("--examples", type=int, default=256, help="synthetic train examples")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  parser.add_argument("--epochs", type=int, default=3, help="the first is reported as warm-up")
  parser.add_argument("--no_augment", action="store_true")
  parser.add_argument("--release_dir", default=None, help="an NYUv2 release folder")
  parser.add_argument("--tfds_dir", default=None, help="built datasets (default: a temp folder)")
  args = parser.parse_args(argv)

  rows = []
  rate = render_rate(args.height, args.width, 40)
  rows.append({"measure": "synthetic render, 1 thread", "resolution": f"{args.height}x{args.width}",
               "per_second": round(rate, 1)})
  print(json.dumps(rows[-1]), flush=True)

  with tempfile.TemporaryDirectory() as tmp:
    config = pipeline.DataConfig(release_dir=args.release_dir, tfds_dir=args.tfds_dir or tmp,
                                 resolution=(args.height, args.width),
                                 synthetic_size=(args.examples, 1))
    start = time.perf_counter()
    source = pipeline.open_split(config, "train", tasks_lib.dataset_tasks("nyuv2"))
    rows.append({"measure": "prepare dataset", "examples": len(source),
                 "seconds": round(time.perf_counter() - start, 1)})
    print(json.dumps(rows[-1]), flush=True)
    with pipeline.Loader(source, global_batch_size=args.batch_size, shuffle=True,
                         augment=not args.no_augment, drop_remainder=True,
                         workers=args.workers) as loader:
      for epoch in range(args.epochs):
        start, images = time.perf_counter(), 0
        for batch in loader.epoch(epoch):
          images += batch["image"].shape[0] * batch["image"].shape[1]
        rows.append({"measure": "loader" + (" (warm-up)" if epoch == 0 else ""),
                     "epoch": epoch, "workers": args.workers, "augment": not args.no_augment,
                     "resolution": f"{args.height}x{args.width}",
                     "per_second": round(images / (time.perf_counter() - start), 1)})
        print(json.dumps(rows[-1]), flush=True)

  print(f"\n{'measure':<30} {'per second':>12}   details   (cpu cores: {os.cpu_count()})")
  for row in rows:
    value = row.get("per_second", row.get("seconds"))
    unit = "" if "per_second" in row else " s"
    details = {k: v for k, v in row.items() if k not in ("measure", "per_second", "seconds")}
    print(f"{row['measure']:<30} {value:>10}{unit:2}   {details}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
