"""Checkpoints of the whole train state with orbax: one thin wrapper over its CheckpointManager.

Each checkpoint holds the state pytree (parameters, batch statistics, optimizer, weighting state,
step, epoch, RNG) and a JSON record (the run's config and the position in training). Saves are
asynchronous; orbax writes into a temporary folder and renames it when complete, so a partial save
(a process killed while writing) is never taken as the latest; the next run deletes such leftover
temporary folders when it opens the directory.

Once a save has completed, the SHA-256 of every file it wrote is recorded in the checkpoint
(`CHECKSUMS`), and `restore_intact` checks them before reading: a checkpoint damaged after the fact
(a truncated file, overwritten bytes) is reported, moved aside into `checkpoints_damaged/` and the
next older one is used. A state that is not finite is never written (`NonFiniteStateError`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import shutil
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtan_jax import rundir

CHECKSUMS = "mtan_checksums.json"  # in each checkpoint folder: {relative path: [size, sha256]}
DAMAGED = "checkpoints_damaged"  # beside the checkpoints folder: damaged checkpoints moved aside


class CheckpointError(RuntimeError):
  """No checkpoint can be written or read as asked; the message names the folder."""


class NonFiniteStateError(CheckpointError):
  """A state holding NaN or inf, refused before it is written."""


class _DropOrbaxErrors(logging.Filter):
  """orbax logs a failed asynchronous save with a traceback from each of its threads (four copies
  of one "No space left on device"); the Checkpointer raises that error itself, once, as a
  CheckpointError that says which checkpoint stays the latest."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR or f"{pathlib.os.sep}orbax{pathlib.os.sep}" not in (
        record.pathname or "")


logging.getLogger("absl").addFilter(_DropOrbaxErrors())


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:400]


