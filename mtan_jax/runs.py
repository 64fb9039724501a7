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
from typing import Any

import jax

from mtan_jax import runlog
from mtan_jax import tasks as tasks_lib
from mtan_jax.config import TrainConfig


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
    if self.config.model in ("single", "stan"):
      return f"{self.config.model} ({self.tasks[0].name})"
    return f"{self.config.model} / {self.config.weighting}"


def run_command(main) -> None:
  """Runs a command's `main()`; a missing or unreadable run folder (FileNotFoundError, ValueError)
  is said in one line on stderr, exit status 1, instead of a traceback."""
  try:
    main()
  except (FileNotFoundError, ValueError) as error:
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


def restore_model(run: Run):
  """(model, {"params", "batch_stats"}) of the run's latest checkpoint, for inference."""
  # Imported here: reading configs and records needs neither models nor checkpoints.
  from mtan_jax import checkpoint as checkpoint_lib  # pylint: disable=import-outside-toplevel
  from mtan_jax import train_step as step_lib  # pylint: disable=import-outside-toplevel
  from mtan_jax import weighting as weighting_lib  # pylint: disable=import-outside-toplevel
  from mtan_jax.models import build_model  # pylint: disable=import-outside-toplevel

  config = run.config
  model = build_model(config.model, run.tasks, width_mult=config.width_mult, dtype=config.dtype)
  weighting = weighting_lib.build(config.weighting, run.tasks, temperature=config.temperature)
  optimizer = step_lib.make_optimizer(config.lr, max(config.lr_halve_epoch, 1))
  abstract = jax.eval_shape(lambda: step_lib.create_train_state(
      model, weighting, optimizer, config.resolution, config.seed))
  checkpoints = checkpoint_lib.Checkpointer(run.path / "checkpoints", read_only=True)
  try:
    latest = checkpoints.latest()
    if latest is None:
      raise FileNotFoundError(f"{run.path / 'checkpoints'}: no checkpoint to read the model from")
    state = checkpoints.restore(latest, abstract)
  finally:
    checkpoints.close()
  return model, {"params": state.params["model"], "batch_stats": state.batch_stats}
