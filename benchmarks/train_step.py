"""Train-step (and evaluation-step) speed and memory of any model, on in-memory batches.

  python benchmarks/train_step.py                                   # MTAN, NYUv2 288x384, b 8 and 16
  python benchmarks/train_step.py --model=split_standard --batch_sizes=2 --dtypes=float32
  python benchmarks/train_step.py --mode=eval                       # the evaluation step instead
  python benchmarks/train_step.py --remat=both --batch_sizes=8      # with and without remat
  python benchmarks/train_step.py --resolution=64x96 --width_mult=0.125 --batch_sizes=2 --steps=5
                                                                    # a quick CPU check
  python benchmarks/train_step.py --table=OUT/train_step.jsonl      # the table of earlier runs
  python benchmarks/train_step.py --weighting=equal,mgda,nash_mtl --batch_sizes=2 --dtypes=float32
                                                                    # methods against equal
  python benchmarks/train_step.py --weighting=equal,mgda,mgda@representation --batch_sizes=2
                                  # a gradient method with --task_gradients=representation

What is timed is exactly what training runs each step (`train_step.train_step` under `jax.pmap`
on one device, state donated): forward, the task losses, the weighting, backward, the Adam update,
the non-finite check and the metric sums; with rematerialisation (training's `--remat`) or
without. Batches are random but valid (labels with -1 gaps, depth and normals zero where invalid)
and stay on the device, so the input pipeline is not measured here (benchmarks/input_pipeline.py
does that).

For each (mode, dtype, batch size) it prints one JSON line, then a table:
  compile_s      lowering + XLA compilation of the step
  step_ms        median over --steps timed steps after --warmup steps (each ends in block_until_ready)
  images_per_s   batch / median step time
  tflops         achieved TFLOP/s: XLA's cost analysis of the compiled step / median step time
  ref_tflops     the same from the reference's FLOP count (conv and matmul FLOPs, forward x3
                 for a train step) where it applies (full width at 288x384 or 128x256), else null
  program_gib    XLA's memory analysis of the step: arguments + outputs + temporaries - aliased
  peak_gib       the device's peak bytes in use so far in this process (GPU/TPU; null on CPU): the
                 configuration's own peak only when it is the process's first or largest
                 (benchmarks/gpu.sh runs one configuration per process)
  vs_equal       with several --weighting values (comma-separated, measured in turn in one
                 process): step_ms / the equal weighting's step_ms of the same configuration
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mtan_jax import huge_pages  # noqa: E402
from mtan_jax import tasks as tasks_lib  # noqa: E402
from mtan_jax import xla_cpu  # noqa: E402
from mtan_jax.dense import train_step as step_lib  # noqa: E402
from mtan_jax import weighting as weighting_lib  # noqa: E402
from mtan_jax.models import abstract_variables  # noqa: E402
from mtan_jax.models import shared_parameter_names  # noqa: E402
from mtan_jax.models import MODEL_NAMES, build_model, get_spec  # noqa: E402

# Forward GFLOP per image of the reference models at full width (torch FlopCounterMode,
# conv and matmul only, 3 tasks and 13 classes at 288x384; MTAN's 2-task CityScapes is an estimate).
REFERENCE_FORWARD_GFLOP = {
    ("nyuv2", "mtan"): 432.1, ("nyuv2", "split_standard"): 137.2, ("nyuv2", "split_wide"): 153.5,
    ("nyuv2", "split_deep"): 263.6, ("nyuv2", "cross_stitch"): 362.2, ("nyuv2", "dense"): 651.6}

# The image size the initial state is made at. The parameters and statistics of every model are
# the same at any size (convolutions, BatchNorm, cross-stitch weights), and the initialisation runs
# op by op, so a small image spares each process a full-size eager forward pass (on a GPU, one
# compilation and autotuning per convolution shape). A model whose parameters depended on the
# size would fail to compile with this state, not measure something else.
INIT_SHAPE = (32, 32)


def random_batch(tasks, batch: int, height: int, width: int, seed: int = 0) -> dict:
  """A valid batch `[1, batch, ...]` (one device): image in [0, 1], labels in [-1, classes),
  depth > 0 and unit normals, with a quarter of the depth and normal pixels invalid (0)."""
  rng = np.random.default_rng(seed)
  shape = (1, batch, height, width)
  out = {"image": rng.random(shape + (3,), np.float32)}
  invalid = rng.random(shape + (1,)) < 0.25
  for task in tasks:
    if task.name == tasks_lib.SEGMENTATION:
      out[task.name] = rng.integers(-1, task.channels, shape).astype(np.int32)
    elif task.name == "depth":
      out[task.name] = np.where(invalid, 0, rng.uniform(0.5, 10, shape + (1,))).astype(np.float32)
    else:
      normal = rng.normal(size=shape + (3,))
      normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
      out[task.name] = np.where(invalid, 0, normal).astype(np.float32)
  return out


def setup(model_name: str, dataset: str, mode: str, dtype: str, batch: int,
          resolution: tuple[int, int], width_mult: float, weighting_name: str,
          state_cache: dict | None = None, remat: bool = False):
  """(pmapped step, its state, an on-device batch, the device) of one configuration, on one
  device: `train_step.train_step` (state donated) for mode "train", else `eval_step`.
  `state_cache` keeps the last initial state (it depends on neither the dtype nor the batch)."""
  tasks = tasks_lib.dataset_tasks(dataset)
  tasks = tasks[:1] if get_spec(model_name).single_task else tasks
  model = build_model(model_name, tasks, width_mult=width_mult, dtype=dtype,
                      bn_axis_name=step_lib.AXIS)
  name, _, where = weighting_name.partition("@")  # NAME@representation: --task_gradients
  weighting = weighting_lib.build(name, tasks, **({"task_gradients": where} if where else {}))
  optimizer = step_lib.make_optimizer(1e-4, 0)
  device = jax.local_devices()[:1]
  state_cache = {} if state_cache is None else state_cache
  shared = shared_parameter_names(model_name, abstract_variables(model)["params"], tasks)
  key = (model_name, dataset, width_mult, weighting_name)
  if key not in state_cache:
    state_cache.clear()
    state_cache[key] = step_lib.create_train_state(model, weighting, optimizer, INIT_SHAPE, 0,
                                                   shared)
  state = step_lib.replicate(state_cache[key], device, device)
  data = jax.pmap(lambda x: x, devices=device)(random_batch(tasks, batch, *resolution))  # on device
  if mode == "train":
    step = jax.pmap(functools.partial(step_lib.train_step, model=model, weighting=weighting,
                                      optimizer=optimizer, tasks=tasks, sync_batch_stats=False,
                                      remat=remat, shared=shared),
                    axis_name=step_lib.AXIS, devices=device, donate_argnums=(0,))
  else:
    step = jax.pmap(functools.partial(step_lib.eval_step, model=model, tasks=tasks),
                    axis_name=step_lib.AXIS, devices=device)
  return step, state, data, device[0]


def xla_cost(compiled) -> dict:
  """XLA's cost analysis of a compiled step ("flops", "bytes accessed", ...), {} where there is
  none; older JAX returns it as a one-element list."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost or {}


