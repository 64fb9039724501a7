"""Reading a finished (or running) run folder back: its config, its records, its trained model.

    run = load_run("runs/nyuv2_mtan_dwa_seed0")
    run.config.model, run.records[-1]["test"]["depth"]["abs_error"]
    model, variables = restore_model(run)          # the latest checkpoint's parameters
    outputs = model.apply(variables, images, train=False)

Used by `mtan_jax.plot` and `mtan_jax.report`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Any, Callable, Sequence

import jax

from mtan_jax import runlog
from mtan_jax import tasks as tasks_lib
from mtan_jax.dense.config import TrainConfig


@dataclasses.dataclass
class Run:
  """A run folder: its path, config (config.json) and per-epoch records (metrics.jsonl)."""

  path: pathlib.Path
  config: TrainConfig
  records: list[dict[str, Any]]

  @property
  def tasks(self) -> tuple[tasks_lib.Task, ...]:
    return tasks_lib.dataset_tasks(self.config.dataset, self.config.tasks,
                                   self.config.data.num_classes)

  @property
  def label(self) -> str:
    """'model / weighting' (single-task models: 'model (task)')."""
    if single_task(self.config.model):
      return f"{self.config.model} ({self.tasks[0].name})"
    return f"{self.config.model} / {self.config.weighting}"


def single_task(model: str) -> bool:
  """Whether `model` is a single-task network (the model registry says)."""
  from mtan_jax.models import get_spec  # pylint: disable=import-outside-toplevel
  return get_spec(model).single_task


class MissingPackage(ImportError):
  """An optional package a command needs is not installed; the message says how to install it."""


def run_command(main) -> None:
  """Runs a command's `main()`; a missing or unreadable run folder (FileNotFoundError, ValueError)
  or a missing optional package (MissingPackage) is said in one line on stderr, exit status 1,
  instead of a traceback."""
  try:
    main()
  except (FileNotFoundError, ValueError, MissingPackage) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


def load_run(path) -> Run:
  """The run in folder `path`; an error names what is missing."""
  path = pathlib.Path(path)
  config_file = path / "config.json"
  if not config_file.exists():
    raise FileNotFoundError(f"{config_file}: not found; expected a run folder written by "
                            f"experiments/*.py (config.json, metrics.jsonl, checkpoints/)")
  try:
    values = json.loads(config_file.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{config_file}: not valid JSON ({error})") from error
  return Run(path, TrainConfig.from_dict(values, str(config_file)), runlog.read_records(path))


def load_runs(paths: Sequence, split: str = "test",
              warn: Callable[[str], None] | None = None) -> list[Run]:
  """The runs of `paths` that have `split` metrics; each other one (no config.json, damaged
  files, no epoch yet) is skipped with a one-line warning naming it. ValueError if none is left."""
  warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
  runs, skipped = [], []
  for path in paths:
    try:
      run = load_run(path)
    except (OSError, ValueError) as error:
      skipped.append(f"{path}: {error}")
      warn(f"warning: skipping {path}: {error}")
      continue
    if not any(split in record for record in run.records):
      reason = "no epoch recorded yet" if not run.records else f"no {split!r} metrics recorded"
      skipped.append(f"{path}: {reason}")
      warn(f"warning: skipping {path}: {reason} ({run.path / 'metrics.jsonl'})")
      continue
    runs.append(run)
  if not runs:
    raise ValueError("no run to show: " + "; ".join(skipped) if skipped else "no run folder given")
  return runs


def restore_model(run: Run):
  """(model, {"params", "batch_stats"}) of the run's latest checkpoint, for inference."""
  # Imported here: reading configs and records needs neither models nor checkpoints.
  from mtan_jax import checkpoint as checkpoint_lib  # pylint: disable=import-outside-toplevel
  from mtan_jax.dense import train  # pylint: disable=import-outside-toplevel
  from mtan_jax.models import build_model  # pylint: disable=import-outside-toplevel

  config = run.config
  parts = train.build_parts(config, run.tasks, steps_per_epoch=1)  # the state's structure
  model = build_model(config.model, run.tasks, width_mult=config.width_mult, dtype=config.dtype)
  abstract = jax.eval_shape(lambda: parts.initial_state(config))
  if not (run.path / "checkpoints").is_dir():
    raise FileNotFoundError(f"{run.path / 'checkpoints'}: no checkpoint to read the model from")
  checkpoints = checkpoint_lib.Checkpointer(run.path / "checkpoints", read_only=True)
  try:  # the newest checkpoint that verifies; damaged ones are said and skipped
    restored = checkpoints.restore_intact(
        abstract, lambda text: print(text, file=sys.stderr, flush=True))
  except checkpoint_lib.CheckpointError as error:
    raise ValueError(str(error)) from error
  finally:
    checkpoints.close()
  if restored is None:
    raise FileNotFoundError(f"{run.path / 'checkpoints'}: no checkpoint to read the model from")
  state = restored[1]
  return model, {"params": state.params["model"], "batch_stats": state.batch_stats}
