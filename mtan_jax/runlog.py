"""What a run writes for people: metrics.jsonl, TensorBoard events, a table per epoch, a summary.

Only process 0 of a multi-host run writes (the caller passes `enabled=False` elsewhere).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np

from mtan_jax import metrics as metrics_lib
from mtan_jax import rundir

LAST_EPOCHS = 10  # the paper reports the mean of the last 10 epochs
DROPPED = "metrics_dropped.jsonl"  # lines metrics.jsonl lost on a resume (epochs redone)


def json_safe(value):
  """JSON-safe floats: NaN and inf become None."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


class RunLog:
  """Per-epoch records into `workdir/metrics.jsonl` and TensorBoard (`workdir/tensorboard`).

  `first_epoch` is the epoch the run starts (or resumes) at: records of later epochs already in
  metrics.jsonl come from a run killed after logging an epoch but before its checkpoint was
  committed (or a line cut short by the kill); they are dropped, so the file always describes the
  epochs the checkpoint holds, and the epoch that is redone is logged once.
  """

  def __init__(self, workdir, enabled: bool = True, first_epoch: int = 0):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self._writer = None
    if enabled:
      self._keep_epochs_before(first_epoch)
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._writer = SummaryWriter(str(self.workdir / "tensorboard"))

  def _keep_epochs_before(self, first_epoch: int) -> None:
    """Keeps the epochs before `first_epoch`; the lines dropped (epochs to be redone, a line cut
    short) are appended to metrics_dropped.jsonl, so nothing a run logged is lost."""
    path = self.workdir / "metrics.jsonl"
    if not path.exists():
      return
    kept, dropped = [], []
    for line in path.read_text().splitlines():
      try:
        keep = json.loads(line)["epoch"] < first_epoch
      except (json.JSONDecodeError, KeyError, TypeError):
        keep = False  # a line cut short by a kill
      (kept if keep else dropped).append(line)
    if not dropped:
      return
    with open(self.workdir / DROPPED, "a") as f:
      f.write("".join(line + "\n" for line in dropped))
    rundir.write_text_atomically(path, "".join(line + "\n" for line in kept))

  def epoch(self, record: dict[str, Any]) -> None:
    """Appends one epoch: {"epoch", "seconds", "lr", "weights", "train", "test", ...}."""
    if not self.enabled:
      return
    with open(self.workdir / "metrics.jsonl", "a") as f:
      f.write(json.dumps(json_safe(record)) + "\n")
    step = record["epoch"]
    for split in ("train", "validation", "test"):
      for task, values in record.get(split, {}).items():
        for name, value in values.items():
          if value is not None and math.isfinite(value):
            self._writer.add_scalar(f"{split}/{task}/{name}", value, step)
    for task, weight in record.get("weights", {}).items():
      self._writer.add_scalar(f"weights/{task}", weight, step)
    self._writer.add_scalar("lr", record["lr"], step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def read_records(workdir) -> list[dict[str, Any]]:
  """The epochs recorded in `workdir/metrics.jsonl`, in order (the last record of an epoch wins).

  A last line cut short (a run killed while writing it) is ignored, as training does; a damaged
  line before it raises ValueError naming the file and the line."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  by_epoch = {}
  lines = path.read_text().splitlines()
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      by_epoch[int(record["epoch"])] = record
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
      if number == len(lines):
        break
      raise ValueError(f"{path}, line {number}: not an epoch record ({error})") from error
  return [by_epoch[e] for e in sorted(by_epoch)]


def last_epochs_mean(records: list[dict[str, Any]], split: str = "test",
                     count: int = LAST_EPOCHS) -> dict[str, dict[str, float]]:
  """Each metric of `split` averaged over the last `count` epochs, as the paper reports results."""
  chosen = [r[split] for r in records[-count:] if split in r]
  if not chosen:
    return {}
  out = {}
  for task in chosen[-1]:
    out[task] = {}
    for name in chosen[-1][task]:
      values = [c[task][name] for c in chosen if c[task].get(name) is not None]
      out[task][name] = float(np.mean(values)) if values else math.nan
  return out


def format_epoch(record: dict[str, Any]) -> str:
  """A compact table of one epoch: per task, its weight, train and test losses and test metrics."""
  lines = [f"epoch {record['epoch']:>4}  {record['seconds']:.1f}s  lr {record['lr']:.2e}"]
  evaluated = "validation" if "validation" in record else "test"
  for task, weight in record["weights"].items():
    train = record["train"][task]
    test = record.get(evaluated, {}).get(task, {})
    shown = "  ".join(f"{name} {_fmt(test.get(name))}"
                      for name in metrics_lib.TASK_METRICS.get(task, ()) if name in test)
    lines.append(f"  {task:<13} w {weight:6.3f}  train loss {_fmt(train.get('loss'))}  "
                 f"{evaluated} loss {_fmt(test.get('loss'))}  {shown}")
  return "\n".join(lines)


def format_summary(means: dict[str, dict[str, float]], count: int) -> str:
  lines = [f"Mean of the last {count} epochs (test split), as the paper reports:"]
  for task, values in means.items():
    shown = "  ".join(f"{name} {_fmt(value)}" for name, value in values.items())
    lines.append(f"  {task:<13} {shown}")
  return "\n".join(lines)


def _fmt(value) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "   n/a"
  return f"{value:.4f}"
