"""The training loop's host-side overhead per step, at a size where the step itself is tiny.

  python benchmarks/loop_overhead.py                 # split_standard, 1/16 width, 32x32, batch 2
  python benchmarks/loop_overhead.py --steps=512 --devices=2

Runs `train.run` (the loop as training runs it: input pipeline, step, metric sums, progress bar,
end of epoch) for a few epochs of `--steps` steps, and the same pmapped step alone in a tight loop
on one fixed batch (no input pipeline, no reads of its outputs). The difference per step is what
the loop adds around the step. Prints one JSON line and a sentence.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mtan_jax import huge_pages  # noqa: E402
from mtan_jax import tasks as tasks_lib  # noqa: E402
from mtan_jax import xla_cpu  # noqa: E402
from mtan_jax.dense import train  # noqa: E402
from mtan_jax.dense import train_step as step_lib  # noqa: E402
from mtan_jax import weighting as weighting_lib  # noqa: E402
from mtan_jax.dense.config import TrainConfig  # noqa: E402
from mtan_jax.data.pipeline import DataConfig, Loader, open_split  # noqa: E402
from mtan_jax.models import build_model  # noqa: E402


def tight_loop_ms(config: TrainConfig, steps: int) -> float:
  """Milliseconds per step of the pmapped train step alone, on one fixed batch."""
  tasks = tasks_lib.dataset_tasks(config.dataset)
  devices = jax.local_devices()[:config.devices or None]
  model = build_model(config.model, tasks, width_mult=config.width_mult,
                      bn_axis_name=step_lib.AXIS)
  weighting = weighting_lib.build(config.weighting, tasks, **config.weighting_options)
  optimizer = step_lib.make_optimizer(config.lr, 0)
  state = step_lib.replicate(step_lib.create_train_state(
      model, weighting, optimizer, config.resolution, config.seed), devices, devices)
  loader = Loader(open_split(config.data, "train", tasks, progress=False),
                  global_batch_size=config.batch_size, local_devices=len(devices), workers=0)
  batch = next(iter(loader.epoch(0)))
  step = jax.pmap(functools.partial(step_lib.train_step, model=model, weighting=weighting,
                                    optimizer=optimizer, tasks=tasks, sync_batch_stats=False),
                  axis_name=step_lib.AXIS, devices=devices, donate_argnums=(0,))
  state, outputs = step(state, batch)
  jax.block_until_ready(outputs)
  start = time.perf_counter()
  for _ in range(steps):
    state, outputs = step(state, batch)
  jax.block_until_ready((state, outputs))
  return (time.perf_counter() - start) / steps * 1000


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=256, help="steps per epoch")
  parser.add_argument("--epochs", type=int, default=3, help="the first one compiles: not counted")
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--progress", type=int, default=1, help="1: with the progress bar")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    config = TrainConfig(
        model="split_standard", width_mult=1 / 16, batch_size=2 * args.devices, lr=1e-3,
        epochs=args.epochs, steps_per_epoch=args.steps, devices=args.devices, workers=2,
        progress=bool(args.progress), workdir=os.path.join(scratch, "run"),
        data=DataConfig(tfds_dir=os.path.join(scratch, "tfds"), resolution=(32, 32),
                        synthetic_size=(2 * args.devices * args.steps, 2 * args.devices)))
    result = train.run(config)
    epochs = [r["seconds"] for r in result["records"][1:]]
    loop_ms = float(np.median(epochs)) / args.steps * 1000
    alone_ms = tight_loop_ms(config, args.steps)
  line = {"steps_per_epoch": args.steps, "devices": args.devices, "progress": bool(args.progress),
          "loop_ms_per_step": round(loop_ms, 3), "step_alone_ms": round(alone_ms, 3),
          "overhead_ms_per_step": round(loop_ms - alone_ms, 3)}
  print(json.dumps(line))
  print(f"the loop takes {loop_ms:.2f} ms per step, the step alone {alone_ms:.2f} ms: "
        f"{loop_ms - alone_ms:.2f} ms per step around it (input pipeline, metric sums, progress, "
        f"end of epoch and a 2-example evaluation)")


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()  # as training runs (mtan_jax/huge_pages.py)
  xla_cpu.configure()  # before JAX starts: the CPU option training runs with
  main()
