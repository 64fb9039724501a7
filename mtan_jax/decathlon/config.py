"""The Decathlon run's configuration: one typed dataclass whose fields declare their flags, help,
checks and whether they define the run (`schema.option`), as the dense tasks' `TrainConfig`."""

from __future__ import annotations

import dataclasses
from typing import Any

from mtan_jax import schema
from mtan_jax.schema import option

_POSITIVE = (schema.finite_positive, "a finite number > 0")


@dataclasses.dataclass(frozen=True)
class DecathlonConfig:
  """A Visual Decathlon run: the reference's recipe by default (WRN-28-4, SGD Nesterov 0.1,
  momentum 0.9, weight decay 5e-5, halved every 50 epochs, 400 epochs, the first task dropped and
  a fresh SGD at 0.01 from epoch 300, batch 128)."""

  depth: int = option(28, "WRN depth (6n + 4)", defines_run=True,
                      check=(lambda v: v >= 10 and (v - 4) % 6 == 0, "6n + 4 with n >= 1"))
  widen_factor: int = option(4, "WRN width multiplier k", defines_run=True,
                             check=schema.at_least(1))
  epochs: int = option(400, "epochs (each a pass over every task's training set in turn)",
                       check=schema.at_least(1))
  batch_size: int = option(128, "global batch size, over all devices", defines_run=True,
                           check=schema.at_least(1))
  lr: float = option(0.1, "SGD's learning rate", defines_run=True, check=_POSITIVE)
  lr_halve_every: int = option(50, "halve the learning rate every this many epochs",
                               defines_run=True, check=schema.at_least(1))
  drop_first_task_epoch: int = option(
      300, "from this epoch on, the first task (ImageNet) is no longer trained and a fresh SGD "
      "starts at --lr_after_drop (0: never)", defines_run=True, check=schema.at_least(0))
  lr_after_drop: float = option(0.01, "the learning rate of the SGD after the drop",
                                defines_run=True, check=_POSITIVE)
  weight_decay: float = option(5e-5, "SGD's weight decay (PyTorch's: added to the gradient)",
                               defines_run=True, check=(lambda v: 0 <= v < 1, "0 <= wd < 1"))
  mode: str = option("eval", "eval: train on train, evaluate on val; all: train on train and val",
                     defines_run=True, choices=("eval", "all"))
  settle: str = option(
      "train", "before each task's test predictions, one more epoch on its train and val sets: "
      "train (SGD steps, as the reference's evaluation script), statistics (BatchNorm statistics "
      "only, as that script's comment says), none", defines_run=True,
      choices=("train", "statistics", "none"))
  keep_partial_batch: bool = option(
      True, "train on each split's last partial batch too, as the reference's DataLoaders (false: "
      "drop it, every step a full batch)", defines_run=True)
  max_skipped_steps: int = option(5, "consecutive non-finite (skipped) steps before the run stops",
                                  check=schema.at_least(1))
  seed: int = option(0, "parameters, data order, flips", defines_run=True)
  release_dir: str | None = option(
      None, "the Decathlon release folder (decathlon-1.0-data, holding the ten datasets' "
      "folders); none: the built-in synthetic stand-in", defines_run=True, flag="data_dir")
  tfds_dir: str | None = option(None, "where built datasets are kept; none: ~/tensorflow_datasets")
  annotations_dir: str | None = option(
      None, "the devkit's annotation folder (decathlon-1.0/annotations): with it, the test "
      "predictions are also written as the challenge server's results.json")
  workdir: str = option("runs/decathlon", "run folder")
  resume: bool = option(False, "continue the run in --workdir from its newest intact checkpoint")
  overwrite: bool = option(False, "delete the run already in --workdir and start afresh")
  keep_checkpoints: int = option(3, "checkpoints kept (the newest)", check=schema.at_least(1))
  devices: int = option(0, "local devices to use (0: all)", check=schema.at_least(0))
  multihost: bool = option(False, "call jax.distributed.initialize() first")
  progress: bool = option(True, "progress lines")
  compilation_cache: str | None = option(
      None, "persistent XLA compilation cache folder ('' to disable; none: ~/.cache/mtan_jax/xla)")

  def validate(self) -> "DecathlonConfig":
    schema.validate(self)
    return self

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# The synthetic stand-in's preset: a WRN-10-2 over the ten small tasks, 12 epochs with the
# reference's schedule scaled to them (halved every 4 epochs, the first task dropped from epoch 9).
QUICK_PRESET = {"depth": 10, "widen_factor": 2, "epochs": 12, "batch_size": 32,
                "lr_halve_every": 4, "drop_first_task_epoch": 9}
