"""Exact split-level metrics, accumulated as sums, and Δm against a baseline.

On the device, `batch_sums` reduces one batch to a few sums per task (summed over the device axis):
a confusion matrix; depth absolute / relative error sums and a pixel count; normal angle sum, counts
under 11.25 / 22.5 / 30 degrees and a 0.01-degree histogram of angles. `add_to_totals` adds them
up on the device (float sums with their rounding error, so that an epoch adds without loss) and is
read once per epoch; on the host, `Accumulator` adds them in float64 / int64 and turns them into
metrics:

- "exact" (default): every pixel of the split counts once. mIoU and pixel accuracy from one confusion
  matrix; depth errors and normal angle statistics as pixel means over the split; the median angle
  from the histogram, to within 0.01 degrees. mIoU averages the IoU of the classes that occur (in the
  target or the prediction) in the split; a class that never occurs has no IoU.
- "reference": the reference's numbers, to compare with published ones: depth and normal statistics
  computed per batch and averaged over batches (each batch counts the same, the last partial one
  too), the median a mean of per-batch medians; segmentation as exact (the reference uses one
  confusion matrix too), except that mIoU is the plain mean over all classes (NaN if one never occurs).

All values are fractions (pixel accuracy 0.55, not 55%), angles in degrees.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mtan_jax import task_kinds
from mtan_jax.task_kinds import ANGLE_THRESHOLDS, HISTOGRAM_BINS, histogram_median  # noqa: F401

MODES = ("exact", "reference")

# Whether a larger value is better, per metric (for tables and Δm), and each task's metrics in
# table order: both read from the task kinds' declarations.
HIGHER_IS_BETTER = {name: m.higher_is_better for name, m in task_kinds.METRICS.items()}
TASK_METRICS = {name: kind.metric_names for name, kind in task_kinds.KINDS.items()}


def batch_sums(tasks, outputs: dict[str, jax.Array], batch: dict[str, jax.Array],
               axis_name: str | None = None) -> dict[str, dict[str, jax.Array]]:
  """Per-task metric sums of one batch (on device; summed over `axis_name` when given)."""
  sums = {task.name: task.kind.sums(task.channels, outputs[task.name], batch[task.name])
          for task in tasks}
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums


class Accumulator:
  """Adds up `batch_sums` over a split on the host and gives the split's metrics.

  Batches come one at a time (`add`) or as the device-side totals of many (`add_totals`, see
  `new_totals`); both paths give the same metrics.

  Args:
    tasks: the tasks.
    mode: "exact" or "reference" (see the module docstring).
  """

  def __init__(self, tasks, mode: str = "exact"):
    if mode not in MODES:
      raise ValueError(f"metrics mode: expected one of {MODES}, found {mode!r}")
    self.tasks, self.mode = tuple(tasks), mode
    self.sums: dict[str, dict[str, np.ndarray]] = {}
    # Reference mode: per-batch statistics, summed, and the number of batches.
    self.batch_mean_sums: dict[str, dict[str, float]] = {t.name: {} for t in self.tasks}
    self.batches = 0
    self.loss_sums: dict[str, float] = {t.name: 0.0 for t in self.tasks}
    self.loss_count = 0

  def _add_sums(self, sums: dict[str, dict[str, np.ndarray]]) -> None:
    for task in self.tasks:
      acc = self.sums.setdefault(task.name, {})
      for key, value in sums[task.name].items():
        wide = np.asarray(value).astype(np.int64 if np.asarray(value).dtype.kind in "iu"
                                        else np.float64)
        acc[key] = acc[key] + wide if key in acc else wide

  def add(self, sums: dict[str, dict[str, Any]], task_losses: dict[str, Any] | None = None) -> None:
    """One batch's sums (host numpy or device arrays) and, optionally, its task losses."""
    sums = jax.tree_util.tree_map(np.asarray, sums)
    self._add_sums(sums)
    if self.mode == "reference":
      self.batches += 1
      for task in self.tasks:
        if task.kind.batch_metrics is not None:
          per_batch = task.kind.metrics(sums[task.name], self.mode)
          means = self.batch_mean_sums[task.name]
          for key, value in per_batch.items():
            means[key] = means.get(key, 0.0) + value
    if task_losses is not None:
      self.loss_count += 1
      for task in self.tasks:
        self.loss_sums[task.name] += float(task_losses[task.name])

  def add_totals(self, totals: dict[str, Any]) -> None:
    """The totals `add_to_totals` gathered on the device (as host numpy)."""
    value = lambda pair: float(np.float64(pair[0]) + np.float64(pair[1]))  # noqa: E731
    self._add_sums({task: {key: (value(v) if v.shape == (2,) and v.dtype.kind == "f" else v)
                           for key, v in sums.items()}
                    for task, sums in totals["sums"].items()})
    self.batches += int(totals["batches"])
    for task, means in totals["batch_means"].items():
      for key, pair in means.items():
        self.batch_mean_sums[task][key] = self.batch_mean_sums[task].get(key, 0.0) + value(pair)
    self.loss_count += int(totals["batches"]) if totals["losses"] else 0
    for task, pair in totals["losses"].items():
      self.loss_sums[task] += value(pair)

  def to_json(self) -> dict[str, Any]:
    """What was added so far, as JSON (to resume an interrupted epoch)."""
    return {"sums": jax.tree_util.tree_map(lambda a: a.tolist(), self.sums),
            "batch_mean_sums": self.batch_mean_sums, "batches": self.batches,
            "loss_sums": self.loss_sums, "loss_count": self.loss_count}

  def load_json(self, saved: dict[str, Any]) -> "Accumulator":
    """Continues from `to_json`'s record (or an earlier version's, which kept lists)."""
    self.sums = {task: {k: np.asarray(v, np.int64 if k in ("confusion", "histogram")
                                      else np.float64) for k, v in sums.items()}
                 for task, sums in saved["sums"].items()}
    if "batch_means" in saved:  # earlier versions: every batch's values
      self.batch_mean_sums = {t: {k: float(np.sum(v)) for k, v in m.items()}
                              for t, m in saved["batch_means"].items()}
      self.batches = max((len(v) for m in saved["batch_means"].values() for v in m.values()),
                         default=0)
      self.loss_sums = {t: float(np.sum(v)) for t, v in saved["losses"].items()}
      self.loss_count = max((len(v) for v in saved["losses"].values()), default=0)
      return self
    self.batch_mean_sums, self.batches = saved["batch_mean_sums"], saved["batches"]
    self.loss_sums, self.loss_count = saved["loss_sums"], saved["loss_count"]
    return self

  def result(self) -> dict[str, dict[str, float]]:
    """{task: {metric: value}}, with "loss" the mean of the batches' task losses when given."""
    out = {}
    for task in self.tasks:
      s = self.sums.get(task.name)
      if s is None:
        raise ValueError("Accumulator.result: no batch was added")
      if self.mode == "reference" and task.kind.batch_metrics is not None:
        values = {k: v / self.batches for k, v in self.batch_mean_sums[task.name].items()}
      else:
        values = task.kind.metrics(s, self.mode)
      if self.loss_count:
        values = {"loss": self.loss_sums[task.name] / self.loss_count, **values}
      out[task.name] = values
    return out


