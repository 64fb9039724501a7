"""The datasets by name: every fact the library needs about one, in one place.

    spec = datasets.get("cityscapes")
    spec.tasks, spec.default_classes, spec.label_field(19), spec.depth_power, spec.resolutions

Read by `tasks` (which tasks and how many classes), `data` (the release's label field and
resolutions, the synthetic scenes' kind, the augmentation's depth scaling) and `train`. A new
dataset is one entry here, its release layout (`data/release.py`) and its builder
(`data/builders.py`, keyed by the same name).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset.

  Attributes:
    name: its key ("nyuv2").
    tasks: the task names it has, in the reference's order.
    classes: the segmentation class counts it comes with, the default first.
    label_fields: the release field holding the labels for each class count.
    depth_power: how depth scales when an image is zoomed by s: divided by s ** depth_power (1 for
      metric depth, -1 for inverse depth).
    resolutions: the (height, width) its release comes in, the default first.
    synthetic_kind: the built-in synthetic scenes that stand in for it ("indoor" or "street").
  """

  name: str
  tasks: tuple[str, ...]
  classes: tuple[int, ...]
  label_fields: dict[int, str]
  depth_power: int
  resolutions: tuple[tuple[int, int], ...]
  synthetic_kind: str

  @property
  def default_classes(self) -> int:
    return self.classes[0]

  @property
  def default_resolution(self) -> tuple[int, int]:
    return self.resolutions[0]

  def label_field(self, classes: int | None = None) -> str:
    """The release field of the labels with `classes` classes (None: the default count)."""
    classes = self.default_classes if classes is None else classes
    if classes not in self.label_fields:
      raise ValueError(f"num_classes for {self.name}: expected one of {self.classes}, found "
                       f"{classes}")
    return self.label_fields[classes]


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("nyuv2", ("segmentation", "depth", "normal"), (13,), {13: "label"}, 1,
                ((288, 384),), "indoor"),
    DatasetSpec("cityscapes", ("segmentation", "depth"), (7, 19),
                {7: "label_7", 19: "label_19"}, -1, ((128, 256), (256, 512)), "street"),
)}
NAMES = tuple(DATASETS)


def get(name: str) -> DatasetSpec:
  """The dataset `name`; ValueError naming the known ones otherwise."""
  if name not in DATASETS:
    raise ValueError(f"dataset: expected one of {NAMES}, found {name!r}")
  return DATASETS[name]
