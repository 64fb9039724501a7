"""The run harness both trainers share: a `Session` owns a run folder from the start check to the
summary, so that each trainer keeps only its epoch body.

    Session.check_start(config)                  # before anything is created
    with Session(config) as session:             # multi-host start, lock, claim
      checkpoints = session.checkpointer()       # closed with the session
      state, position = session.restore(checkpoints, fresh, describe)   # writes config.json
      log = session.log(first_epoch)
      with StopOnSignal() as stop:
        ...                                      # the trainer's epochs
        session.save(checkpoints, state, position)
        if stop.signal_number is not None:
          session.interrupt(stop, checkpoints, state, position, where)
      session.write_summary(summary)

What a session guarantees: nothing is written before the start check passes; one run owns the
folder at a time (`rundir.RunFolderLock`, held by process 0); a folder holding a run is continued
only with --resume and cleared only with --overwrite; a resume continues only a run of the same
defining configuration (config.json's and each checkpoint's own record); a failed run keeps its
last good checkpoint and log; SIGTERM / SIGINT save the exact position and say how to continue.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
import sys
import threading
from typing import Any, Callable, Iterator, NoReturn

import jax

from mtan_jax import checkpoint as checkpoint_lib
from mtan_jax import parallel
from mtan_jax import rundir
from mtan_jax import runlog
from mtan_jax import schema
from mtan_jax.parallel import RunError

__all__ = ["RunError", "RunInterrupted", "Session", "SkipCounter", "StopOnSignal"]

class RunInterrupted(RuntimeError):
  """SIGTERM or SIGINT stopped the run after saving its exact position; `--resume` continues it."""

  def __init__(self, message: str, signal_number: int):
    super().__init__(message)
    self.signal_number = signal_number


class StopOnSignal:
  """While active, SIGTERM and SIGINT (preemption, Ctrl-C) only set `self.signal_number`: the loop
  finishes the step in flight, saves and stops. Outside the main thread it does nothing."""

  def __init__(self):
    self.signal_number: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signal_number, frame):
    del frame
    self.signal_number = self.signal_number or signal_number

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@contextlib.contextmanager
def closed_checkpointer(checkpoints: checkpoint_lib.Checkpointer):
  """Closes the checkpointer (waiting for the last save) however the run ends; a failed last save
  is the run's error, unless another one is already on its way out."""
  try:
    yield checkpoints
  except BaseException:
    try:
      checkpoints.close()
    except checkpoint_lib.CheckpointError:
      pass
    raise
  checkpoints.close()