def measure(model_name: str, dataset: str, mode: str, dtype: str, batch: int,
            resolution: tuple[int, int], width_mult: float, weighting_name: str, steps: int,
            warmup: int, state_cache: dict, remat: bool = False) -> dict:
  """Compiles and times one configuration; returns its row."""
  step, state, data, device = setup(model_name, dataset, mode, dtype, batch, resolution,
                                    width_mult, weighting_name, state_cache, remat)
  started = time.perf_counter()
  compiled = step.lower(state, data).compile()
  compile_s = time.perf_counter() - started

  def run_once(state):
    started = time.perf_counter()
    if mode == "train":
      state, outputs = compiled(state, data)
    else:
      outputs = compiled(state, data)
    jax.block_until_ready((state, outputs))
    return state, time.perf_counter() - started

  for _ in range(warmup):
    state, _ = run_once(state)
  times = []
  for _ in range(steps):
    state, seconds = run_once(state)
    times.append(seconds)
  median = statistics.median(times)

  flops = float(xla_cost(compiled).get("flops", 0.0))
  reference = REFERENCE_FORWARD_GFLOP.get((dataset, model_name))
  full_size = width_mult == 1.0 and tuple(resolution) == tasks_lib.DEFAULT_RESOLUTION["nyuv2"]
  ref_tflops = None
  if reference is not None and full_size:
    ref_tflops = reference * 1e9 * (3 if mode == "train" else 1) * batch / median / 1e12
  usage = compiled.memory_analysis()
  program = None if usage is None else (usage.argument_size_in_bytes + usage.output_size_in_bytes
                                        + usage.temp_size_in_bytes - usage.alias_size_in_bytes)
  stats = device.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return {"model": model_name, "dataset": dataset, "mode": mode, "dtype": dtype, "batch": batch,
          "resolution": f"{resolution[0]}x{resolution[1]}", "width_mult": width_mult,
          "weighting": weighting_name, "remat": remat and mode == "train",
          "device": device.device_kind,
          "compile_s": round(compile_s, 2), "step_ms": round(median * 1e3, 3),
          "step_ms_min": round(min(times) * 1e3, 3), "steps": steps,
          "images_per_s": round(batch / median, 2),
          "tflops": round(flops / median / 1e12, 4) if flops else None,
          "xla_gflop_per_step": round(flops / 1e9, 3) if flops else None,
          "ref_tflops": None if ref_tflops is None else round(ref_tflops, 2),
          "program_gib": None if program is None else round(program / 2**30, 3),
          "peak_gib": None if peak is None else round(peak / 2**30, 3)}


