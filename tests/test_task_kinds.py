"""Task kinds: a kind declared once (`task_kinds.KINDS`) is all that losses, metrics, the head
activation, the report and the input pipeline read."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtan_jax import losses
from mtan_jax import metrics
from mtan_jax import report
from mtan_jax import task_kinds
from mtan_jax import tasks as tasks_lib
from mtan_jax.data import pipeline
from mtan_jax.models import layers


def test_the_three_kinds_declare_the_papers_columns():
  assert task_kinds.NAMES == ("segmentation", "depth", "normal")
  assert metrics.TASK_METRICS == {
      "segmentation": ("miou", "pixel_accuracy"), "depth": ("abs_error", "rel_error"),
      "normal": ("angle_mean", "angle_median", "within_11.25", "within_22.5", "within_30")}
  assert report.PERCENT == {"miou", "pixel_accuracy", "within_11.25", "within_22.5", "within_30"}
  assert [report.HEADERS[m] for m in metrics.TASK_METRICS["normal"]] == [
      "Mean", "Median", "11.25", "22.5", "30"]
  assert report._format("abs_error", 0.123456) == "0.1235"
  assert report._format("miou", 0.5) == "50.00"
  assert report._format("angle_mean", 22.456) == "22.46"


def _edges_kind():
  """A made-up kind (a boundary map in [0, 1], squared error), declared only here."""

  def loss(prediction, target):
    valid = jnp.ones(target.shape[:-1] + (1,))
    return jnp.sum((prediction - target) ** 2), jnp.sum(valid)

  def sums(channels, prediction, target):
    del channels
    return {"squared": jnp.sum((prediction - target) ** 2),
            "count": jnp.asarray(target[..., 0].size, jnp.float32)}

  return task_kinds.TaskKind(
      "edges", dense=True, channels=1, labels=False, activation=jax.nn.sigmoid, loss=loss,
      sums=sums, metrics=lambda s, mode: {"edge_mse": float(s["squared"] / s["count"])},
      batch_metrics=lambda s: {"edge_mse": s["squared"] / s["count"]},
      table=(task_kinds.Metric("edge_mse", "MSE", False, digits=4),))


@pytest.mark.parametrize("mode", ["exact", "reference"])
def test_a_new_kind_is_one_entry(monkeypatch, mode):
  """With one more entry in KINDS (and nothing else changed), a task of that kind gets its
  activation, loss and split metrics, checked against numpy."""
  monkeypatch.setitem(task_kinds.KINDS, "edges", _edges_kind())
  monkeypatch.setattr(tasks_lib, "TASK_NAMES", tuple(task_kinds.KINDS))
  task = tasks_lib.Task("edges", 1)
  with pytest.raises(ValueError, match="expected 1, found 2"):
    tasks_lib.Task("edges", 2)
  rng = np.random.default_rng(0)
  head = rng.normal(size=(2, 4, 6, 1)).astype(np.float32)
  target = rng.random((2, 4, 6, 1)).astype(np.float32)

  prediction = layers.task_output(task, jnp.asarray(head))
  chex.assert_shape(prediction, (2, 4, 6, 1))
  expected = 1 / (1 + np.exp(-head))
  chex.assert_trees_all_close(prediction, expected, rtol=1e-6)

  total, count = losses.task_loss_sums(task, prediction, jnp.asarray(target))
  squared = np.sum((expected - target) ** 2)
  np.testing.assert_allclose(float(total), squared, rtol=1e-5)
  assert float(count) == 48

  accumulator = metrics.Accumulator((task,), mode)
  halves = [slice(0, 1), slice(1, 2)]
  for half in halves:
    accumulator.add(metrics.batch_sums((task,), {"edges": prediction[half]},
                                       {"edges": jnp.asarray(target[half])}))
  per_image = [np.mean((expected[h] - target[h]) ** 2) for h in halves]
  np.testing.assert_allclose(accumulator.result()["edges"]["edge_mse"], np.mean(per_image),
                             rtol=1e-5)  # equal-sized batches: both modes give the mean

  totals = metrics.new_totals((task,), mode, losses=False)
  assert ("edges" in totals["batch_means"]) == (mode == "reference")
  padded = pipeline._zeros_like({"image": np.ones((4, 6, 3), np.float32), "edges": target[0]})
  chex.assert_trees_all_equal(padded["edges"], np.zeros_like(target[0]))


def test_padding_leaves_every_target_undefined():
  example = {"image": np.ones((4, 6, 3), np.float32),
             "segmentation": np.zeros((4, 6), np.int32),
             "depth": np.ones((4, 6, 1), np.float32), "normal": np.ones((4, 6, 3), np.float32)}
  padded = pipeline._zeros_like(example)
  assert np.all(padded["segmentation"] == -1) and np.all(padded["depth"] == 0)
  assert np.all(padded["normal"] == 0) and np.all(padded["image"] == 0)