def non_finite_leaves(tree: Any) -> list[str]:
  """The paths of the floating-point leaves of `tree` that hold NaN or inf."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = np.asarray(leaf)
    if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
      out.append(jax.tree_util.keystr(path))
  return out


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


class Checkpointer:
  """Saves and restores a run's train state in `directory` (keeping the last `keep`).

  `read_only`: only reads (plots and reports of a run that may still be training): creates
  nothing, leaves temporary folders alone (one may be a save in progress) and moves nothing aside.
  """

  def __init__(self, directory, keep: int = 3, read_only: bool = False):
    if keep < 1:
      raise ValueError(f"keep: expected at least 1 checkpoint kept, found {keep}")
    self.directory = pathlib.Path(directory).absolute()
    self.read_only = read_only
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                           create=not read_only,
                                           cleanup_tmp_directories=not read_only,
                                           read_only=read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._unsealed: int | None = None  # a save started, its checksums not yet written

  def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
    """Starts saving `state` (host or device arrays) and `record` (JSON) as checkpoint `step`.

    Refuses (NonFiniteStateError) a state with a NaN or inf anywhere, naming the leaves."""
    state = jax.tree_util.tree_map(np.asarray, state)
    bad = non_finite_leaves(state)
    if bad:
      raise NonFiniteStateError(
          f"the state to be saved as checkpoint {step} holds NaN or inf in {len(bad)} array(s), "
          f"e.g. {', '.join(bad[:3])}; it was not written")
    self._seal()
    try:
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      record=ocp.args.JsonSave(record)))
    except Exception as error:  # pylint: disable=broad-except  (a full disk, a read-only folder)
      raise CheckpointError(f"checkpoint {step} could not be written into {self.directory} "
                            f"({_first_line(error)}); {self._kept()}") from error
    self._unsealed = step

  def _kept(self) -> str:
    latest = self.manager.latest_step()
    return (f"checkpoint {latest} stays the latest" if latest is not None
            else "no checkpoint was written")

  def _seal(self) -> None:
    """Waits for the save in flight and records the checksums of what it wrote."""
    try:
      self.manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except  (the save thread's own error)
      step, self._unsealed = self._unsealed, None
      self.manager.reload()
      raise CheckpointError(f"checkpoint {step} could not be written into {self.directory} "
                            f"({_first_line(error)}); {self._kept()}") from error
    if self._unsealed is None:
      return
    folder, self._unsealed = self.directory / str(self._unsealed), None
    if jax.process_index() != 0:  # one writer of a multi-host checkpoint's checksums
      return
    if not folder.is_dir():  # removed meanwhile by max_to_keep
      return
    sums = {str(p.relative_to(folder)): [p.stat().st_size, _sha256(p)]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
    rundir.write_text_atomically(folder / CHECKSUMS, json.dumps(sums, indent=0))

  def latest(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """The committed checkpoints, oldest first (temporary folders of unfinished saves excluded)."""
    return sorted(self.manager.all_steps())

  def verify(self, step: int) -> str | None:
    """What is wrong with checkpoint `step`'s files (a line), or None if they are as written.

    A checkpoint without checksums (its process killed between the save and the checksums, or
    written by an earlier version) is reported as such; `restore_intact` still reads it."""
    folder = self.directory / str(step)
    try:
      sums = json.loads((folder / CHECKSUMS).read_text())
    except FileNotFoundError:
      return None if not folder.is_dir() else "unverified"
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, not JSON
      return f"its checksum file {folder / CHECKSUMS} cannot be read ({error})"
    for name, (size, digest) in sums.items():
      path = folder / name
      try:
        if path.stat().st_size != size:
          return f"{path} has {path.stat().st_size} bytes, {size} were written"
        if _sha256(path) != digest:
          return f"{path} does not hold the bytes written (SHA-256 differs)"
      except OSError as error:
        return f"{path} cannot be read ({error.strerror or error})"
    return None

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

  def restore_intact(self, like: Any, say: Callable[[str], None] = print,
                     check_record: Callable[[dict[str, Any]], None] | None = None,
                     move_damaged: bool = True) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, record) of the newest checkpoint that verifies, reads and is finite; None when
    there is no checkpoint. Each damaged one is said in one line and (unless read-only, or
    `move_damaged` is False: another process moves them) moved into `checkpoints_damaged/`;
    CheckpointError when every checkpoint is damaged. `check_record(record)` runs before the state
    is read and may raise to refuse the checkpoint (e.g. another configuration): that is not
    damage, and the error propagates."""
    steps = self.all_steps()
    damaged = []
    for step in reversed(steps):
      problem = self.verify(step)
      if problem not in (None, "unverified"):
        damaged.append(self._set_aside(step, problem, say, move_damaged))
        continue
      try:
        record = self.record(step)
      except Exception as error:  # pylint: disable=broad-except  (any reader error: damaged)
        damaged.append(self._set_aside(step, f"its record cannot be read ({_first_line(error)})",
                                       say, move_damaged))
        continue
      if check_record is not None:
        check_record(record)
      try:
        state = self.restore(step, like)
      except Exception as error:  # pylint: disable=broad-except
        damaged.append(self._set_aside(step, f"its state cannot be read ({_first_line(error)})",
                                       say, move_damaged))
        continue
      bad = non_finite_leaves(state)
      if bad:
        damaged.append(self._set_aside(step, f"its state holds NaN or inf ({', '.join(bad[:3])})",
                                       say, move_damaged))
        continue
      if problem == "unverified":
        say(f"note: checkpoint {self.directory / str(step)} has no checksums (written by an "
            f"earlier version, or its process stopped before they were written); it reads and is "
            f"finite, so it is used")
      if damaged:
        say(f"Using checkpoint {step}, the newest intact one.")
      return step, state, record
    if damaged:
      raise CheckpointError(f"every checkpoint in {self.directory} is damaged ({len(damaged)}: "
                            f"{'; '.join(damaged)}); nothing to resume from")
    return None

  def _set_aside(self, step: int, problem: str, say: Callable[[str], None],
                 move: bool = True) -> str:
    folder = self.directory / str(step)
    if self.read_only or not move:
      say(f"warning: checkpoint {folder} is damaged: {problem}; skipped")
      return f"{step}: {problem}"
    aside = self.directory.parent / DAMAGED / str(step)
    suffix = 1
    while aside.exists():
      aside, suffix = self.directory.parent / DAMAGED / f"{step}.{suffix}", suffix + 1
    aside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(aside))
    self.manager.reload()
    say(f"warning: checkpoint {folder} is damaged: {problem}; moved to {aside}")
    return f"{step}: {problem}"

  def wait(self) -> None:
    self._seal()

  def close(self) -> None:
    try:
      self._seal()
    finally:
      self.manager.close()
