"""The reference's task losses, as (sum over valid pixels, number of valid pixels).

Returning sums and counts lets the caller form pixel means over the *whole* batch, across devices:
`psum(sum) / psum(count)`. Validity comes from each task's own target, as in the reference:
segmentation ignores label -1; depth and normals ignore pixels whose target channels sum to 0
(the reference's `sum(target, channels) != 0` mask).

All functions take one device's batch: predictions and targets `[B, H, W, C]` (labels `[B, H, W]`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtan_jax import tasks as tasks_lib


def valid_mask(task: tasks_lib.Task, target: jax.Array) -> jax.Array:
  """`[B, H, W]` float32: 1 where the target defines the pixel."""
  if task.name == tasks_lib.SEGMENTATION:
    return (target >= 0).astype(jnp.float32)
  return (jnp.sum(target, axis=-1) != 0).astype(jnp.float32)


def segmentation_nll(log_probs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Negative log-likelihood of the labels (log_probs `[B, H, W, C]`, labels `[B, H, W]`, -1 =
  ignored): (sum, count) over labelled pixels."""
  valid = (labels >= 0).astype(jnp.float32)
  picked = jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
  return -jnp.sum(picked * valid), jnp.sum(valid)


def depth_l1(prediction: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """|prediction - target| over pixels with target != 0: (sum, count)."""
  valid = valid_mask(tasks_lib.depth(), target)[..., None]
  return jnp.sum(jnp.abs(prediction - target) * valid), jnp.sum(valid)


def normal_cosine(prediction: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """1 - <prediction, target> over pixels with a defined normal: (sum, count).

  The prediction is unit length, so this is 1 - cos(angle), as the reference's
  `1 - sum(pred * gt * mask) / N`.
  """
  valid = valid_mask(tasks_lib.normal(), target)
  cosine = jnp.sum(prediction * target, axis=-1)
  return jnp.sum((1.0 - cosine) * valid), jnp.sum(valid)


def task_loss_sums(task: tasks_lib.Task, prediction: jax.Array,
                   target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum, count) of `task`'s loss on one device's batch."""
  fn = {tasks_lib.SEGMENTATION: segmentation_nll, tasks_lib.DEPTH: depth_l1,
        tasks_lib.NORMAL: normal_cosine}[task.name]
  return fn(prediction.astype(jnp.float32), target)


def mean_over_axis(total: jax.Array, count: jax.Array, axis_name: str | None) -> jax.Array:
  """sum / count over the whole batch: summed over the device axis when there is one.

  A batch with no valid pixel for a task gives 0 rather than the reference's NaN (0 / 0), so one
  unlabelled batch does not poison training.
  """
  if axis_name is not None:
    total, count = jax.lax.psum((total, count), axis_name)
  return total / jnp.maximum(count, 1.0)
