"""Decathlon data: the built-in synthetic stand-in (in memory), the release (built once, read by
random access: `build`), and the batches of one task at a time.

The synthetic stand-in has ten small classification tasks of distinct styles and class counts (a
scaled-down Decathlon: one large task first, a two-class one, three that must not be flipped), so
`python experiments/decathlon.py` runs on a CPU in minutes and visibly learns. Each class is a
template drawn from its task's style (frequency band, colour or grey, blob or stripe patterns);
an example is its class template shifted by a few pixels, with random contrast and noise.

A split is a sequence of examples {"image": [H, W, 3] uint8, "label": int32 (-1: unknown, the
release's test split), "index": int32 (its file, `TaskData.names`)}; `batches` makes the global
batches of one task: cropped to `image_size` (at random in training where the task allows, else
the centre), flipped at random in training where the task allows, normalised with its mean and std.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np

from mtan_jax import decathlon
from mtan_jax.data import pipeline
from mtan_jax.data.pipeline import DataError
from mtan_jax.decathlon import release

# (name, classes, train, val, test examples, style): a scaled-down Decathlon, task order kept.
SYNTHETIC = (
    ("imagenet12", 20, 600, 100, 100, "blobs"), ("aircraft", 10, 200, 50, 50, "stripes"),
    ("cifar100", 10, 200, 50, 50, "blobs"), ("daimlerpedcls", 2, 200, 50, 50, "grey_stripes"),
    ("dtd", 8, 160, 40, 40, "stripes"), ("gtsrb", 6, 160, 40, 40, "blobs"),
    ("omniglot", 16, 240, 64, 64, "grey_blobs"), ("svhn", 10, 200, 50, 50, "grey_stripes"),
    ("ucf101", 10, 200, 50, 50, "stripes"), ("vgg-flowers", 12, 200, 48, 48, "blobs"))
SYNTHETIC_SIZE = 32
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of one task in memory: `images` `[N, H, W, 3]` uint8, `labels` `[N]` int32."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"image": self.images[i], "label": np.int32(self.labels[i]), "index": np.int32(i)}


class SourceSplit(Sequence):
  """One split of a built release dataset (a TFDS data source), read by random access; a record
  that cannot be read is named with its split and the built dataset to delete."""

  def __init__(self, source, split: str, folder: str):
    self.source, self.split, self.folder = source, split, folder

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    try:
      record = self.source[int(i)]
    except Exception as error:  # the reader's own errors (hash mismatch, short file...)
      raise DataError(f"record {i} of the {self.split} split of {self.folder} cannot be read "
                      f"({type(error).__name__}: {error}); the built dataset is damaged: delete "
                      f"{self.folder} to rebuild it") from error
    return {"image": np.asarray(record["image"], np.uint8), "label": np.int32(record["label"]),
            "index": np.int32(record["index"])}


@dataclasses.dataclass(frozen=True)
class TaskData:
  """One task's splits and facts.

  Attributes:
    task: name, classes, normalisation, flip.
    splits: "train", "val", "test": sequences of examples (`Split` or `SourceSplit`).
    image_size: the side of the square crops the model sees (72 for the release).
    names: per split, the file of each example index (relative to the release root, as the
      challenge's annotation files name them); None for the stand-in.
    class_folders: the release's class folders (class index -> folder name); None for the
      stand-in.
  """

  task: decathlon.DecathlonTask
  splits: dict[str, Sequence[dict[str, np.ndarray]]]
  image_size: int = SYNTHETIC_SIZE
  names: dict[str, list[str]] | None = None
  class_folders: tuple[str, ...] | None = None


def _template(rng: np.random.Generator, style: str, size: int) -> np.ndarray:
  """One class's pattern `[size, size, 3]` in [0, 1] in the task's `style`."""
  y, x = np.mgrid[0:size, 0:size] / size
  grey = style.startswith("grey")
  channels = 1 if grey else 3
  image = np.zeros((size, size, channels))
  if style.endswith("stripes"):
    for _ in range(2):
      angle, frequency = rng.uniform(0, np.pi), rng.uniform(1.5, 5.0)
      phase, colour = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 1.0, channels)
      wave = np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
      image += 0.5 * (1 + wave)[..., None] * colour
  else:
    for _ in range(3):
      cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.25)
      blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
      image += blob[..., None] * rng.uniform(0.3, 1.0, channels)
  image = image / max(image.max(), 1e-6)
  return np.repeat(image, 3, axis=-1) if grey else image


def synthetic_task(index: int, seed: int = 0, size: int = SYNTHETIC_SIZE,
                   fraction: float = 1.0) -> TaskData:
  """Task `index` of the synthetic stand-in: class templates from a seed of its own, then each
  split's examples (template rolled by up to 3 pixels, contrast 0.7-1.3, noise 0.15); `fraction`
  of the examples (at least one) for quick checks."""
  name, classes, *counts, style = SYNTHETIC[index]
  counts = [max(1, round(c * fraction)) for c in counts]
  rng = np.random.default_rng([seed, index])
  templates = np.stack([_template(rng, style, size) for _ in range(classes)])
  splits = {}
  for split, count in zip(SPLITS, counts):
    labels = rng.integers(0, classes, count).astype(np.int32)
    images = templates[labels]
    shifts = rng.integers(-3, 4, (count, 2))
    images = np.stack([np.roll(im, tuple(s), axis=(0, 1)) for im, s in zip(images, shifts)])
    images = images * rng.uniform(0.7, 1.3, (count, 1, 1, 1))
    images = images + rng.normal(0, 0.15, images.shape)
    splits[split] = Split(np.clip(images * 255, 0, 255).round().astype(np.uint8), labels)
  pixels = np.concatenate([s.images for s in splits.values()]).reshape(-1, 3) / 255.0
  task = dataclasses.replace(decathlon.get(name), classes=classes,
                             mean=tuple(float(m) for m in pixels.mean(0)),
                             std=tuple(float(s) for s in pixels.std(0)))
  return TaskData(task, splits, image_size=size)


def synthetic(seed: int = 0, size: int = SYNTHETIC_SIZE) -> tuple[TaskData, ...]:
  """The ten tasks of the synthetic stand-in, in the Decathlon's order."""
  return tuple(synthetic_task(i, seed, size) for i in range(len(SYNTHETIC)))


def normalise(images: np.ndarray, task: decathlon.DecathlonTask) -> np.ndarray:
  """uint8 `[..., 3]` -> float32 (x / 255 - mean) / std, the reference's ToTensor + Normalize."""
  return ((images.astype(np.float32) / 255.0 - np.float32(task.mean))
          / np.float32(task.std)).astype(np.float32)


def transform(task: decathlon.DecathlonTask, size: int,
              train: bool) -> Callable[[dict, np.random.Generator], dict]:
  """The reference's per-example transform: training crops at random and flips with probability
  0.5 where the task allows (else the centre crop, as for evaluation), then normalises; the
  example gets "valid" True (padding examples are all zeros, so False)."""
  random = train and task.flip

  def apply(example: dict, rng: np.random.Generator) -> dict:
    image = example["image"]
    if image.shape[:2] != (size, size):
      image = release.crop(image, size, rng if random else None)
    if random and rng.random() < 0.5:
      image = image[:, ::-1]
    return {"image": normalise(image, task), "label": example["label"],
            "index": example["index"], "valid": np.bool_(True)}
  return apply


def batches(data: TaskData, split: str, global_batch: int, devices: int, *, train: bool,
            seed: int = 0, epoch: int = 0, start_step: int = 0, keep_partial: bool = False,
            workers: int = 4, process_index: int = 0,
            process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """The global batches of one task's split from batch `start_step` on, this process's share:
  `{"image": [devices, B, S, S, 3] float32, "label": [devices, B] int32, "index": [devices, B]
  int32, "valid": [devices, B] bool}` with B = global_batch / (devices x processes) and S =
  `data.image_size`, read by `workers` threads ahead.

  Training: shuffled by (seed, task, epoch), cropped and flipped at random where the task allows
  (`transform`); the last partial batch kept as a smaller batch (`keep_partial`, as the
  reference's DataLoaders; cut to a multiple of the devices) or dropped (a split smaller than one
  batch then gives none). Evaluation: in order, centre crops, the last batch padded with invalid
  examples (`valid` False), so that every example is counted once.
  """
  shards = devices * process_count
  if global_batch % shards:
    raise ValueError(f"batch size: expected a multiple of the {shards} devices, found "
                     f"{global_batch}")
  source = data.splits[split]
  if train and len(source) < (shards if keep_partial else global_batch):
    return  # not one batch: nothing to train on
  task_index = decathlon.NAMES.index(data.task.name)
  loader = pipeline.Loader(source, global_batch_size=global_batch, local_devices=devices,
                           shuffle=train, seed=seed * len(decathlon.NAMES) + task_index,
                           drop_remainder=train and not keep_partial,
                           keep_remainder=train and keep_partial, workers=workers,
                           process_index=process_index, process_count=process_count,
                           transform=transform(data.task, data.image_size, train))
  with loader:
    yield from loader.epoch(epoch, start_step)


def release_tasks(release_dir, *, data_dir: str | None = None,
                  datasets: Sequence[str] = decathlon.NAMES, classes: Sequence[int] | None = None,
                  say=print, progress: bool = True) -> tuple[TaskData, ...]:
  """The datasets of the release in `release_dir` (decathlon-1.0-data; default all ten, in the
  Decathlon's order), each built once into `data_dir` (TFDS' default when None; see `build`) and
  read from there. `classes`: the class folders expected per dataset (default: its own count)."""
  from mtan_jax.decathlon import build  # pylint: disable=import-outside-toplevel
  tasks = []
  for k, name in enumerate(datasets):
    task = decathlon.get(name)
    if classes is not None:
      task = dataclasses.replace(task, classes=int(classes[k]))
    built = build.prepare(task.name, release_dir, data_dir=data_dir, classes=task.classes,
                          say=say, progress=progress)
    splits = {split: SourceSplit(source, split, built.folder)
              for split, source in built.sources.items()}
    tasks.append(TaskData(task, splits, decathlon.IMAGE_SIZE, built.files, built.classes))
  return tuple(tasks)
