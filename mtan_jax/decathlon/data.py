"""Decathlon data in memory: the built-in synthetic stand-in, and batches of one task at a time.

The synthetic stand-in has ten small classification tasks of distinct styles and class counts (a
scaled-down Decathlon: one large task first, a two-class one, three that must not be flipped), so
`python experiments/decathlon.py` runs on a CPU in minutes and visibly learns. Each class is a
template drawn from its task's style (frequency band, colour or grey, blob or stripe patterns);
an example is its class template shifted by a few pixels, with random contrast and noise.

A split is `Split(images [N, H, W, 3] uint8, labels [N] int32)`; `batches` makes the global batches
of one task, normalised with its mean and std, flipped at random in training where the task allows.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from mtan_jax import decathlon

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
  """One split of one task: `images` `[N, H, W, 3]` uint8, `labels` `[N]` int32."""

  images: np.ndarray
  labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class TaskData:
  """One task's splits and facts: `task` (name, classes, normalisation, flip) and its splits."""

  task: decathlon.DecathlonTask
  splits: dict[str, Split]


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
  return TaskData(task, splits)


def synthetic(seed: int = 0, size: int = SYNTHETIC_SIZE) -> tuple[TaskData, ...]:
  """The ten tasks of the synthetic stand-in, in the Decathlon's order."""
  return tuple(synthetic_task(i, seed, size) for i in range(len(SYNTHETIC)))


def normalise(images: np.ndarray, task: decathlon.DecathlonTask) -> np.ndarray:
  """uint8 `[..., 3]` -> float32 (x / 255 - mean) / std, the reference's ToTensor + Normalize."""
  return ((images.astype(np.float32) / 255.0 - np.float32(task.mean))
          / np.float32(task.std)).astype(np.float32)


def batches(data: TaskData, split: str, global_batch: int, devices: int, *, train: bool,
            seed: int = 0, epoch: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """The global batches of one task's split, `{"image": [devices, B, H, W, 3] float32, "label":
  [devices, B] int32, "valid": [devices, B] bool}` with B = global_batch / devices.

  Training: shuffled by (seed, epoch), flipped at random where the task allows, the last partial
  batch dropped (every device gets a full share). Evaluation: in order, the last batch padded with
  invalid examples (`valid` False), so that every example is counted once.
  """
  if global_batch % devices:
    raise ValueError(f"batch size: expected a multiple of the {devices} devices, found "
                     f"{global_batch}")
  images, labels = data.splits[split].images, data.splits[split].labels
  count = len(labels)
  rng = np.random.default_rng([seed, epoch, decathlon.NAMES.index(data.task.name)])
  order = rng.permutation(count) if train else np.arange(count)
  stop = count - count % global_batch if train else count
  for start in range(0, stop, global_batch):
    index = order[start:start + global_batch]
    image = normalise(images[index], data.task)
    if train and data.task.flip:
      flip = rng.random(len(index)) < 0.5
      image[flip] = image[flip][:, :, ::-1]
    label, valid = labels[index], np.ones(len(index), bool)
    pad = global_batch - len(index)
    if pad:
      image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), np.float32)])
      label = np.concatenate([label, np.zeros(pad, np.int32)])
      valid = np.concatenate([valid, np.zeros(pad, bool)])
    per_device = global_batch // devices
    yield {"image": image.reshape(devices, per_device, *image.shape[1:]),
           "label": label.reshape(devices, per_device), "valid": valid.reshape(devices, per_device)}
