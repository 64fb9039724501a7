"""Checkpoints of the whole train state with orbax: one thin wrapper over its CheckpointManager.

Each checkpoint holds the state pytree (parameters, batch statistics, optimizer, weighting state,
step, epoch, RNG) and a JSON record (the run's config and the position in training). Saves are
asynchronous; orbax writes into a temporary folder and renames it when complete, so a partial save
(a process killed while writing) is never taken as the latest; the next run deletes such leftover
temporary folders when it opens the directory.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores a run's train state in `directory` (keeping the last `keep`).

  `read_only`: only reads (plots and reports of a run that may still be training): creates
  nothing and leaves temporary folders alone, since one may be a save in progress.
  """

  def __init__(self, directory, keep: int = 3, read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                           create=not read_only,
                                           cleanup_tmp_directories=not read_only,
                                           read_only=read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
    """Starts saving `state` (host or device arrays) and `record` (JSON) as checkpoint `step`."""
    state = jax.tree_util.tree_map(np.asarray, state)
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    record=ocp.args.JsonSave(record)))

  def latest(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """The committed checkpoints, oldest first (temporary folders of unfinished saves excluded)."""
    return sorted(self.manager.all_steps())

  def record(self, step: int) -> dict[str, Any]:
    """The JSON record of checkpoint `step`, without reading the state."""
    restored = self.manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
    return restored["record"]

  def restore(self, step: int, like: Any) -> Any:
    """The state of checkpoint `step`, shaped like the pytree `like` (arrays or ShapeDtypeStructs)."""
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
        if not isinstance(x, jax.ShapeDtypeStruct) else x, like)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