class Session:
  """One run's hold on its folder (a context manager; see the module docstring).

  Args:
    config: the run's config dataclass (its `workdir`, `resume`, `overwrite`, `keep_checkpoints`,
      `multihost` if it has one, and `to_dict()`).
    differences: (saved config dict, config, source) -> lines naming the defining fields that
      differ (default: the schema's).
    changes: (saved config dict, config, source) -> {path: [was, now]} of the other fields that
      changed on a resume (default: the schema's).
  """

  def __init__(self, config, *, differences: Callable[..., list[str]] = schema.differences,
               changes: Callable[..., dict[str, list[Any]]] = schema.changes_on_resume):
    self.config = config
    self.workdir = pathlib.Path(config.workdir)
    self.multihost = bool(getattr(config, "multihost", False))
    self._differences, self._changes = differences, changes
    self.changes: dict[str, list[Any]] = {}
    self.is_main = True
    self._held = contextlib.ExitStack()

  @staticmethod
  def check_start(config) -> None:
    """Refuses --resume with --overwrite, and --resume of a folder without a run, before anything
    is created (a misspelled --workdir creates nothing)."""
    problem = rundir.start_problem(config.workdir, config.resume, config.overwrite)
    if problem:
      raise RunError(problem)

  def __enter__(self) -> "Session":
    self.check_start(self.config)
    if self.multihost:
      jax.distributed.initialize()
    self.is_main = jax.process_index() == 0
    with contextlib.ExitStack() as held:
      if self.is_main:  # multi-host runs lock from process 0
        held.enter_context(rundir.RunFolderLock(self.workdir))
      self.changes = self._claim()
      self._held = held.pop_all()
    return self

  def __exit__(self, *exc) -> bool | None:
    return self._held.__exit__(*exc)

  def say(self, *args) -> None:
    if self.is_main:
      print(*args, flush=True)

  def _claim(self) -> dict[str, list[Any]]:
    after_clear = None
    if self.multihost and self.config.overwrite:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      after_clear = lambda: multihost_utils.sync_global_devices(  # noqa: E731
          "mtan_jax: run folder cleared")
    return rundir.claim(
        self.workdir, resume=self.config.resume, overwrite=self.config.overwrite, error=RunError,
        is_main=self.is_main,
        differences=lambda saved: self._differences(saved, self.config, "config.json"),
        changes=lambda saved: self._changes(saved, self.config, "config.json"),
        after_clear=after_clear)

  def checkpointer(self, name: str = "checkpoints", keep: int | None = None
                   ) -> checkpoint_lib.Checkpointer:
    """The checkpoints in `workdir/name`, closed (waiting for the last save) with the session."""
    keep = self.config.keep_checkpoints if keep is None else keep
    return self._held.enter_context(closed_checkpointer(
        checkpoint_lib.Checkpointer(self.workdir / name, keep)))

  def check_record(self, record: dict[str, Any]) -> None:
    """Refuses to resume from a checkpoint made with another run-defining configuration."""
    if "config" not in record:
      raise RunError(f"cannot resume: the checkpoints in {self.workdir} hold no record of their "
                     f"configuration (written by an earlier version); start afresh with "
                     f"--overwrite")
    differences = self._differences(record["config"], self.config, "checkpoint")
    if differences:
      raise RunError("cannot resume: the checkpoint was made with another configuration:\n  "
                     + "\n  ".join(differences))

  def restore(self, checkpoints: checkpoint_lib.Checkpointer, fresh: Callable[[], Any],
              describe: Callable[[dict[str, Any]], str]) -> tuple[Any, dict[str, Any]]:
    """(host state, position record): `fresh()`, or the newest intact checkpoint's, checked against
    this config (damaged ones are said and moved aside). A resume is announced with
    `describe(position)` and the fields that changed. Writes config.json for a new run."""
    like = jax.eval_shape(fresh)
    restored = checkpoints.restore_intact(like, self.say, check_record=self.check_record,
                                          move_damaged=self.is_main)
    if self.is_main and not (self.workdir / "config.json").exists():  # the first config, kept
      rundir.write_text_atomically(self.workdir / "config.json",
                                   json.dumps(self.config.to_dict(), indent=1) + "\n")
    if restored is None:
      return fresh(), {}
    _, state, position = restored
    self.say(f"Resuming {self.workdir}: {describe(position)}."
             + "".join(f" {k}: {was!r} -> {now!r} (recorded in metrics.jsonl)."
                       for k, (was, now) in self.changes.items()))
    return state, position

  def log(self, first_epoch: int) -> runlog.RunLog:
    """The run's log from `first_epoch` on (later epochs' lines set aside), closed with the
    session; it writes on process 0 only."""
    return self._held.enter_context(contextlib.closing(runlog.RunLog(
        self.workdir, enabled=self.is_main, first_epoch=first_epoch)))

  def pop_changes(self) -> dict[str, list[Any]]:
    """The fields changed on this resume, once (for the first epoch's record)."""
    changes, self.changes = self.changes, {}
    return changes

  def save(self, checkpoints: checkpoint_lib.Checkpointer, replicated_state,
           position: dict[str, Any]) -> None:
    """Starts saving the (replicated) state at `position`, with this run's config in its record."""
    host = parallel.unreplicate(replicated_state)
    checkpoints.save(int(host.step), host, {**position, "config": self.config.to_dict()})

  def interrupt(self, stop: StopOnSignal, checkpoints: checkpoint_lib.Checkpointer,
                replicated_state, position: dict[str, Any] | None, where: str) -> NoReturn:
    """The one way a signal ends a run: save the state at `position` (None: the last checkpoint
    is already on its way), wait for the save, and raise RunInterrupted saying how to continue."""
    if position is not None:
      self.save(checkpoints, replicated_state, position)
    checkpoints.wait()
    name = signal.Signals(stop.signal_number).name
    raise RunInterrupted(f"{name}: stopped {where}; the exact position is saved in "
                         f"{checkpoints.directory}. Continue with the same command and --resume "
                         f"(--workdir={self.workdir}).", stop.signal_number)

  def write_summary(self, summary: dict[str, Any]) -> None:
    """summary.json (process 0)."""
    if self.is_main:
      rundir.write_text_atomically(self.workdir / "summary.json",
                                   json.dumps(runlog.json_safe(summary), indent=1) + "\n")


