"""Task definitions: what each dense-prediction task predicts, and the task sets of the datasets.

A model is built for a tuple of `Task`s; its outputs are a dict keyed by `Task.name`, so any subset of
tasks (NYUv2 has three, CityScapes two) flows through the same code.
"""

from __future__ import annotations

import dataclasses

from mtan_jax import datasets as datasets_lib
from mtan_jax import task_kinds

SEGMENTATION = "segmentation"
DEPTH = "depth"
NORMAL = "normal"
TASK_NAMES = task_kinds.NAMES  # every kind, declared in task_kinds.KINDS

# The datasets of the paper (their facts: `mtan_jax.datasets`).
NYUV2 = "nyuv2"
CITYSCAPES = "cityscapes"
DATASETS = datasets_lib.NAMES
# The image size (height, width) of each dataset's MTAN release, used wherever none is given.
DEFAULT_RESOLUTION = {name: spec.default_resolution for name, spec in datasets_lib.DATASETS.items()}


@dataclasses.dataclass(frozen=True)
class Task:
  """One dense-prediction task.

  Attributes:
    name: "segmentation" (log-probabilities over `channels` classes), "depth" (one raw channel) or
      "normal" (three channels of unit length).
    channels: output channels of the task head: the class count for segmentation, 1 for depth, 3 for
      normals.
  """

  name: str
  channels: int

  def __post_init__(self):
    if self.name not in TASK_NAMES:
      raise ValueError(f"Task.name: expected one of {TASK_NAMES}, found {self.name!r}")
    expected = self.kind.channels
    if expected is not None and self.channels != expected:
      raise ValueError(f"Task.channels for {self.name!r}: expected {expected}, found {self.channels}")
    if expected is None and self.channels < 2:
      raise ValueError(f"Task.channels for {self.name!r}: expected a class count >= 2, "
                       f"found {self.channels}")

  @property
  def kind(self) -> task_kinds.TaskKind:
    """What the library knows of this task's kind: loss, metrics, activation, headers."""
    return task_kinds.KINDS[self.name]


def segmentation(num_classes: int) -> Task:
  """Semantic segmentation into `num_classes` classes (label -1 = unlabelled)."""
  return Task(SEGMENTATION, num_classes)


def depth() -> Task:
  """Per-pixel depth (metres for NYUv2, inverse depth for CityScapes); 0 in the target = invalid."""
  return Task(DEPTH, 1)


def normal() -> Task:
  """Per-pixel camera-frame surface normal; an all-zero target vector = invalid."""
  return Task(NORMAL, 3)


def dataset_tasks(dataset: str, names: tuple[str, ...] | None = None,
                  num_classes: int | None = None) -> tuple[Task, ...]:
  """The tasks of `dataset` in the reference's order, or the subset `names` (kept in that order).

  NYUv2: 13-class segmentation, depth, normals. CityScapes: 7-class segmentation (19 with
  `num_classes=19`) and depth.
  """
  spec = datasets_lib.get(dataset)
  classes, available = spec.default_classes, spec.tasks
  if num_classes is not None:
    classes = num_classes
  names = available if names is None else tuple(names)
  unknown = [n for n in names if n not in available]
  if unknown or not names or len(set(names)) != len(names):
    raise ValueError(f"tasks for {dataset}: expected distinct names from {available}, found {names}")
  build = {SEGMENTATION: lambda: segmentation(classes), DEPTH: depth, NORMAL: normal}
  return tuple(build[n]() for n in names)