# --- Totals on the device: a step's sums added where it ran, read once per epoch ----------------

def _pair() -> np.ndarray:
  """A float32 sum kept as (value, rounding error) so that thousands of steps add without loss."""
  return np.zeros(2, np.float32)


def _pair_add(pair: jax.Array, x: jax.Array) -> jax.Array:
  """`pair` + x by the error-free two-sum: the rounding error of each addition is kept in pair[1]."""
  total = pair[0] + x
  back = total - pair[0]
  error = (pair[0] - (total - back)) + (x - back)
  return jnp.stack([total, pair[1] + error])


def sums_shapes(tasks) -> dict[str, dict[str, jax.ShapeDtypeStruct]]:
  """The shapes of `batch_sums` results (they do not depend on the batch's size)."""
  outputs, batch = {}, {}
  for task in tasks:
    outputs[task.name] = jax.ShapeDtypeStruct((1, 1, 1, task.channels), jnp.float32)
    batch[task.name] = (jax.ShapeDtypeStruct((1, 1, 1), jnp.int32) if task.kind.labels
                        else jax.ShapeDtypeStruct((1, 1, 1, task.channels), jnp.float32))
  return jax.eval_shape(lambda o, b: batch_sums(tasks, o, b), outputs, batch)


def new_totals(tasks, mode: str = "exact", losses: bool = True) -> dict[str, Any]:
  """Zero totals for `add_to_totals`, on the host: integer sums as they are, float sums as
  (value, error) pairs, the reference mode's per-batch statistics, the task losses (`losses`) and
  the batch count."""
  sums = sums_shapes(tasks)
  totals = {"sums": {t: {k: (np.zeros(v.shape, v.dtype) if jnp.issubdtype(v.dtype, jnp.integer)
                             else _pair()) for k, v in task_sums.items()}
                     for t, task_sums in sums.items()},
            "batch_means": {}, "losses": {}, "batches": np.zeros((), np.int32)}
  if mode == "reference":
    for task in tasks:
      if task.kind.batch_metrics is not None:
        shape = jax.eval_shape(task.kind.batch_metrics, sums[task.name])
        totals["batch_means"][task.name] = {k: _pair() for k in shape}
  if losses:
    totals["losses"] = {t.name: _pair() for t in tasks}
  return totals