class SkipCounter:
  """Reads the counts of skipped training steps ({"total", "longest" run of consecutive ones,
  "by_task": non-finite losses per task}, host numbers); stops the run once `limit` consecutive
  ones were counted, naming the tasks, `where` (e.g. "epoch 3") and the checkpoint that stays."""

  def __init__(self, where: str, limit: int, last_checkpoint: str | None):
    self.where, self.limit, self.last_checkpoint = where, limit, last_checkpoint
    self.total, self.longest = 0, 0
    self.by_task: dict[str, int] = {}

  def describe(self) -> str:
    tasks = (", ".join(f"{task} {count}x" for task, count in self.by_task.items())
             or "gradients or updates")
    return f"{self.total} step(s), non-finite: {tasks}"

  def record(self) -> dict[str, Any]:
    """What an epoch's record says of its skipped steps."""
    return {"count": self.total, "non_finite_tasks": self.by_task}

  def update(self, counts: dict[str, Any]) -> None:
    """Takes the counts so far."""
    self.total, self.longest = int(counts["total"]), int(counts["longest"])
    self.by_task = {t: int(n) for t, n in counts["by_task"].items() if int(n)}
    if self.longest >= self.limit:
      kept = (f"the {self.last_checkpoint} stays the latest"
              if self.last_checkpoint is not None else "no checkpoint was written")
      raise RunError(f"{self.limit} consecutive training steps of {self.where} had a "
                     f"non-finite loss, gradient or update ({self.describe()}); stopping: {kept}")


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool):
  """A tqdm bar on stderr (closed at the end of the block); a silent one when not `enabled`."""
  import tqdm  # pylint: disable=import-outside-toplevel
  bar = tqdm.tqdm(total=total, desc=description, leave=False, file=sys.stderr,
                  dynamic_ncols=True, disable=not enabled)
  try:
    yield bar
  finally:
    bar.close()


@contextlib.contextmanager
def exits_on_user_errors(extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
  """The command lines' error translation: every error a user can cause (a flag out of range,
  missing or damaged data, a run folder in use or not writable, a refused resume, a full disk,
  Ctrl-C outside the training loop) is one message on stderr, exit status 1 (130 for Ctrl-C); a
  signal that stopped training after saving exits with 128 + its number; programming errors keep
  their traceback."""
  from mtan_jax.data import DataError, ReleaseError  # pylint: disable=import-outside-toplevel
  if threading.current_thread() is threading.main_thread():  # Ctrl-C as KeyboardInterrupt again
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    yield
  except RunInterrupted as stopped:
    print(stopped, flush=True)
    raise SystemExit(128 + stopped.signal_number)
  except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C) outside the training loop; nothing in progress was saved, "
          "the run folder keeps its last checkpoint", file=sys.stderr, flush=True)
    raise SystemExit(130)
  except (RunError, DataError, ReleaseError, schema.ConfigError, rundir.RunFolderError,
          checkpoint_lib.CheckpointError, OSError, *extra) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(1)
