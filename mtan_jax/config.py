"""The configuration of a training run: one frozen dataclass, written into the run folder."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mtan_jax import tasks as tasks_lib
from mtan_jax.data.pipeline import DataConfig


class ConfigError(ValueError):
  """A configuration value no run can use; the message names the flag, what was expected and what
  was found."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines a run. Defaults are the reference recipe (spec §12) on NYUv2."""

  # What to train.
  dataset: str = "nyuv2"  # "nyuv2" or "cityscapes"
  tasks: tuple[str, ...] | None = None  # a subset of the dataset's tasks; None: all of them
  model: str = "mtan"  # a name of mtan_jax.models.MODEL_NAMES
  width_mult: float = 1.0  # stage-width multiplier (1: the paper's networks)
  dtype: str = "float32"  # compute dtype: "float32" or "bfloat16" (parameters stay float32)
  remat: bool = False  # recompute all but conv outputs in the backward pass (half the memory)
  weighting: str = "equal"  # a name of mtan_jax.weighting.NAMES
  temperature: float = 2.0  # DWA's temperature T
  # How.
  epochs: int = 200
  batch_size: int = 2  # global batch, over all devices and hosts
  eval_batch_size: int = 0  # 0: batch_size
  lr: float = 1e-4  # Adam
  lr_halve_epoch: int = 100  # the learning rate is halved after this many epochs (0: never)
  steps_per_epoch: int = 0  # 0: full epochs; else at most this many steps per epoch
  seed: int = 0  # parameters, data order, augmentation
  bn_statistics: str = "global"  # "global": over the global batch; "device": per device
  metrics: str = "exact"  # "exact" (split-level sums) or "reference" (per-batch averages)
  max_skipped_steps: int = 5  # consecutive non-finite (skipped) steps before the run stops
  data: DataConfig = DataConfig()
  # Where and bookkeeping.
  workdir: str = "runs/default"
  resume: bool = False  # continue the run in workdir from its latest checkpoint
  overwrite: bool = False  # start afresh in a workdir that holds another run (deleting it)
  keep_checkpoints: int = 3
  workers: int = 8  # input-pipeline threads
  devices: int = 0  # local devices to use (0: all of them)
  multihost: bool = False  # call jax.distributed.initialize() first
  progress: bool = True  # a progress bar per epoch

  @property
  def resolution(self) -> tuple[int, int]:
    """The image size (height, width): the data's, or the dataset's release default."""
    return tuple(self.data.resolution or tasks_lib.DEFAULT_RESOLUTION[self.dataset])

  def validate(self) -> "TrainConfig":
    """Refuses values no run can use before anything is built, written or compiled; returns self."""
    problems = []

    def need(ok: bool, flag: str, expected: str, found: Any) -> None:
      if not ok:
        problems.append(f"--{flag}: expected {expected}, found {found!r}")

    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    need(finite(self.lr) and self.lr > 0, "lr", "a finite learning rate > 0", self.lr)
    need(finite(self.temperature) and self.temperature > 0, "temperature",
         "a finite temperature > 0", self.temperature)
    need(finite(self.width_mult) and self.width_mult > 0, "width_mult", "a finite multiplier > 0",
         self.width_mult)
    for flag, least in (("epochs", 1), ("batch_size", 1), ("keep_checkpoints", 1),
                        ("max_skipped_steps", 1), ("eval_batch_size", 0), ("steps_per_epoch", 0),
                        ("lr_halve_epoch", 0), ("workers", 0), ("devices", 0)):
      value = getattr(self, flag)
      need(isinstance(value, int) and value >= least, flag, f"an integer >= {least}", value)
    height, width = self.resolution
    need(height > 0 and width > 0 and height % 32 == 0 and width % 32 == 0, "resolution",
         "HEIGHTxWIDTH, both positive multiples of 32 (five 2x2 poolings)", f"{height}x{width}")
    for flag, choices in (("dtype", ("float32", "bfloat16")),
                          ("bn_statistics", ("global", "device")),
                          ("metrics", ("exact", "reference"))):
      need(getattr(self, flag) in choices, flag, f"one of {choices}", getattr(self, flag))
    fraction = self.data.validation_fraction
    need(finite(fraction) and 0 <= fraction < 1, "validation_fraction", "a number in [0, 1)",
         fraction)
    need(min(self.data.synthetic_size) >= 1, "synthetic_size",
         "at least one train and one test example", self.data.synthetic_size)
    if problems:
      raise ConfigError("; ".join(problems))
    return self

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
    """The config `to_dict` wrote (e.g. a run's config.json, named by `source` in errors)."""
    values = dict(values)
    data = dict(values.pop("data", {}))
    for name, known, given in (("", cls, values), ("data.", DataConfig, data)):
      unknown = set(given) - {f.name for f in dataclasses.fields(known)}
      if unknown:
        raise ValueError(f"{source}: unknown field(s) {', '.join(name + u for u in sorted(unknown))}"
                         f"; expected those of {known.__name__}")
    for name in ("resolution", "synthetic_size"):
      if data.get(name) is not None:
        data[name] = tuple(data[name])
    if values.get("tasks") is not None:
      values["tasks"] = tuple(values["tasks"])
    return cls(data=DataConfig(**data), **values)