def add_to_totals(totals: dict[str, Any], sums: dict[str, dict[str, jax.Array]],
                  task_losses: dict[str, jax.Array] | None = None,
                  include: jax.Array | bool = True) -> dict[str, Any]:
  """`totals` plus one batch's sums (and task losses), on the device; unchanged where `include`
  is False (a skipped step adds nothing)."""
  new = {"sums": {}, "batch_means": {}, "losses": {}, "batches": totals["batches"] + 1}
  for task, task_totals in totals["sums"].items():
    new["sums"][task] = {k: (_pair_add(v, sums[task][k]) if v.shape == (2,) and
                             jnp.issubdtype(v.dtype, jnp.floating) else v + sums[task][k])
                         for k, v in task_totals.items()}
  for task, means in totals["batch_means"].items():
    per_batch = task_kinds.get(task).batch_metrics(sums[task])
    new["batch_means"][task] = {k: _pair_add(v, per_batch[k]) for k, v in means.items()}
  for task, pair in totals["losses"].items():
    new["losses"][task] = _pair_add(pair, task_losses[task])
  return jax.tree_util.tree_map(lambda a, b: jnp.where(include, a, b), new, totals)


def delta_m(results: dict[str, dict[str, float]],
            baseline: dict[str, dict[str, float]]) -> float:
  """Relative multi-task improvement over a baseline, in percent.

  Δm = (1 / M) sum over the M metrics of both (-1)^l (M_model - M_base) / M_base * 100, with l = 1
  when lower is better. Every metric of every task in `baseline` counts equally (the convention of
  Maninis et al. 2019 and of the MTAN author's later work); losses are not metrics. Positive is better.
  """
  terms = []
  for task, metrics in baseline.items():
    for name, base in metrics.items():
      if name not in HIGHER_IS_BETTER:
        continue
      sign = 1.0 if HIGHER_IS_BETTER[name] else -1.0
      terms.append(sign * (results[task][name] - base) / base * 100.0)
  if not terms:
    raise ValueError("delta_m: the baseline holds no metric")
  return float(np.mean(terms))
