"""A run folder: owned by one run at a time, what it holds, and what `--overwrite` clears.

The owner holds an OS file lock on `run.lock` (`fcntl.flock`): the kernel releases it when the
process ends in any way, so a killed run never blocks the next one, and a second run on the same
folder stops at once, naming the holder's PID and host (written into the lock file).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import shutil
import socket
import sys
from typing import Any, Callable

LOCK = "run.lock"
# What a run writes (and `--overwrite` deletes); nothing else in the folder is touched.
RUN_FILES = ("checkpoints", "checkpoints_damaged", "tensorboard", "metrics.jsonl",
             "metrics.jsonl.tmp", "metrics_dropped.jsonl", "summary.json", "config.json",
             "curves.png", "checkpoints_first_task")
# Any of these means the folder holds a run.
RUN_MARKERS = ("config.json", "metrics.jsonl", "checkpoints")


def write_text_atomically(path, text: str) -> None:
  """Writes `text` into `<path>.tmp`, then renames it to `path`: a process killed meanwhile
  leaves the old file or the new one, never a part of either."""
  path = pathlib.Path(path)
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text(text)
  temporary.replace(path)


class RunFolderError(RuntimeError):
  """A run folder that cannot be used as asked: in use, not writable, holding another run."""


def held_run_files(workdir) -> list[str]:
  """The files of a run that `workdir` holds (an empty checkpoints folder does not count)."""
  workdir = pathlib.Path(workdir)
  held = []
  for name in RUN_MARKERS:
    path = workdir / name
    if path.is_dir() and any(path.iterdir()) or path.is_file():
      held.append(name)
  return held


def clear(workdir) -> None:
  """Deletes what a run writes into `workdir` (and nothing else the folder may hold)."""
  workdir = pathlib.Path(workdir)
  for name in RUN_FILES:
    path = workdir / name
    if path.is_dir():
      shutil.rmtree(path)
    elif path.exists():
      path.unlink()


def start_problem(workdir, resume: bool, overwrite: bool) -> str | None:
  """What is wrong with starting in `workdir` as asked, before anything is created: --resume with
  --overwrite, or --resume on a folder without a run (a misspelled workdir). None when nothing."""
  if resume and overwrite:
    return ("--resume and --overwrite exclude each other: continue the run in the workdir, or "
            "delete it and start afresh")
  if resume and not held_run_files(workdir):
    return (f"--resume: {workdir} holds no run to continue (no config.json, metrics.jsonl or "
            f"checkpoint); check --workdir, or leave out --resume to start a run there")
  return None


def claim(workdir, *, resume: bool, overwrite: bool,
          differences: Callable[[dict[str, Any]], list[str]],
          changes: Callable[[dict[str, Any]], dict[str, Any]] = lambda saved: {},
          error: type[Exception] = RunFolderError, is_main: bool = True,
          after_clear: Callable[[], None] | None = None) -> dict[str, Any]:
  """The run folder policy, applied by the folder's owner: a folder holding a run is continued
  only with `resume`, cleared (by the main process, then `after_clear`) only with `overwrite`;
  `resume` needs a run to continue whose config.json shows no `differences(saved config)` (lines
  naming the fields that define the run). Returns `changes(saved config)` on a resume (the fields
  that may change and did), else {}. Refusals raise `error` with one message."""
  workdir = pathlib.Path(workdir)
  if overwrite and is_main:
    clear(workdir)
  if overwrite and after_clear is not None:
    after_clear()
  held = held_run_files(workdir)
  if held and not resume:
    raise error(f"{workdir} already holds a run ({', '.join(held)}); pass --resume to continue it, "
                f"--overwrite to delete it and start afresh, or choose another --workdir")
  if resume and not held:
    raise error(start_problem(workdir, True, False))
  saved = workdir / "config.json"
  if resume and saved.is_file():
    try:
      first = json.loads(saved.read_text())
      problems = differences(first)
    except (ValueError, OSError) as e:
      raise error(f"{saved} cannot be read ({e}); it describes the run to continue") from e
    if problems:
      raise error(f"cannot resume {workdir}: it holds a run of another configuration:\n  "
                  + "\n  ".join(problems))
    return changes(first)
  return {}


class RunFolderLock:
  """Owns `workdir` for the life of a run (`with RunFolderLock(workdir):`), creating the folder.

  Raises RunFolderError when another live process holds it (naming its PID, host and start) or
  when the folder cannot be created or written."""

  def __init__(self, workdir):
    self.workdir = pathlib.Path(workdir)
    self._handle = None

  def __enter__(self) -> "RunFolderLock":
    try:
      self.workdir.mkdir(parents=True, exist_ok=True)
      handle = open(self.workdir / LOCK, "a+")  # pylint: disable=consider-using-with
    except OSError as error:
      raise RunFolderError(f"cannot write into --workdir {self.workdir} "
                           f"({error.strerror or error}); choose a folder you can write to"
                           ) from error
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read()
      handle.close()
      raise RunFolderError(f"{self.workdir} is in use by another run ({_describe(holder)}); wait "
                           f"for it to end or choose another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": datetime.datetime.now().isoformat(timespec="seconds"),
                             "command": " ".join(sys.argv)}) + "\n")
    handle.flush()
    self._handle = handle
    return self

  def __exit__(self, *exc) -> None:
    if self._handle is not None:
      fcntl.flock(self._handle, fcntl.LOCK_UN)
      self._handle.close()
      self._handle = None


def _describe(holder: str) -> str:
  try:
    info = json.loads(holder)
    return f"PID {info['pid']} on host {info['host']}, started {info['started']}: {info['command']}"
  except (ValueError, KeyError, TypeError):
    return "its PID is not recorded yet"
