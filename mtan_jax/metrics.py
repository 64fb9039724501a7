"""Exact split-level metrics, accumulated as sums, and Δm against a baseline.

On the device, `batch_sums` reduces one batch to a few sums per task (summed over the device axis):
a confusion matrix; depth absolute / relative error sums and a pixel count; normal angle sum, counts
under 11.25 / 22.5 / 30 degrees and a 0.01-degree histogram of angles. On the host, `Accumulator`
adds them up over the whole split in float64 / int64 and turns them into metrics:

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

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mtan_jax import losses as losses_lib
from mtan_jax import tasks as tasks_lib

HISTOGRAM_BINS = 18000  # 0.01-degree bins over [0, 180]
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
MODES = ("exact", "reference")

# Whether a larger value is better, per metric (for tables and Δm).
HIGHER_IS_BETTER = {"miou": True, "pixel_accuracy": True, "abs_error": False, "rel_error": False,
                    "angle_mean": False, "angle_median": False, "within_11.25": True,
                    "within_22.5": True, "within_30": True}
TASK_METRICS = {tasks_lib.SEGMENTATION: ("miou", "pixel_accuracy"),
                tasks_lib.DEPTH: ("abs_error", "rel_error"),
                tasks_lib.NORMAL: ("angle_mean", "angle_median", "within_11.25", "within_22.5",
                                   "within_30")}


def batch_sums(tasks, outputs: dict[str, jax.Array], batch: dict[str, jax.Array],
               axis_name: str | None = None) -> dict[str, dict[str, jax.Array]]:
  """Per-task metric sums of one batch (on device; summed over `axis_name` when given)."""
  sums = {}
  for task in tasks:
    prediction, target = outputs[task.name], batch[task.name]
    if task.name == tasks_lib.SEGMENTATION:
      c = task.channels
      valid = ((target >= 0) & (target < c)).astype(jnp.float32)
      target_1hot = jax.nn.one_hot(jnp.clip(target, 0, c - 1), c) * valid[..., None]
      predicted_1hot = jax.nn.one_hot(jnp.argmax(prediction, axis=-1), c)
      # confusion[t, p]: pixels of class t predicted as p (a matmul: no scatter).
      confusion = jnp.einsum("...t,...p->tp", target_1hot, predicted_1hot,
                             precision=jax.lax.Precision.HIGHEST)
      task_sums = {"confusion": confusion.astype(jnp.int32)}
    elif task.name == tasks_lib.DEPTH:
      valid = losses_lib.valid_mask(task, target)[..., None]
      error = jnp.abs(prediction - target) * valid
      task_sums = {"abs": jnp.sum(error),
                   "rel": jnp.sum(error / jnp.where(valid > 0, target, 1.0)),
                   "count": jnp.sum(valid)}
    else:
      valid = losses_lib.valid_mask(task, target)
      cosine = jnp.clip(jnp.sum(prediction * target, axis=-1), -1.0, 1.0)
      angle = jnp.degrees(jnp.arccos(cosine))
      bins = jnp.clip((angle * (HISTOGRAM_BINS / 180.0)).astype(jnp.int32), 0, HISTOGRAM_BINS - 1)
      histogram = jnp.zeros(HISTOGRAM_BINS, jnp.int32).at[bins.ravel()].add(
          valid.ravel().astype(jnp.int32))
      task_sums = {"angle": jnp.sum(angle * valid), "count": jnp.sum(valid),
                   "histogram": histogram}
      for threshold in ANGLE_THRESHOLDS:
        task_sums[f"below_{threshold}"] = jnp.sum((angle < threshold) * valid)
    sums[task.name] = task_sums
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums


def histogram_median(histogram: np.ndarray) -> float:
  """The median of the values binned in `histogram` (0.01-degree bins), as np.median defines it
  (the mean of the two middle values for an even count), each value taken at its bin's centre."""
  total = int(histogram.sum())
  if total == 0:
    return math.nan
  cumulative = np.cumsum(histogram)
  width = 180.0 / len(histogram)
  lower = int(np.searchsorted(cumulative, (total - 1) // 2 + 1))  # bin of the ((n-1)//2)-th value
  upper = int(np.searchsorted(cumulative, total // 2 + 1))  # bin of the (n//2)-th value
  return (lower + upper + 1) * width / 2


def _segmentation(confusion: np.ndarray, mode: str) -> dict[str, float]:
  confusion = confusion.astype(np.float64)
  diagonal = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - diagonal
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = diagonal / union
    accuracy = diagonal.sum() / confusion.sum()
  miou = float(np.mean(iou)) if mode == "reference" else (
      float(np.mean(iou[union > 0])) if np.any(union > 0) else math.nan)
  return {"miou": miou, "pixel_accuracy": float(accuracy)}


def _ratio(a, b) -> float:
  return float(a / b) if b > 0 else math.nan


def _depth(s: dict[str, Any]) -> dict[str, float]:
  return {"abs_error": _ratio(s["abs"], s["count"]), "rel_error": _ratio(s["rel"], s["count"])}


def _normal(s: dict[str, Any]) -> dict[str, float]:
  out = {"angle_mean": _ratio(s["angle"], s["count"]),
         "angle_median": histogram_median(np.asarray(s["histogram"]))}
  for threshold in ANGLE_THRESHOLDS:
    out[f"within_{threshold:g}"] = _ratio(s[f"below_{threshold}"], s["count"])
  return out


class Accumulator:
  """Adds up `batch_sums` over a split on the host and gives the split's metrics.

  Args:
    tasks: the tasks.
    mode: "exact" or "reference" (see the module docstring).
  """

  def __init__(self, tasks, mode: str = "exact"):
    if mode not in MODES:
      raise ValueError(f"metrics mode: expected one of {MODES}, found {mode!r}")
    self.tasks, self.mode = tuple(tasks), mode
    self.sums: dict[str, dict[str, np.ndarray]] = {}
    self.batch_means: dict[str, dict[str, list[float]]] = {t.name: {} for t in self.tasks}
    self.losses: dict[str, list[float]] = {t.name: [] for t in self.tasks}

  def add(self, sums: dict[str, dict[str, Any]], task_losses: dict[str, Any] | None = None) -> None:
    """One batch's sums (host numpy or device arrays) and, optionally, its task losses."""
    sums = jax.tree_util.tree_map(np.asarray, sums)
    for task in self.tasks:
      batch = sums[task.name]
      acc = self.sums.setdefault(task.name, {})
      for key, value in batch.items():
        wide = value.astype(np.int64 if value.dtype.kind in "iu" else np.float64)
        acc[key] = acc[key] + wide if key in acc else wide
      if self.mode == "reference" and task.name != tasks_lib.SEGMENTATION:
        per_batch = _depth(batch) if task.name == tasks_lib.DEPTH else _normal(batch)
        for key, value in per_batch.items():
          self.batch_means[task.name].setdefault(key, []).append(value)
      if task_losses is not None:
        self.losses[task.name].append(float(task_losses[task.name]))

  def to_json(self) -> dict[str, Any]:
    """What was added so far, as JSON (to resume an interrupted epoch)."""
    return {"sums": jax.tree_util.tree_map(lambda a: a.tolist(), self.sums),
            "batch_means": self.batch_means, "losses": self.losses}

  def load_json(self, saved: dict[str, Any]) -> "Accumulator":
    """Continues from `to_json`'s record."""
    self.sums = {task: {k: np.asarray(v, np.int64 if k in ("confusion", "histogram")
                                      else np.float64) for k, v in sums.items()}
                 for task, sums in saved["sums"].items()}
    self.batch_means, self.losses = saved["batch_means"], saved["losses"]
    return self

  def result(self) -> dict[str, dict[str, float]]:
    """{task: {metric: value}}, with "loss" the mean of the batches' task losses when given."""
    out = {}
    for task in self.tasks:
      s = self.sums.get(task.name)
      if s is None:
        raise ValueError("Accumulator.result: no batch was added")
      if task.name == tasks_lib.SEGMENTATION:
        values = _segmentation(s["confusion"], self.mode)
      elif self.mode == "reference":
        values = {k: float(np.mean(v)) for k, v in self.batch_means[task.name].items()}
      else:
        values = _depth(s) if task.name == tasks_lib.DEPTH else _normal(s)
      if self.losses[task.name]:
        values = {"loss": float(np.mean(self.losses[task.name])), **values}
      out[task.name] = values
    return out


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
