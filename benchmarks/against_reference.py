"""Our MTAN train step and the PyTorch reference's, side by side on this machine, interleaved.

  python benchmarks/against_reference.py --reference=PATH/mtan/im2im_pred
  python benchmarks/against_reference.py --reference=... --batch_sizes=2,8 --steps=3
  python benchmarks/against_reference.py --reference=... --resolution=96x128 --batch_sizes=2
                                                                     # a quick look

Needs torch (CPU build is enough) and the reference's code (lorenmt/mtan, its `im2im_pred`
folder); neither is a requirement of this project, its tests or its CI. Only the reference's
`SegNet` class (model_segnet_mtan.py) and `model_fit` (utils.py) are taken from its files, by
parsing them: the scripts train on NYUv2 when run, so they are not imported.

One process, one batch shape at a time: both sides get the same random batch (NYUv2's three
tasks, a quarter of the depth and normal pixels invalid), are warmed up, then their steps
alternate (reference, ours, reference, ours, ...), so that a machine that slows down or speeds
up mid-run does so for both. Timed, per step:
  reference   forward, the three losses summed with equal weights (the reference's trainer),
              backward, Adam (lr 1e-4) - its metrics on the host are left out
  ours        `train_step.train_step` as training runs it (jax.pmap on one device, the state
              donated): forward, losses, weighting, backward, Adam, the non-finite check and the
              metric sums

It prints one JSON line per batch size and a table: the median seconds of each side, the ratio
ours / reference (below 1: ours is faster), the CPU model, the thread counts and the XLA flags.
torch's OpenMP threads wait passively (OMP_WAIT_POLICY, unless set), so that they do not spin on
the cores while our step runs.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# torch's OpenMP threads busy-wait after each of its ops by default, taking the cores from the
# other side's step that runs next; passive waiting lets each side have the machine in turn.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import train_step as bench  # noqa: E402
from mtan_jax import tasks as tasks_lib  # noqa: E402
from mtan_jax import xla_cpu  # noqa: E402


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), or the platform's word for it."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def load_reference(folder) -> tuple[type, object]:
  """(the reference's SegNet MTAN class, its model_fit) from its files, without running them."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn as nn  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  namespace = {"torch": torch, "nn": nn, "F": F, "np": np}
  taken = {}
  for file, name in (("model_segnet_mtan.py", "SegNet"), ("utils.py", "model_fit")):
    path = pathlib.Path(folder) / file
    try:
      tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError) as error:
      raise SystemExit(f"error: {path}: cannot read the reference's code ({error}); --reference "
                       f"is its im2im_pred folder") from error
    nodes = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))
             and n.name == name]
    if not nodes:
      raise SystemExit(f"error: {path}: expected a definition of {name}, found none")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    taken[name] = namespace[name]
  return taken["SegNet"], taken["model_fit"]


class Reference:
  """The reference's model, Adam and a torch copy of the batch (NCHW)."""

  def __init__(self, segnet_class, model_fit, batch: dict):
    import torch  # pylint: disable=import-outside-toplevel
    self.torch, self.model_fit = torch, model_fit
    torch.manual_seed(0)
    self.model = segnet_class()
    self.model.train()
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
    to_nchw = lambda x: torch.from_numpy(np.ascontiguousarray(np.moveaxis(x[0], -1, 1)))  # noqa: E731
    self.image = to_nchw(batch["image"])
    self.label = torch.from_numpy(batch["segmentation"][0].astype(np.int64))
    self.depth, self.normal = to_nchw(batch["depth"]), to_nchw(batch["normal"])

  def step(self) -> float:
    started = time.perf_counter()
    predictions, _ = self.model(self.image)
    loss = (self.model_fit(predictions[0], self.label, "semantic")
            + self.model_fit(predictions[1], self.depth, "depth")
            + self.model_fit(predictions[2], self.normal, "normal"))
    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()
    return time.perf_counter() - started


class Ours:
  """Our compiled MTAN train step (benchmarks/train_step.py's setup) on the same batch."""

  def __init__(self, batch_size: int, resolution: tuple[int, int], batch: dict):
    step, self.state, _, device = bench.setup("mtan", "nyuv2", "train", "float32", batch_size,
                                              resolution, 1.0, "equal")
    self.data = jax.pmap(lambda x: x, devices=[device])(batch)  # the reference's, on the device
    started = time.perf_counter()
    self.compiled = step.lower(self.state, self.data).compile()
    self.compile_s = time.perf_counter() - started

  def step(self) -> float:
    started = time.perf_counter()
    self.state, outputs = self.compiled(self.state, self.data)
    jax.block_until_ready((self.state, outputs))
    return time.perf_counter() - started


def compare(reference_folder, batch_size: int, resolution: tuple[int, int], steps: int,
            warmup: int) -> dict:
  """Times both sides on one batch shape, interleaved; returns the row."""
  import torch  # pylint: disable=import-outside-toplevel
  batch = bench.random_batch(tasks_lib.dataset_tasks("nyuv2"), batch_size, *resolution)
  reference = Reference(*load_reference(reference_folder), batch)
  ours = Ours(batch_size, resolution, batch)
  for _ in range(warmup):
    reference.step()
    ours.step()
  times = {"reference": [], "ours": []}
  for _ in range(steps):
    times["reference"].append(reference.step())
    times["ours"].append(ours.step())
  medians = {k: statistics.median(v) for k, v in times.items()}
  return {"batch": batch_size, "resolution": f"{resolution[0]}x{resolution[1]}",
          "reference_s": round(medians["reference"], 3), "ours_s": round(medians["ours"], 3),
          "ratio": round(medians["ours"] / medians["reference"], 3),
          "reference_times": [round(t, 3) for t in times["reference"]],
          "ours_times": [round(t, 3) for t in times["ours"]],
          "ours_compile_s": round(ours.compile_s, 1), "cpu": cpu_model(),
          "cores": os.cpu_count(), "torch": torch.__version__,
          "torch_threads": torch.get_num_threads(), "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def table(rows: list[dict]) -> str:
  lines = [f"{rows[0]['cpu']}, {rows[0]['cores']} cores; torch {rows[0]['torch']} "
           f"({rows[0]['torch_threads']} threads), jax {rows[0]['jax']}, XLA_FLAGS "
           f"{rows[0]['xla_flags'] or '(none)'}",
           "| batch | resolution | reference s/step | ours s/step | ours / reference |",
           "|---:|---|---:|---:|---:|"]
  lines += [f"| {r['batch']} | {r['resolution']} | {r['reference_s']:.2f} | {r['ours_s']:.2f} | "
            f"{r['ratio']:.2f} |" for r in rows]
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--reference", required=True,
                 help="the reference's im2im_pred folder (model_segnet_mtan.py, utils.py)")
  p.add_argument("--batch_sizes", default="2,8")
  p.add_argument("--resolution", default="288x384", type=bench.parse_resolution)
  p.add_argument("--steps", type=int, default=3, help="timed steps of each side")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--torch_threads", type=int, default=0,
                 help="torch's intra-op threads (0: torch's default, one per core)")
  args = p.parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  rows = []
  for batch_size in (int(b) for b in args.batch_sizes.split(",")):
    rows.append(compare(args.reference, batch_size, args.resolution, args.steps, args.warmup))
    print(json.dumps(rows[-1]), flush=True)
  print(table(rows))
  return rows


if __name__ == "__main__":
  xla_cpu.configure()  # before JAX starts: the CPU option training runs with
  main()
