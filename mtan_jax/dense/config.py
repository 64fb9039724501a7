"""The configuration of a training run: one frozen dataclass, written into the run folder.

Each field is declared once with its schema (`schema.option`): help, whether it defines the run,
flag, choices, checks. The flags, `--help`, validation, the resume check and the report's grouping
are derived from it. A weighting scheme's own options (e.g. DWA's temperature) are fields of the
scheme and live in `weighting_options`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from mtan_jax import datasets as datasets_lib
from mtan_jax import schema
from mtan_jax import tasks as tasks_lib
from mtan_jax.data.pipeline import DataConfig
from mtan_jax.schema import ConfigError, option


def _models() -> tuple[str, ...]:
  from mtan_jax.models import MODEL_NAMES  # pylint: disable=import-outside-toplevel
  return MODEL_NAMES


def _weightings() -> tuple[str, ...]:
  from mtan_jax import weighting  # pylint: disable=import-outside-toplevel
  return weighting.NAMES


def _tasks(text: str) -> tuple[str, ...]:
  return tuple(t.strip() for t in text.split(",") if t.strip())


_POSITIVE = (schema.finite_positive, "a finite number > 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything about a run. Defaults are the reference recipe on NYUv2 (Adam 1e-4, halved after
  100 of 200 epochs, batch 2)."""

  # What to train.
  tasks: tuple[str, ...] | None = option(
      None, "comma-separated subset of the dataset's tasks; none: all of them",
      defines_run=True, parse=_tasks)
  model: str = option("mtan", "architecture", defines_run=True, choices=_models)
  width_mult: float = option(1.0, "stage-width multiplier (1: the paper's networks)",
                             defines_run=True, check=_POSITIVE)
  dtype: str = option("float32", "compute dtype (parameters stay float32)", defines_run=True,
                      choices=("float32", "bfloat16"))
  remat: bool = option(False, "recompute all but convolution outputs in the backward pass: the "
                       "same update in about half the memory")
  weighting: str = option("equal", "task weighting", defines_run=True, choices=_weightings)
  weighting_options: dict[str, Any] = option(
      help="the weighting scheme's own options (flags of their own, e.g. --temperature)",
      defines_run=True, flag=False, default_factory=dict)
  # How.
  epochs: int = option(200, "epochs to train (may grow on --resume)", check=schema.at_least(1))
  batch_size: int = option(2, "global batch size, over all devices and hosts", defines_run=True,
                           check=schema.at_least(1))
  eval_batch_size: int = option(0, "evaluation batch size (0: --batch_size)",
                                check=schema.at_least(0))
  lr: float = option(1e-4, "Adam's learning rate", defines_run=True, check=_POSITIVE)
  clip_grad_norm: float = option(
      0.0, "clip the shared parameters' gradient to this global norm before Adam, as Nash-MTL's and "
      "FAMO's trainers do with 1.0 (0: no clipping, as the reference)",
      defines_run=True, check=(lambda v: v >= 0 and v == v, "a number >= 0"))
  lr_halve_epoch: int = option(100, "halve the learning rate after this epoch (0: never)",
                               defines_run=True, check=schema.at_least(0))
  steps_per_epoch: int = option(0, "at most this many steps per epoch (0: full epochs)",
                                defines_run=True, check=schema.at_least(0))
  seed: int = option(0, "parameters, data order, augmentation", defines_run=True)
  bn_statistics: str = option("global", "BatchNorm statistics over the global batch or per device",
                              defines_run=True, choices=("global", "device"))
  metrics: str = option("exact", "exact split sums, or the reference's per-batch averages",
                        defines_run=True, choices=("exact", "reference"))
  max_skipped_steps: int = option(5, "consecutive non-finite (skipped) steps before the run stops",
                                  check=schema.at_least(1))
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  # Where and bookkeeping.
  workdir: str = option("runs/default", "run folder")
  resume: bool = option(False, "continue the run in --workdir from its newest intact checkpoint")
  overwrite: bool = option(False, "delete the run already in --workdir and start afresh")
  keep_checkpoints: int = option(3, "checkpoints kept (the newest)", check=schema.at_least(1))
  workers: int = option(8, "input-pipeline threads", check=schema.at_least(0))
  devices: int = option(0, "local devices to use (0: all)", check=schema.at_least(0))
  multihost: bool = option(False, "call jax.distributed.initialize() first")
  progress: bool = option(True, "progress bars")
  compilation_cache: str | None = option(
      None, "persistent XLA compilation cache folder ('' to disable; none: ~/.cache/mtan_jax/xla)")

  def __post_init__(self):
    # The chosen scheme's options with their defaults filled in, so that a config made in Python
    # and one made from flags (or read back) are the same run.
    from mtan_jax import weighting  # pylint: disable=import-outside-toplevel
    if self.weighting in weighting.NAMES:
      filled = {o.name: o.default for o in weighting.options(self.weighting)}
      object.__setattr__(self, "weighting_options", {**filled, **self.weighting_options})

  @property
  def dataset(self) -> str:
    """The dataset ("nyuv2" or "cityscapes"); it lives in `data`."""
    return self.data.dataset

  @property
  def resolution(self) -> tuple[int, int]:
    """The image size (height, width): the data's, or the dataset's release default."""
    return tuple(self.data.resolution or tasks_lib.DEFAULT_RESOLUTION[self.dataset])

  def validate(self) -> "TrainConfig":
    """Refuses values no run can use before anything is built, written or compiled; returns self.
    The checks are the schema's (each field's choices and check) and the weighting's options."""
    problems = schema.check(self)
    if self.dataset in datasets_lib.NAMES:
      classes = datasets_lib.get(self.dataset).classes
      if self.data.num_classes is not None and self.data.num_classes not in classes:
        problems.append(f"--num_classes: expected one of {classes} for {self.dataset}, found "
                        f"{self.data.num_classes}")
    from mtan_jax import weighting  # pylint: disable=import-outside-toplevel
    if self.weighting in weighting.NAMES:
      problems += weighting.option_problems(self.weighting, self.weighting_options)
    if self.weighting_options.get("task_gradients") == "representation":
      from mtan_jax.models import registry  # pylint: disable=import-outside-toplevel
      if self.model in registry.MODELS and not registry.get_spec(self.model).representation:
        able = ", ".join(n for n, spec in registry.MODELS.items() if spec.representation)
        problems.append(f"--task_gradients=representation: the {self.model} model has no shared "
                        f"representation that every task reads (models that have: {able})")
    if problems:
      raise ConfigError("; ".join(problems))
    return self

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
    """The config `to_dict` wrote (e.g. a run's config.json, named by `source` in errors). A field
    this version does not declare is refused by name: configs are not migrated between versions."""
    values = dict(values)
    data = dict(values.pop("data", {}))
    for name, known, given in (("", cls, values), ("data.", DataConfig, data)):
      unknown = set(given) - {f.name for f in dataclasses.fields(known)}
      if unknown:
        raise ValueError(f"{source}: unknown field(s) "
                         f"{', '.join(name + u for u in sorted(unknown))}; expected those of "
                         f"{known.__name__}")
    for name in ("resolution", "synthetic_size"):
      if data.get(name) is not None:
        data[name] = tuple(data[name])
    if values.get("tasks") is not None:
      values["tasks"] = tuple(values["tasks"])
    return cls(data=DataConfig(**data), **values)


def _read_back(saved: dict[str, Any], cls, source: str) -> dict[str, Any]:
  """`saved` read as a config and written again: checked, with its tuples as `to_dict` writes them."""
  return json.loads(json.dumps(cls.from_dict(saved, source).to_dict()))


def differences(saved: dict[str, Any], config: TrainConfig, source: str,
                defining: bool = True) -> list[str]:
  """The fields that define the run (or, `defining=False`, the others) on which a saved config
  (config.json, a checkpoint's record) and `config` differ, as readable lines."""
  return schema.differences(_read_back(saved, type(config), source), config, source, defining)


def changes_on_resume(saved: dict[str, Any], config: TrainConfig,
                      source: str) -> dict[str, list[Any]]:
  """`schema.changes_on_resume` of a saved config."""
  return schema.changes_on_resume(_read_back(saved, type(config), source), config)
