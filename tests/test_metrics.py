"""Metrics against plain-numpy computations on random data."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtan_jax import metrics
from mtan_jax import tasks as tasks_lib

NYU = tasks_lib.dataset_tasks("nyuv2")


def random_batches(seed, count=3, shape=(2, 8, 10)):
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    logits = rng.normal(size=shape + (13,)).astype(np.float32)
    labels = rng.integers(-1, 13, size=shape).astype(np.int32)
    depth_gt = rng.uniform(0.5, 5, size=shape + (1,)).astype(np.float32)
    depth_gt[rng.uniform(size=shape) < 0.2] = 0
    depth_pred = (depth_gt + rng.normal(size=depth_gt.shape)).astype(np.float32)
    normal_gt = rng.normal(size=shape + (3,)).astype(np.float32)
    normal_gt /= np.linalg.norm(normal_gt, axis=-1, keepdims=True)
    normal_gt[rng.uniform(size=shape) < 0.2] = 0
    normal_pred = rng.normal(size=shape + (3,)).astype(np.float32)
    normal_pred /= np.linalg.norm(normal_pred, axis=-1, keepdims=True)
    batches.append(({"segmentation": jax.nn.log_softmax(logits), "depth": depth_pred,
                     "normal": normal_pred},
                    {"segmentation": labels, "depth": depth_gt, "normal": normal_gt}))
  return batches


def numpy_reference(batches):
  """Every pixel of the split counts once (the exact mode), computed directly."""
  conf = np.zeros((13, 13), np.int64)
  depth_err, depth_rel, angles = [], [], []
  for outputs, targets in batches:
    pred = np.argmax(np.asarray(outputs["segmentation"]), -1)
    lab = targets["segmentation"]
    for t, p in zip(lab[lab >= 0], pred[lab >= 0]):
      conf[t, p] += 1
    gt, dp = targets["depth"][..., 0], outputs["depth"][..., 0]
    v = gt != 0
    depth_err.append(np.abs(dp - gt)[v])
    depth_rel.append((np.abs(dp - gt) / np.where(v, gt, 1))[v])
    n_gt, n_pr = targets["normal"].astype(np.float64), outputs["normal"].astype(np.float64)
    v = n_gt.sum(-1) != 0
    cos = np.clip((n_gt * n_pr).sum(-1), -1, 1)
    angles.append(np.degrees(np.arccos(cos))[v])
  iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
  a = np.concatenate(angles)
  return {"miou": np.nanmean(iou), "pixel_accuracy": np.trace(conf) / conf.sum(),
          "abs_error": np.concatenate(depth_err).mean(), "rel_error": np.concatenate(depth_rel).mean(),
          "angle_mean": a.mean(), "angle_median": np.median(a),
          "within_11.25": np.mean(a < 11.25), "within_22.5": np.mean(a < 22.5),
          "within_30": np.mean(a < 30)}


def accumulate(batches, mode):
  acc = metrics.Accumulator(NYU, mode)
  for outputs, targets in batches:
    acc.add(metrics.batch_sums(NYU, outputs, targets))
  return acc.result()


def test_exact_metrics_match_numpy_over_the_split():
  batches = random_batches(0)
  result = accumulate(batches, "exact")
  expected = numpy_reference(batches)
  flat = {**result["segmentation"], **result["depth"], **result["normal"]}
  for name, value in expected.items():
    tolerance = 0.01 if name == "angle_median" else 1e-5  # the median is to within 0.01 degrees
    assert flat[name] == pytest.approx(value, abs=tolerance, rel=1e-5), name


def test_reference_mode_averages_per_batch_statistics():
  batches = random_batches(1, count=3)
  result = accumulate(batches, "reference")
  per_batch = [numpy_reference([b]) for b in batches]
  for name in ("abs_error", "rel_error", "angle_mean", "within_22.5", "angle_median"):
    task = "depth" if "error" in name else "normal"
    expected = np.mean([p[name] for p in per_batch])
    assert result[task][name] == pytest.approx(expected, abs=0.01 if "median" in name else 1e-5)
  # Per-batch averaging differs from the split mean (batches have different pixel counts).
  exact = accumulate(batches, "exact")
  assert result["depth"]["abs_error"] != pytest.approx(exact["depth"]["abs_error"], rel=1e-9)


def test_miou_conventions_when_a_class_never_occurs():
  log_probs = jnp.log(jnp.asarray([[[[0.9, 0.1, 0.0001], [0.1, 0.9, 0.0001]]]]))
  labels = jnp.asarray([[[0, 1]]])
  tasks = (tasks_lib.segmentation(3),)
  for mode, expected in (("exact", 1.0), ("reference", math.nan)):
    acc = metrics.Accumulator(tasks, mode)
    acc.add(metrics.batch_sums(tasks, {"segmentation": log_probs}, {"segmentation": labels}))
    value = acc.result()["segmentation"]["miou"]
    assert (math.isnan(value) and math.isnan(expected)) or value == expected


@pytest.mark.parametrize("values", [[10.0], [1.0, 3.0], [5.0, 1.0, 2.0, 9.5], list(range(100))])
def test_histogram_median_is_numpys_median(values):
  hist = np.zeros(metrics.HISTOGRAM_BINS, np.int64)
  for v in values:
    hist[int(v * 100)] += 1
  assert metrics.histogram_median(hist) == pytest.approx(np.median(values), abs=0.01)


def test_confusion_sums_over_devices():
  (outputs, targets), = random_batches(2, count=1, shape=(4, 4, 6))
  single = metrics.batch_sums(NYU[:1], outputs, targets)["segmentation"]["confusion"]
  sharded = jax.pmap(lambda o, t: metrics.batch_sums(NYU[:1], o, t, "d"), axis_name="d",
                     devices=jax.local_devices()[:2])(
      {"segmentation": outputs["segmentation"].reshape(2, 2, 4, 6, 13)},
      {"segmentation": targets["segmentation"].reshape(2, 2, 4, 6)})
  np.testing.assert_array_equal(sharded["segmentation"]["confusion"][0], single)


def test_delta_m_against_a_hand_worked_baseline():
  baseline = {"segmentation": {"miou": 0.2, "loss": 1.0}, "depth": {"abs_error": 0.5}}
  results = {"segmentation": {"miou": 0.22}, "depth": {"abs_error": 0.55}}
  # mIoU +10% (higher is better), abs error +10% (lower is better): (10 - 10) / 2 = 0.
  assert metrics.delta_m(results, baseline) == pytest.approx(0.0, abs=1e-9)
  results["depth"]["abs_error"] = 0.45
  assert metrics.delta_m(results, baseline) == pytest.approx(10.0)


@pytest.mark.parametrize("mode", metrics.MODES)
def test_device_totals_give_the_metrics_of_batch_by_batch_adding_skipped_steps_excluded(mode):
  """An epoch's sums kept on the device (float sums with their rounding error) and read once give
  what adding every batch on the host in float64 gives; a step marked not included adds nothing."""
  batches = random_batches(2, count=4)
  rng = np.random.default_rng(5)
  losses = [{t.name: np.float32(rng.uniform(0.5, 2)) for t in NYU} for _ in batches]
  included = [True, False, True, True]
  host = metrics.Accumulator(NYU, mode)
  for (outputs, targets), loss, keep in zip(batches, losses, included):
    if keep:
      host.add(metrics.batch_sums(NYU, outputs, targets), loss)
  totals = metrics.new_totals(NYU, mode)
  chex.assert_trees_all_equal_shapes_and_dtypes(  # the shapes new_totals assumes
      metrics.sums_shapes(NYU), jax.eval_shape(lambda: metrics.batch_sums(NYU, *batches[0])))
  add = jax.jit(metrics.add_to_totals)
  for (outputs, targets), loss, keep in zip(batches, losses, included):
    totals = add(totals, metrics.batch_sums(NYU, outputs, targets), loss, keep)
  device = metrics.Accumulator(NYU, mode)
  device.add_totals(jax.tree_util.tree_map(np.asarray, totals))
  chex.assert_trees_all_close(device.result(), host.result(), rtol=1e-6)
  assert int(totals["batches"]) == 3


def test_pair_sums_keep_what_float32_addition_loses():
  add = jax.jit(metrics._pair_add)  # pylint: disable=protected-access
  pair = np.zeros(2, np.float32)
  plain = np.float32(0)
  for _ in range(1000):
    pair = add(pair, np.float32(0.1))
    plain = np.float32(plain + np.float32(0.1))
  exact = 1000 * np.float64(np.float32(0.1))
  assert abs(float(pair[0]) + float(pair[1]) - exact) < 1e-9 < abs(float(plain) - exact)
