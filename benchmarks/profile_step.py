"""Where a train step's time goes: a jax.profiler trace of a few steps, grouped by component.

  python benchmarks/profile_step.py                                  # MTAN, NYUv2 288x384, batch 8
  python benchmarks/profile_step.py --dtype=bfloat16 --batch=16 --trace_dir=/tmp/mtan_trace
  python benchmarks/profile_step.py --resolution=64x96 --width_mult=0.125 --batch=2   # on a CPU

The step is the one training runs (see benchmarks/train_step.py). Every op event of the trace (GPU:
the device's kernels, or its derived "XLA Ops" line; CPU: XLA's thunks on the worker threads) is
matched by its HLO instruction to the compiled program, whose metadata says which JAX operation
and module it came from (device time that matches no instruction, such as copies or a CUDA graph
launched as one, is reported as `unmatched_ms_per_step`). Events are then grouped by

  phase      forward, backward (the transpose of the forward), recompute (forward work redone in
             the backward pass, with --remat), update (optimizer, skip check, metric sums), other
  component  convolution, batchnorm, attention (MTAN's masks and attention blocks, convolutions
             excluded), max_pool, max_unpool, upsample (bilinear x2), losses, metrics, optimizer,
             skip_non_finite, other (elementwise work not inside one of these)

and printed as milliseconds per step and shares of the op time, with the most expensive ops.
On a CPU the op time is summed over threads, so it exceeds the wall time; the shares still say
where the work goes. The trace itself stays in --trace_dir for TensorBoard / XProf.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import math
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import train_step as bench  # noqa: E402  (benchmarks/train_step.py)
from mtan_jax import huge_pages  # noqa: E402
from mtan_jax import tasks as tasks_lib  # noqa: E402
from mtan_jax import xla_cpu  # noqa: E402
from mtan_jax import weighting as weighting_lib  # noqa: E402
from mtan_jax.models import MODEL_NAMES  # noqa: E402

# Named scopes of the library, in the order they are looked for in an op's name (innermost first).
SCOPES = ("max_pool_with_argmax", "max_unpool", "upsample_bilinear_x2", "optimizer",
          "skip_non_finite", "metrics", "losses")
COMPONENT_OF_SCOPE = {"max_pool_with_argmax": "max_pool", "upsample_bilinear_x2": "upsample"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]*)\"")


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY )?%([\w.\-]+) .*\{\s*$")
_OPERATION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_CALLED = re.compile(
    r"(?:to_apply|calls|body|condition|branch_computations)=\{?([^}\s]*(?:, %[^}\s,]+)*)")
# Operations that move no data of their own (views, tuples) or only run other computations.
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "call", "while",
               "conditional", "after-all", "partition-id", "replica-id", "async-done"}


def array_bytes(type_text: str) -> int:
  """Bytes of the arrays in an HLO type, e.g. "(f32[8,288,384,64]{3,2,1,0}, s32[])"."""
  total = 0
  for dtype, dims in _ARRAY.findall(type_text):
    total += _DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(",") if d)
  return total


def traffic(hlo_text: str) -> dict[str, int]:
  """HLO instruction -> bytes it reads and writes (its operands and outputs, each once), for every
  operation the compiled program runs: those of the entry computation and of the computations it
  calls, loops over or branches to, not those inside a fusion (a fusion's intermediates stay in
  registers) or a reduction's scalar function.

  A model of memory traffic, not a measure: an operand read by two kernels counts twice, a cached
  one as much as any, and a fusion that reads a slice of an operand is charged for all of it.
  Divided by an op's time it says how near the memory's bandwidth the op runs.
  """
  computations, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = computations.setdefault(header.group(2), [])
      entry = header.group(2) if header.group(1) else entry
      continue
    operation = _OPERATION.match(line)
    if operation and current is not None:
      current.append(operation.groups())
  types = {name: type_text for ops in computations.values() for name, type_text, _, _ in ops}
  out, pending, seen = {}, [entry], set()
  while pending:
    computation = pending.pop()
    if computation in seen or computation not in computations:
      continue
    seen.add(computation)
    for name, type_text, opcode, rest in computations[computation]:
      depth, end = 1, 0
      for end, char in enumerate(rest):  # the operand list ends at the matching parenthesis
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
          break
      operands, attributes = rest[:end], rest[end:]
      if opcode in ("call", "while", "conditional") or opcode.startswith("async"):
        for called in _CALLED.findall(attributes):
          pending.extend(c.strip().lstrip("%") for c in called.split(","))
      if opcode not in _NO_TRAFFIC:
        out[name] = array_bytes(type_text) + sum(
            array_bytes(types.get(operand, "")) for operand in re.findall(r"%([\w.\-]+)", operands))
  return out


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the JAX op name in its metadata, for every instruction that has one."""
  out = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      out[match.group(1)] = match.group(2)
  return out


