"""The configuration of a training run: one frozen dataclass, written into the run folder."""

from __future__ import annotations

import dataclasses
from typing import Any

from mtan_jax import tasks as tasks_lib
from mtan_jax.data.pipeline import DataConfig


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
