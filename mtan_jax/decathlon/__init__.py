"""The Visual Decathlon experiment (the paper's many-to-many case): ten classification datasets at
72 pixels, one MTAN on a wide residual network (`mtan_jax.models.wrn`), one task per batch.

The facts about the ten datasets live here: their names in the reference's task order, class counts,
the per-dataset normalisation and which ones are not flipped in training.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DecathlonTask:
  """One Decathlon dataset as a task.

  Attributes:
    name: the folder name in the release (`decathlon-1.0-data/<name>`).
    classes: its class count (the head's width).
    mean, std: per-channel RGB normalisation of images in [0, 1].
    flip: whether training flips images horizontally (and crops at random); gtsrb, omniglot and
      svhn are only centre-cropped, as the reference (their classes are not mirror-invariant).
  """

  name: str
  classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  flip: bool = True


# Normalisation: the reference's decathlon_mean_std.pickle (lorenmt/mtan, visual_decathlon/),
# written out here.
TASKS: tuple[DecathlonTask, ...] = (
    DecathlonTask("imagenet12", 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    DecathlonTask("aircraft", 100, (0.4798304051039279, 0.5107406567346455, 0.5343799814190597),
                  (0.21070221089390806, 0.20508900691993223, 0.23729657271897467)),
    DecathlonTask("cifar100", 100, (0.50705882, 0.48666667, 0.44078431),
                  (0.26745098, 0.25647059, 0.27607843)),
    DecathlonTask("daimlerpedcls", 2, (0.48203529036357456,) * 3, (0.23612615877685883,) * 3),
    DecathlonTask("dtd", 47, (0.526964973427387, 0.4702516394313597, 0.42396661533891555),
                  (0.25226876973312606, 0.24091760096297574, 0.24994090310229672)),
    DecathlonTask("gtsrb", 43, (0.339212632147436, 0.3117836043220333, 0.32047045470999164),
                  (0.2756034737291098, 0.26576118890673994, 0.27089863167885725), flip=False),
    DecathlonTask("omniglot", 1623, (0.08099839294726366,) * 3, (0.2704693536780251,) * 3,
                  flip=False),
    DecathlonTask("svhn", 10, (0.4376821, 0.4437697, 0.47280442),
                  (0.19803012, 0.20101562, 0.19703614), flip=False),
    DecathlonTask("ucf101", 101, (0.4995310137888206, 0.4988038622721222, 0.49981995805453494),
                  (0.10898684013388353, 0.10810246424511229, 0.10679939209791466)),
    DecathlonTask("vgg-flowers", 102, (0.4341468175105386, 0.3830988305660125, 0.2971476335792813),
                  (0.2850980845390874, 0.23842337678568612, 0.2639633044688674)),
)
NAMES = tuple(t.name for t in TASKS)
CLASSES = tuple(t.classes for t in TASKS)
IMAGE_SIZE = 72  # every image of the release is resized to 72 pixels (shorter side) and cropped


def get(name: str) -> DecathlonTask:
  """The task `name` (a dataset folder name), or ValueError naming the known ones."""
  for task in TASKS:
    if task.name == name:
      return task
  raise ValueError(f"Decathlon dataset: expected one of {NAMES}, found {name!r}")