COLUMNS = ("model", "weighting", "mode", "dtype", "batch", "remat", "resolution", "compile_s",
           "step_ms", "vs_equal", "images_per_s", "tflops", "ref_tflops", "program_gib", "peak_gib")


def add_ratios(rows: list[dict]) -> list[dict]:
  """Each row's step time over the equal weighting's in the same configuration (vs_equal)."""
  what = lambda r: tuple(r.get(k) for k in ("model", "mode", "dtype", "batch", "remat",  # noqa: E731
                                        "resolution", "width_mult"))
  equal = {what(r): r["step_ms"] for r in rows if r.get("weighting", "equal") == "equal"}
  return [{**r, "vs_equal": round(r["step_ms"] / equal[what(r)], 2) if what(r) in equal else None}
          for r in rows]


def table(rows: list[dict]) -> str:
  rows = add_ratios(rows)
  cells = [[str(c) for c in COLUMNS]] + [[str(r.get(c)) for c in COLUMNS] for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
  return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in cells)


def parse_resolution(text: str) -> tuple[int, int]:
  height, width = (int(v) for v in text.lower().split("x"))
  return height, width


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="mtan", choices=MODEL_NAMES)
  parser.add_argument("--dataset", default="nyuv2", choices=("nyuv2", "cityscapes"))
  parser.add_argument("--mode", default="train", choices=("train", "eval", "both"))
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--batch_sizes", default="8,16")
  parser.add_argument("--resolution", type=parse_resolution, default=None,
                      help="HEIGHTxWIDTH (default 288x384 NYUv2, 128x256 CityScapes)")
  parser.add_argument("--width_mult", type=float, default=1.0)
  parser.add_argument("--weighting", default="equal",
                      help=f"one or more (comma-separated) of {', '.join(weighting_lib.NAMES)}; "
                      "a gradient method as NAME@representation takes the task gradients of the "
                      "shared representation (training's --task_gradients=representation)")
  parser.add_argument("--remat", default="false", choices=("true", "false", "both"),
                      help="recompute all but conv outputs in the backward pass (training's "
                      "--remat); both: measure each")
  parser.add_argument("--steps", type=int, default=30, help="timed steps")
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--json", default=None, help="also append the JSON lines to this file")
  parser.add_argument("--table", default=None,
                      help="only print the table of the JSON lines in this file (earlier runs)")
  args = parser.parse_args(argv)
  if args.table:
    with open(args.table) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    print(table(rows), flush=True)
    return rows
  resolution = args.resolution or tasks_lib.DEFAULT_RESOLUTION[args.dataset]
  modes = ("train", "eval") if args.mode == "both" else (args.mode,)
  rows, cache = [], {}
  remats = {"true": (True,), "false": (False,), "both": (False, True)}[args.remat]
  weightings = args.weighting.split(",")
  unknown = [w for w in weightings if w.partition("@")[0] not in weighting_lib.NAMES
             or w.partition("@")[2] not in ("", "representation", "parameters")]
  if unknown:
    parser.error(f"--weighting: expected names from {weighting_lib.NAMES}, each optionally "
                 f"followed by @representation, found {unknown}")
  for mode in modes:
    for dtype in args.dtypes.split(","):
      for batch in sorted(int(b) for b in args.batch_sizes.split(",")):
        for remat in remats if mode == "train" else (False,):
          for weighting in weightings if mode == "train" else weightings[:1]:
            row = measure(args.model, args.dataset, mode, dtype, batch, resolution,
                          args.width_mult, weighting, args.steps, args.warmup, cache, remat)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
              with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
  print(table(rows), flush=True)
  return rows


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()  # as training runs (mtan_jax/huge_pages.py)
  xla_cpu.configure()  # before JAX starts: the CPU option training runs with
  main()
