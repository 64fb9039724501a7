"""A TFDS builder per Decathlon dataset of the release: images decoded with Pillow once, at build
time, and stored whole as uint8 (shorter side 72; the crop happens in training), so a run reads
them by random access (ArrayRecord, `as_data_source`) without holding a dataset in memory or
decoding a JPEG again, and building and reading need no TensorFlow.

Each example is {"image": [H, W, 3] uint8, "label": int32 (-1 in test), "index": int32 (its
position in the split's sorted file list)}; the built dataset keeps that list and the class
folders in `FILES` beside the records, so test predictions go back to their file names. A
release folder gets its own built dataset per dataset (`<dataset>_<folder name>_<hash>`), rebuilt
when its files change (`builders.prepare_release`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from mtan_jax import decathlon
from mtan_jax.data import builders
from mtan_jax.data.release import ReleaseError, ReleaseFiles
from mtan_jax.decathlon import release

FILES = "mtan_decathlon_files.json"  # in a built dataset: the class folders, each split's files
TFDS_SPLITS = {"train": "train", "validation": "val", "test": "test"}  # TFDS split -> folder


@dataclasses.dataclass
class DecathlonConfig(tfds.core.BuilderConfig):
  dataset: str = "aircraft"


class MtanDecathlon(builders._QuietBuilder):  # pylint: disable=protected-access
  """One Visual Decathlon dataset from the 72-pixel release (decathlon-1.0-data/<dataset>)."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [DecathlonConfig(name=name, dataset=name) for name in decathlon.NAMES]

  def __init__(self, *, release_dir: str, classes: int | None = None, **kwargs):
    self._release_dir = release_dir
    self._classes = classes
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=(
        tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.Tensor(shape=(), dtype=np.int32),
            "index": tfds.features.Tensor(shape=(), dtype=np.int32)})))

  def dataset_files(self) -> release.DatasetFiles:
    return release.list_files(self._release_dir, self.builder_config.dataset, self._classes)

  def list_files(self) -> ReleaseFiles:
    return self.dataset_files().listing

  def _split_generators(self, dl_manager):
    files = self.dataset_files()
    self._files = files
    return {split: self._generate_examples(files.examples[folder], folder)
            for split, folder in TFDS_SPLITS.items()}

  def _generate_examples(self, examples, folder: str):
    root = pathlib.Path(self._release_dir).expanduser().resolve()
    with self._examples_progress(len(examples), f"{self.builder_config.dataset} {folder}") as bar:
      loaded = builders._in_threads(  # pylint: disable=protected-access
          lambda example: release.load_image(root / example[0]), examples)
      for i, ((_, label), image) in enumerate(zip(examples, loaded)):
        yield i, {"image": image, "label": np.int32(label), "index": np.int32(i)}
        bar.update(1)

  def _download_and_prepare(self, dl_manager, download_config=None):  # pylint: disable=arguments-differ
    super()._download_and_prepare(dl_manager, download_config)
    # Inside TFDS' temporary folder: renamed with the records, or dropped with them.
    files = {"dataset": self.builder_config.dataset, "classes": list(self._files.classes),
             "splits": {split: [name for name, _ in self._files.examples[folder]]
                        for split, folder in TFDS_SPLITS.items()}}
    (pathlib.Path(self.data_dir) / FILES).write_text(json.dumps(files))


def builder(dataset: str, release_dir, *, data_dir: str | None = None,
            classes: int | None = None, progress: bool = True) -> MtanDecathlon:
  """The builder of `dataset` (a Decathlon name) in the release folder `release_dir` (the one
  holding the datasets' folders); built datasets live in `data_dir` (TFDS' default when None).
  `classes`: the class folders expected (default: the dataset's own count)."""
  root = pathlib.Path(release_dir).expanduser().absolute().resolve()
  config = DecathlonConfig(name=f"{dataset}_{builders.folder_key(root)}", dataset=dataset)
  return MtanDecathlon(config=config, data_dir=data_dir, release_dir=str(root), classes=classes,
                       progress=progress)


@dataclasses.dataclass(frozen=True)
class BuiltDataset:
  """A built Decathlon dataset as a run reads it: where it is built, the release's class folders
  (class index -> name), its splits by folder name ("train", "val", "test") as random-access
  sources, and the files behind them."""

  dataset: str
  folder: str
  classes: tuple[str, ...]
  sources: dict
  files: dict[str, list[str]]  # per split, the file names (relative to the release root)


def prepare(dataset: str, release_dir, *, data_dir: str | None = None, classes: int | None = None,
            say: Callable[[str], None] = print, progress: bool = True) -> BuiltDataset:
  """`dataset` of the release, built if it is not (or rebuilt when its files changed), opened."""
  b = builders.prepare_release(
      lambda: builder(dataset, release_dir, data_dir=data_dir, classes=classes,
                      progress=progress), f"the Decathlon dataset {dataset} of", say,
      once="once per release folder")
  try:
    record = json.loads((pathlib.Path(b.data_dir) / FILES).read_text())
  except (OSError, json.JSONDecodeError) as error:
    raise ReleaseError(f"{b.data_dir}/{FILES}: the built dataset's file list cannot be read "
                       f"({error}); delete {b.data_dir} to rebuild it") from error
  sources = b.as_data_source()
  return BuiltDataset(dataset, str(b.data_dir), tuple(record["classes"]),
                      {folder: sources[split] for split, folder in TFDS_SPLITS.items()},
                      {TFDS_SPLITS[split]: names for split, names in record["splits"].items()})