def op_events(planes, names: dict[str, str]) -> tuple[list[tuple[str, float]], float | None]:
  """(HLO instruction, duration ns) of every event of the step's ops in a trace's planes, and the
  duration of the device events that match none (None without a device plane).

  An event's instruction is its `hlo_op` statistic where it has one (a GPU kernel is named after
  its kernel, "sm90_xmma_fprop_...", and carries the instruction as `hlo_op`), else its name (CPU
  thunks). Where there is a device plane, only device planes count (the host's events there are
  launches, not the work): their derived "XLA Ops" line where there is one, else their "Stream"
  lines (the same work kernel by kernel; module and step lines span whole programs). Without one
  (CPU), the host's threads count.
  """
  device, host, unmatched, on_a_device = [], [], 0.0, False
  for plane in planes:
    on_device = plane.name.startswith("/device:")
    lines = list(plane.lines)
    if on_device:  # the derived op line if there is one, else the streams' kernels and copies
      ops = [line for line in lines if line.name == "XLA Ops"]
      lines = ops or [line for line in lines if line.name.startswith("Stream")]
    for line in lines:
      for event in line.events:
        on_a_device |= on_device
        op = dict(event.stats).get("hlo_op", event.name)
        if op in names:
          (device if on_device else host).append((op, event.duration_ns))
        elif on_device:
          unmatched += event.duration_ns
  return (device, unmatched) if on_a_device else (host, None)


def classify(op_name: str) -> tuple[str, str]:
  """(phase, component) of one op from its JAX op name, e.g.
  'jit(_fun)/transpose(jvp(MTAN))/depth_encoder_mask_1/conv_g/conv_general_dilated'."""
  if "rematted_computation" in op_name:  # forward work redone in the backward pass (--remat)
    phase = "recompute"
  elif "transpose(" in op_name:
    phase = "backward"
  elif "jvp(" in op_name:
    phase = "forward"
  elif re.search(r"(^|/)(optimizer|skip_non_finite|metrics)/", op_name):
    phase = "update"
  else:
    phase = "other"
  for scope in SCOPES:
    if re.search(rf"(^|[/(]){scope}($|[/)])", op_name):  # a/losses/b or jvp(losses)
      return phase, COMPONENT_OF_SCOPE.get(scope, scope)
  if "conv_general_dilated" in op_name:
    return phase, "convolution"
  if re.search(r"/bn(_[gh])?/", op_name):
    return phase, "batchnorm"
  if re.search(r"_mask_\d|att_block", op_name):
    return phase, "attention"
  return phase, "other"


def profile(model_name: str, dataset: str, dtype: str, batch: int, resolution, width_mult: float,
            weighting_name: str, steps: int, trace_dir: str, warmup: int = 2,
            remat: bool = False) -> dict:
  """Traces `steps` train steps after a warm-up; returns ms per step by (phase, component) and the
  most expensive ops."""
  step, state, data, device = bench.setup(model_name, dataset, "train", dtype, batch, resolution,
                                          width_mult, weighting_name, remat=remat)
  compiled = step.lower(state, data).compile()
  hlo_text = compiled.as_text()
  names = op_names(hlo_text)
  for _ in range(max(warmup, 1)):
    state, outputs = compiled(state, data)
  jax.block_until_ready((state, outputs))
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      state, outputs = compiled(state, data)
    jax.block_until_ready((state, outputs))

  xla_bytes = bench.xla_cost(compiled).get("bytes accessed")  # to compare with the model
  moved = collections.Counter()  # bytes per (phase, component), from the program
  for op, count in traffic(hlo_text).items():
    moved[classify(names[op]) if op in names else ("other", "unattributed")] += count
  (path,) = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1:]
  trace = jax.profiler.ProfileData.from_file(path)
  by_group, by_op = collections.Counter(), collections.Counter()
  events, unmatched = op_events(trace.planes, names)
  for op, duration_ns in events:
    by_group[classify(names[op])] += duration_ns
    by_op[(op, names[op])] += duration_ns
  total = sum(by_group.values())
  if not total:
    raise RuntimeError(
        f"no event of the trace in {path} matched an instruction of the step (device time "
        f"matching none: {unmatched} ns): the trace's layout is not the one expected; open it "
        "with TensorBoard / XProf (--trace_dir keeps it)")
  ms = lambda ns: round(ns / 1e6 / steps, 3)  # noqa: E731
  return {"model": model_name, "dtype": dtype, "batch": batch,
          "resolution": f"{resolution[0]}x{resolution[1]}", "width_mult": width_mult,
          "remat": remat, "device": device.device_kind, "steps": steps, "op_ms_per_step": ms(total),
          "unmatched_ms_per_step": None if unmatched is None else ms(unmatched),
          "gb_per_step": round(sum(moved.values()) / 1e9, 4),
          "xla_gb_per_step": None if xla_bytes is None else round(xla_bytes / 1e9, 4),
          "groups": [{"phase": p, "component": c, "ms": ms(by_group[(p, c)]),
                      "share": round(by_group[(p, c)] / total, 4),
                      "gb": round(moved[(p, c)] / 1e9, 4)}
                     for p, c in sorted(by_group.keys() | moved.keys(),
                                        key=lambda k: (-by_group[k], -moved[k]))],
          "top_ops": [{"op": op, "jax": jax_name, "ms": ms(ns), "share": round(ns / total, 4)}
                      for (op, jax_name), ns in by_op.most_common(15)]}


