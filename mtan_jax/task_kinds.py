"""Task kinds: everything the library knows about one kind of task, declared once (`KINDS`).

A kind says how its targets look and which of their pixels count, the activation on its head's
output, its loss as (sum, count), the sums one batch reduces to on the device, the metrics a
split's sums give on the host (and, for the reference's averaging, per batch on the device), and
each metric's table header, unit and direction. `losses`, `metrics`, `layers.task_output`, the
report, the run log and the input pipeline read these entries and branch on no task name, so a
new kind (e.g. edges) is one `TaskKind` here plus the datasets that hold it.

Shapes: one device's batch, predictions `[B, H, W, C]`; label targets `[B, H, W]` int32 (-1 =
unlabelled), map targets `[B, H, W, C]` float32 (an all-zero vector = undefined).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

HISTOGRAM_BINS = 18000  # 0.01-degree bins over [0, 180]
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)


@dataclasses.dataclass(frozen=True)
class Metric:
  """One metric of a kind: `name` (the key in results), the table `header`, whether a larger value
  is better, whether tables show it in percent (results keep fractions), digits shown."""

  name: str
  header: str
  higher_is_better: bool
  percent: bool = False
  digits: int = 2


@dataclasses.dataclass(frozen=True)
class TaskKind:
  """One kind of task (see the module docstring).

  Attributes:
    name: the task's name in configs, batches, outputs and results.
    dense: a per-pixel task (False: one prediction per image).
    channels: the head's fixed output channels; None: the class count, given per dataset.
    labels: targets are integer class labels (-1 unlabelled), else float maps (0 undefined).
    activation: head output `[B, H, W, C]` -> the task's prediction (float32).
    loss: (prediction, target) -> (sum over defined pixels, their count).
    sums: (channels, prediction, target) -> {name: array}, one batch's metric sums.
    metrics: (host sums in float64/int64, mode) -> {metric: float} for a split.
    batch_metrics: device sums -> {metric: array} of one batch (the reference's per-batch
      averaging); None: the kind's "reference" metrics come from the split's sums as well.
    table: the metrics, in table order.
  """

  name: str
  dense: bool
  channels: int | None
  labels: bool
  activation: Callable[[jax.Array], jax.Array]
  loss: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
  sums: Callable[[int, jax.Array, jax.Array], dict[str, jax.Array]]
  metrics: Callable[[dict[str, Any], str], dict[str, float]]
  batch_metrics: Callable[[dict[str, jax.Array]], dict[str, jax.Array]] | None
  table: tuple[Metric, ...]

  @property
  def metric_names(self) -> tuple[str, ...]:
    return tuple(m.name for m in self.table)

  def valid(self, target: jax.Array) -> jax.Array:
    """`[B, H, W]` float32: 1 where the target defines the pixel."""
    if self.labels:
      return (target >= 0).astype(jnp.float32)
    return (jnp.sum(target, axis=-1) != 0).astype(jnp.float32)

  def padding(self, like: np.ndarray) -> np.ndarray:
    """A target like `like` that defines no pixel (an example added to fill a batch)."""
    return np.full_like(like, -1) if self.labels else np.zeros_like(like)


def _defined(target: jax.Array) -> jax.Array:
  return (jnp.sum(target, axis=-1) != 0).astype(jnp.float32)


def _ratio(a, b) -> float:
  return float(a / b) if b > 0 else math.nan


def _device_ratio(a, b):
  return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), jnp.nan)


# --- Segmentation ------------------------------------------------------------------------------

def segmentation_nll(log_probs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Negative log-likelihood of the labels (log_probs `[B, H, W, C]`, labels `[B, H, W]`, -1 =
  ignored): (sum, count) over labelled pixels."""
  valid = (labels >= 0).astype(jnp.float32)
  picked = jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
  return -jnp.sum(picked * valid), jnp.sum(valid)


def _segmentation_sums(classes: int, prediction, target):
  valid = ((target >= 0) & (target < classes)).astype(jnp.float32)
  target_1hot = jax.nn.one_hot(jnp.clip(target, 0, classes - 1), classes) * valid[..., None]
  predicted_1hot = jax.nn.one_hot(jnp.argmax(prediction, axis=-1), classes)
  # confusion[t, p]: pixels of class t predicted as p (a matmul: no scatter).
  confusion = jnp.einsum("...t,...p->tp", target_1hot, predicted_1hot,
                         precision=jax.lax.Precision.HIGHEST)
  return {"confusion": confusion.astype(jnp.int32)}


def _segmentation_metrics(s: dict[str, Any], mode: str) -> dict[str, float]:
  """mIoU over the classes that occur (the reference's mode: over all, NaN if one never does),
  pixel accuracy, from one confusion matrix."""
  confusion = np.asarray(s["confusion"]).astype(np.float64)
  diagonal = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - diagonal
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = diagonal / union
    accuracy = diagonal.sum() / confusion.sum()
  miou = float(np.mean(iou)) if mode == "reference" else (
      float(np.mean(iou[union > 0])) if np.any(union > 0) else math.nan)
  return {"miou": miou, "pixel_accuracy": float(accuracy)}


# --- Depth -------------------------------------------------------------------------------------

