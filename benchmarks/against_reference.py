"""Our MTAN train step and the PyTorch reference's, side by side on this machine, in rounds.

  python benchmarks/against_reference.py --reference=PATH/mtan/im2im_pred
  python benchmarks/against_reference.py --reference=... --batch_sizes=2,8 --rounds=3
  python benchmarks/against_reference.py --reference=... --resolution=96x128 --batch_sizes=2
                                                                     # a quick look

Needs torch (CPU build is enough) and the reference's code (lorenmt/mtan, its `im2im_pred`
folder); neither is a requirement of this project, its tests or its CI. Only the reference's
`SegNet` class (model_segnet_mtan.py) and `model_fit` (utils.py) are taken from its files, by
parsing them: the scripts train on NYUv2 when run, so they are not imported.

One batch shape at a time, each side in a process of its own, one process at a time, as users
run them: in rounds, the reference's process (set up, warmed up, `--steps` timed steps, ended),
then ours, then again (`--rounds`), so that a machine that slows down or speeds up mid-run does
so for both. Both get the same environment and the same random batch (NYUv2's three tasks, a
quarter of the depth and normal pixels invalid). Running both at once, even in two processes with
steps alternating, made ours slower (17.4 s a step against 12.0 s alone, the reference 10.6 s):
two processes holding 9 and 11 GiB on a 24 GiB machine. Timed, per step:
  reference   forward, the three losses summed with equal weights (the reference's trainer),
              backward, Adam (lr 1e-4) - its metrics on the host are left out
  ours        `train_step.train_step` as training runs it (jax.pmap on one device, the state
              donated): forward, losses, weighting, backward, Adam, the non-finite check and the
              metric sums

It prints one JSON line per batch size and a table: the median seconds of each side, the ratio
ours / reference (below 1: ours is faster), each side's peak resident memory, the CPU model, the
thread counts, the XLA flags and `GLIBC_TUNABLES`. Like training, it restarts itself with
glibc's malloc asking for transparent huge pages (mtan_jax/huge_pages.py), which both sides then
run with; to time both without them, run it with GLIBC_TUNABLES=glibc.malloc.hugetlb=0. torch's
OpenMP threads wait passively (OMP_WAIT_POLICY, unless set), as in the README's figures.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# torch's OpenMP threads wait passively unless OMP_WAIT_POLICY says otherwise: the setting the
# README's figures were measured with. With the sides one at a time it made no difference that
# could be measured on the 2-core machine (the reference alone: 15.5 s passive, 15.1 s default,
# 13.5-17.9 s active); it mattered only while both sides' processes were alive.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import train_step as bench  # noqa: E402
from mtan_jax import huge_pages  # noqa: E402
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
    self.model_fit = model_fit
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


def _side(args) -> None:
  """One side's process (`--side`): sets up and warms up, says `ready` with what it is (a JSON
  line), then runs one step per line `step` read from stdin and answers its seconds; at the end of
  stdin it says its peak resident memory."""
  batch = bench.random_batch(tasks_lib.dataset_tasks("nyuv2"), args.batch, *args.resolution)
  if args.side == "reference":
    import torch  # pylint: disable=import-outside-toplevel
    if args.torch_threads:
      torch.set_num_threads(args.torch_threads)
    side = Reference(*load_reference(args.reference), batch)
    about = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
  else:
    side = Ours(args.batch, args.resolution, batch)
    about = {"jax": jax.__version__, "compile_s": round(side.compile_s, 1)}
  for _ in range(args.warmup):
    side.step()
  print("ready", json.dumps(about), flush=True)
  for line in sys.stdin:
    if line.strip() == "step":
      print(f"{side.step():.6f}", flush=True)
  print("peak_gib", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        flush=True)


class _Process:
  """A side's process: started, waited for until it is ready, asked for steps."""

  def __init__(self, side: str, reference_folder, batch_size: int, resolution, warmup: int,
               torch_threads: int):
    self.side = side
    self.process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), f"--side={side}",
         f"--reference={reference_folder}", f"--batch={batch_size}",
         f"--resolution={resolution[0]}x{resolution[1]}", f"--warmup={warmup}",
         f"--torch_threads={torch_threads}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.about = json.loads(self._answer("ready"))

  def _answer(self, word: str | None = None) -> str:
    for line in self.process.stdout:
      if word is None or line.startswith(word + " "):
        return line[len(word) + 1:] if word else line
      print(f"[{self.side}] {line}", end="", flush=True)  # anything else it says
    raise SystemExit(f"error: the {self.side} side ended (status {self.process.wait()}) before "
                     f"saying {word or 'a step time'}; its error is above")

  def step(self) -> float:
    self.process.stdin.write("step\n")
    self.process.stdin.flush()
    return float(self._answer())

  def close(self) -> float:
    """Ends the process; returns its peak resident memory (GiB)."""
    self.process.stdin.close()
    peak = float(self._answer("peak_gib"))
    self.process.wait()
    return peak