def report(result: dict) -> str:
  """Tables: component x phase (ms per step), the bytes each component moves (the program's
  traffic model, `traffic`) and the bandwidth that makes; then the most expensive ops."""
  phases = ("forward", "backward", "recompute", "update", "other")
  cells, moved = collections.defaultdict(float), collections.defaultdict(float)
  for g in result["groups"]:
    cells[(g["component"], g["phase"])] += g["ms"]
    moved[g["component"]] += g.get("gb", 0.0)
  components = sorted({c for c, _ in cells}, key=lambda c: -sum(cells[(c, p)] for p in phases))
  total = result["op_ms_per_step"]
  lines = [f"{result['model']} {result['dtype']} batch {result['batch']} {result['resolution']}"
           f"{' remat' if result.get('remat') else ''} on {result['device']}: {total:.2f} ms of op "
           "time per step" + ("" if result.get("unmatched_ms_per_step") is None else
                              f" (+{result['unmatched_ms_per_step']:.2f} ms of device time "
                              "matching no op of the step)")
           + f"; {result['gb_per_step']:.3f} GB moved (XLA's count: {result['xla_gb_per_step']})",
           f"{'component':<16}" + "".join(f"{p:>11}" for p in phases)
           + f"{'total':>11}{'share':>8}{'GB':>9}{'GB/s':>9}"]
  for c in components:
    row = sum(cells[(c, p)] for p in phases)
    rate = f"{moved[c] / (row / 1e3):>9.1f}" if row else f"{'':>9}"
    lines.append(f"{c:<16}" + "".join(f"{cells[(c, p)]:>11.2f}" for p in phases)
                 + f"{row:>11.2f}{row / total:>8.1%}{moved[c]:>9.3f}{rate}")
  lines.append("most expensive ops (ms per step, share, JAX op):")
  for op in result["top_ops"]:
    lines.append(f"  {op['ms']:>9.3f} {op['share']:>6.1%}  {op['op']:<28} {op['jax'][-90:]}")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="mtan", choices=MODEL_NAMES)
  parser.add_argument("--dataset", default="nyuv2", choices=("nyuv2", "cityscapes"))
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--resolution", type=bench.parse_resolution, default=None)
  parser.add_argument("--width_mult", type=float, default=1.0)
  parser.add_argument("--weighting", default="equal", choices=weighting_lib.NAMES)
  parser.add_argument("--remat", action="store_true", help="profile training's --remat step")
  parser.add_argument("--steps", type=int, default=5, help="traced steps")
  parser.add_argument("--warmup", type=int, default=2, help="untraced steps first")
  parser.add_argument("--trace_dir", default=None, help="keep the trace here (default: temporary)")
  args = parser.parse_args(argv)
  resolution = args.resolution or tasks_lib.DEFAULT_RESOLUTION[args.dataset]
  with tempfile.TemporaryDirectory() as tmp:
    result = profile(args.model, args.dataset, args.dtype, args.batch, resolution,
                     args.width_mult, args.weighting, args.steps, args.trace_dir or tmp,
                     args.warmup, args.remat)
  print(json.dumps(result), flush=True)
  print(report(result), flush=True)
  return result


if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()  # as training runs (mtan_jax/huge_pages.py)
  xla_cpu.configure()  # before JAX starts: the CPU option training runs with
  main()
