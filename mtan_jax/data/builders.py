"""TFDS builders for the NYUv2 and CityScapes releases and for the synthetic scenes.

All three write ArrayRecord files of plain tensor features, so building and reading need no
TensorFlow, and `tfds.data_source` / `builder.as_data_source()` gives random access. Every dataset
has the splits "train" and "test" (the releases' "val" folder is the test split the paper reports
on); a validation split is carved from "train" by the input pipeline.

TFDS writes into a temporary folder and renames it only when the whole build succeeded, so a build
that fails (bad input, interruption) leaves nothing that a later run would take as complete.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from mtan_jax import tasks as tasks_lib
from mtan_jax.data import release
from mtan_jax.data import synthetic

TFDS_SPLITS = {"train": "train", "test": "val"}  # TFDS split -> release folder


def _features(layout: release.Layout, height: int, width: int) -> tfds.features.FeaturesDict:
  features = {f.name: tfds.features.Tensor(shape=f.shape(height, width), dtype=f.storage_dtype)
              for f in layout.fields}
  # Records are shuffled on write: the source index says which file an example came from.
  features["index"] = tfds.features.Tensor(shape=(), dtype=np.int32)
  return tfds.features.FeaturesDict(features)


class _ReleaseBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic: scan every split first (cheap header checks), then write with value checks."""

  LAYOUT: release.Layout
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, release_dir: str | None = None, **kwargs):
    self._release_dir = release_dir
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _resolution(self) -> tuple[int, int]:
    return self.builder_config.height, self.builder_config.width

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=_features(self.LAYOUT, *self._resolution()),
                                 description=self.__doc__)

  def _split_generators(self, dl_manager):
    if self._release_dir is None:
      raise release.ReleaseError(f"{self.name}: no release folder given; expected "
                                 f"{self.LAYOUT.describe('RELEASE_DIR')}")
    counts = {split: release.scan(self.LAYOUT, self._release_dir, folder, *self._resolution())
              for split, folder in TFDS_SPLITS.items()}
    return {split: self._generate_examples(TFDS_SPLITS[split], counts[split]) for split in counts}

  def _generate_examples(self, folder: str, count: int):
    for i in range(count):
      example = release.load_example(self.LAYOUT, self._release_dir, folder, i)
      example["index"] = np.int32(i)
      yield i, example


@dataclasses.dataclass
class ResolutionConfig(tfds.core.BuilderConfig):
  height: int = 288
  width: int = 384


class MtanNyuv2(_ReleaseBuilder):
  """NYUv2 as published with MTAN: 13-class segmentation, depth (m), normals; 288x384."""

  LAYOUT = release.NYUV2
  BUILDER_CONFIGS = [ResolutionConfig(name="288x384", height=288, width=384)]


class MtanCityscapes(_ReleaseBuilder):
  """CityScapes as published with MTAN: 7- and 19-class segmentation, inverse depth."""

  LAYOUT = release.CITYSCAPES
  BUILDER_CONFIGS = [ResolutionConfig(name="128x256", height=128, width=256),
                     ResolutionConfig(name="256x512", height=256, width=512)]


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """Which synthetic scenes: indoor (NYUv2-like) or street (CityScapes-like), size and seed."""

  variant: str = "indoor"
  height: int = 288
  width: int = 384
  num_train: int = 795
  num_test: int = 654
  seed: int = 0


def synthetic_config(variant: str = "indoor", height: int = 288, width: int = 384,
                     num_train: int = 795, num_test: int = 654, seed: int = 0) -> SyntheticConfig:
  """A named config: each combination is built once and kept under its own name."""
  if variant not in ("indoor", "street"):
    raise ValueError(f"synthetic variant: expected 'indoor' or 'street', found {variant!r}")
  if height % 32 or width % 32 or height <= 0 or width <= 0:
    raise ValueError(f"synthetic resolution: expected height and width divisible by 32, found "
                     f"{height}x{width}")
  if num_train < 1 or num_test < 1:
    raise ValueError(f"synthetic sizes: expected at least one train and one test example, found "
                     f"{num_train} and {num_test}")
  name = f"{variant}_{height}x{width}_{num_train}_{num_test}_seed{seed}"
  return SyntheticConfig(name=name, variant=variant, height=height, width=width,
                         num_train=num_train, num_test=num_test, seed=seed)


class MtanSynthetic(tfds.core.GeneratorBasedBuilder):
  """The built-in synthetic scenes, with the features of the NYUv2 (indoor) or CityScapes (street)
  release, so that every dataset flows through one path. Test examples use indices after the train
  ones, so the two splits never share a scene."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [synthetic_config()]

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  @property
  def layout(self) -> release.Layout:
    return release.NYUV2 if self.builder_config.variant == "indoor" else release.CITYSCAPES

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return tfds.core.DatasetInfo(builder=self, features=_features(self.layout, c.height, c.width),
                                 description=self.__doc__)

  def _split_generators(self, dl_manager):
    c = self.builder_config
    return {"train": self._generate_examples(0, c.num_train),
            "test": self._generate_examples(c.num_train, c.num_test)}

  def _generate_examples(self, first: int, count: int):
    c = self.builder_config
    render = synthetic.render_indoor if c.variant == "indoor" else synthetic.render_street
    for i in range(count):
      sample = render(c.seed, first + i, c.height, c.width)
      example = {f.name: sample[f.name].astype(f.storage_dtype) for f in self.layout.fields}
      example["index"] = np.int32(first + i)
      yield i, example


def builder(dataset: str, *, data_dir: str | None = None, release_dir: str | None = None,
            resolution: tuple[int, int] | None = None, synthetic_size: tuple[int, int] = (795, 654),
            seed: int = 0) -> tfds.core.DatasetBuilder:
  """The builder for `dataset` ("nyuv2" or "cityscapes"): the release in `release_dir`, or, when it
  is None, the synthetic scenes of the same kind (indoor for NYUv2, street for CityScapes).

  Args:
    dataset: "nyuv2" or "cityscapes".
    data_dir: where built datasets live (TFDS' default, ~/tensorflow_datasets, when None).
    release_dir: the release folder, or None for synthetic scenes.
    resolution: (height, width); defaults 288x384 (NYUv2) and 128x256 (CityScapes). A release
      comes in fixed resolutions; synthetic scenes take any multiple of 32.
    synthetic_size: (train, test) example counts of synthetic scenes.
    seed: synthetic scenes' seed.
  """
  if dataset not in release.LAYOUTS:
    raise ValueError(f"dataset: expected one of {tuple(release.LAYOUTS)}, found {dataset!r}")
  height, width = resolution or tasks_lib.DEFAULT_RESOLUTION[dataset]
  if release_dir is None:
    config = synthetic_config("indoor" if dataset == "nyuv2" else "street", height, width,
                              *synthetic_size, seed=seed)
    return MtanSynthetic(config=config, data_dir=data_dir)
  cls = MtanNyuv2 if dataset == "nyuv2" else MtanCityscapes
  names = [c.name for c in cls.BUILDER_CONFIGS]
  if f"{height}x{width}" not in names:
    raise ValueError(f"{dataset} release resolution: expected one of {names}, found "
                     f"{height}x{width}")
  return cls(config=f"{height}x{width}", data_dir=data_dir,
             release_dir=str(pathlib.Path(release_dir).expanduser()))


def prepare(dataset: str, **kwargs) -> tfds.core.DatasetBuilder:
  """`builder(...)`, built if it is not already (see `builder` for the arguments)."""
  b = builder(dataset, **kwargs)
  b.download_and_prepare()
  return b