def compare(reference_folder, batch_size: int, resolution: tuple[int, int], steps: int,
            warmup: int, rounds: int, torch_threads: int = 0) -> dict:
  """Times both sides on one batch shape, one process at a time: each round starts the
  reference's process (warm-up, `steps` timed steps, end), then ours; returns the row."""
  times = {"reference": [], "ours": []}
  peaks, about = {}, {}
  for _ in range(rounds):
    for name in ("reference", "ours"):
      side = _Process(name, reference_folder, batch_size, resolution, warmup, torch_threads)
      times[name] += [side.step() for _ in range(steps)]
      peaks[name] = max(peaks.get(name, 0.0), side.close())
      about[name] = side.about
  medians = {k: statistics.median(v) for k, v in times.items()}
  reference, ours = about["reference"], about["ours"]
  return {"batch": batch_size, "resolution": f"{resolution[0]}x{resolution[1]}",
          "reference_s": round(medians["reference"], 3), "ours_s": round(medians["ours"], 3),
          "ratio": round(medians["ours"] / medians["reference"], 3),
          "reference_times": [round(t, 3) for t in times["reference"]],
          "ours_times": [round(t, 3) for t in times["ours"]],
          "reference_peak_gib": peaks["reference"], "ours_peak_gib": peaks["ours"],
          "ours_compile_s": ours["compile_s"], "cpu": cpu_model(),
          "cores": os.cpu_count(), "torch": reference["torch"],
          "torch_threads": reference["torch_threads"], "jax": ours["jax"],
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


def table(rows: list[dict]) -> str:
  lines = [f"{rows[0]['cpu']}, {rows[0]['cores']} cores; torch {rows[0]['torch']} "
           f"({rows[0]['torch_threads']} threads), jax {rows[0]['jax']}, XLA_FLAGS "
           f"{rows[0]['xla_flags'] or '(none)'}, GLIBC_TUNABLES "
           f"{rows[0].get('glibc_tunables') or '(none)'} (both sides)",
           "| batch | resolution | reference s/step | ours s/step | ours / reference | peak memory "
           "(reference, ours) |",
           "|---:|---|---:|---:|---:|---|"]
  lines += [f"| {r['batch']} | {r['resolution']} | {r['reference_s']:.2f} | {r['ours_s']:.2f} | "
            f"{r['ratio']:.2f} | {r['reference_peak_gib']:.1f}, {r['ours_peak_gib']:.1f} GiB |"
            for r in rows]
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--reference", required=True,
                 help="the reference's im2im_pred folder (model_segnet_mtan.py, utils.py)")
  p.add_argument("--batch_sizes", default="2,8")
  p.add_argument("--resolution", default="288x384", type=bench.parse_resolution)
  p.add_argument("--steps", type=int, default=2, help="timed steps of each side in each round")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--rounds", type=int, default=2,
                 help="rounds: the reference's process, then ours, one after the other")
  p.add_argument("--torch_threads", type=int, default=0,
                 help="torch's intra-op threads (0: torch's default, one per core)")
  p.add_argument("--side", choices=("reference", "ours"), help=argparse.SUPPRESS)  # a worker
  p.add_argument("--batch", type=int, default=2, help=argparse.SUPPRESS)  # the worker's batch
  args = p.parse_args(argv)
  if args.side:
    _side(args)
    return []
  rows = []
  for batch_size in (int(b) for b in args.batch_sizes.split(",")):
    rows.append(compare(args.reference, batch_size, args.resolution, args.steps, args.warmup,
                        args.rounds, args.torch_threads))
    print(json.dumps(rows[-1]), flush=True)
  print(table(rows))
  return rows


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()  # as training runs (mtan_jax/huge_pages.py)
  xla_cpu.configure()  # before JAX starts: the CPU option training runs with
  main()