def depth_l1(prediction: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """|prediction - target| over pixels with target != 0: (sum, count)."""
  valid = _defined(target)[..., None]
  return jnp.sum(jnp.abs(prediction - target) * valid), jnp.sum(valid)


def _depth_sums(channels: int, prediction, target):
  del channels
  valid = _defined(target)[..., None]
  error = jnp.abs(prediction - target) * valid
  return {"abs": jnp.sum(error), "rel": jnp.sum(error / jnp.where(valid > 0, target, 1.0)),
          "count": jnp.sum(valid)}


def _depth_metrics(s: dict[str, Any], mode: str = "exact") -> dict[str, float]:
  del mode
  return {"abs_error": _ratio(s["abs"], s["count"]), "rel_error": _ratio(s["rel"], s["count"])}


def _depth_batch_metrics(s):
  return {"abs_error": _device_ratio(s["abs"], s["count"]),
          "rel_error": _device_ratio(s["rel"], s["count"])}


# --- Surface normals ---------------------------------------------------------------------------

def unit_normals(head_out: jax.Array) -> jax.Array:
  """Divided by their L2 norm, with no epsilon, as the reference (all-zero gives NaN there too)."""
  return head_out / jnp.linalg.norm(head_out, axis=-1, keepdims=True)


def normal_cosine(prediction: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """1 - <prediction, target> over pixels with a defined normal: (sum, count).

  The prediction is unit length, so this is 1 - cos(angle), as the reference's
  `1 - sum(pred * gt * mask) / N`.
  """
  valid = _defined(target)
  cosine = jnp.sum(prediction * target, axis=-1)
  return jnp.sum((1.0 - cosine) * valid), jnp.sum(valid)


def _normal_sums(channels: int, prediction, target):
  del channels
  valid = _defined(target)
  cosine = jnp.clip(jnp.sum(prediction * target, axis=-1), -1.0, 1.0)
  angle = jnp.degrees(jnp.arccos(cosine))
  bins = jnp.clip((angle * (HISTOGRAM_BINS / 180.0)).astype(jnp.int32), 0, HISTOGRAM_BINS - 1)
  histogram = jnp.zeros(HISTOGRAM_BINS, jnp.int32).at[bins.ravel()].add(
      valid.ravel().astype(jnp.int32))
  sums = {"angle": jnp.sum(angle * valid), "count": jnp.sum(valid), "histogram": histogram}
  for threshold in ANGLE_THRESHOLDS:
    sums[f"below_{threshold}"] = jnp.sum((angle < threshold) * valid)
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


def _histogram_median_device(histogram: jax.Array) -> jax.Array:
  """`histogram_median` on the device (NaN for an empty histogram)."""
  total = jnp.sum(histogram)
  cumulative = jnp.cumsum(histogram)
  lower = jnp.searchsorted(cumulative, (total - 1) // 2 + 1)
  upper = jnp.searchsorted(cumulative, total // 2 + 1)
  median = (lower + upper + 1).astype(jnp.float32) * (90.0 / histogram.shape[0])
  return jnp.where(total > 0, median, jnp.nan)


def _normal_metrics(s: dict[str, Any], mode: str = "exact") -> dict[str, float]:
  del mode
  out = {"angle_mean": _ratio(s["angle"], s["count"]),
         "angle_median": histogram_median(np.asarray(s["histogram"]))}
  for threshold in ANGLE_THRESHOLDS:
    out[f"within_{threshold:g}"] = _ratio(s[f"below_{threshold}"], s["count"])
  return out


def _normal_batch_metrics(s):
  out = {"angle_mean": _device_ratio(s["angle"], s["count"]),
         "angle_median": _histogram_median_device(s["histogram"])}
  for threshold in ANGLE_THRESHOLDS:
    out[f"within_{threshold:g}"] = _device_ratio(s[f"below_{threshold}"], s["count"])
  return out


# --- The registry ------------------------------------------------------------------------------

KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (
    TaskKind("segmentation", dense=True, channels=None, labels=True,
             activation=lambda x: jax.nn.log_softmax(x, axis=-1), loss=segmentation_nll,
             sums=_segmentation_sums, metrics=_segmentation_metrics, batch_metrics=None,
             table=(Metric("miou", "mIoU", True, percent=True),
                    Metric("pixel_accuracy", "Pix Acc", True, percent=True))),
    TaskKind("depth", dense=True, channels=1, labels=False, activation=lambda x: x,
             loss=depth_l1, sums=_depth_sums, metrics=_depth_metrics,
             batch_metrics=_depth_batch_metrics,
             table=(Metric("abs_error", "Abs Err", False, digits=4),
                    Metric("rel_error", "Rel Err", False, digits=4))),
    TaskKind("normal", dense=True, channels=3, labels=False, activation=unit_normals,
             loss=normal_cosine, sums=_normal_sums, metrics=_normal_metrics,
             batch_metrics=_normal_batch_metrics,
             table=(Metric("angle_mean", "Mean", False), Metric("angle_median", "Median", False),
                    *(Metric(f"within_{t:g}", f"{t:g}", True, percent=True)
                      for t in ANGLE_THRESHOLDS))),
)}
NAMES = tuple(KINDS)
# Every metric of every kind by name (names are unique across kinds).
METRICS: dict[str, Metric] = {m.name: m for kind in KINDS.values() for m in kind.table}


def get(name: str) -> TaskKind:
  if name not in KINDS:
    raise ValueError(f"task: expected one of {NAMES}, found {name!r}")
  return KINDS[name]
