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
# The kinds' own losses (declared with their kinds), by their names.
from mtan_jax.task_kinds import depth_l1, normal_cosine, segmentation_nll  # noqa: F401


def valid_mask(task: tasks_lib.Task, target: jax.Array) -> jax.Array:
  """`[B, H, W]` float32: 1 where the target defines the pixel."""
  return task.kind.valid(target)


def task_loss_sums(task: tasks_lib.Task, prediction: jax.Array,
                   target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum, count) of `task`'s loss on one device's batch."""
  return task.kind.loss(prediction.astype(jnp.float32), target)


def mean_over_axis(total: jax.Array, count: jax.Array, axis_name: str | None) -> jax.Array:
  """sum / count over the whole batch: summed over the device axis when there is one.

  A batch with no valid pixel for a task gives 0 rather than the reference's NaN (0 / 0), so one
  unlabelled batch does not poison training.
  """
  if axis_name is not None:
    total, count = jax.lax.psum((total, count), axis_name)
  return total / jnp.maximum(count, 1.0)
