"""TFDS builders for the NYUv2 and CityScapes releases and for the synthetic scenes.

All three write ArrayRecord files of plain tensor features, so building and reading need no
TensorFlow, and `tfds.data_source` / `builder.as_data_source()` gives random access. Every dataset
has the splits "train" and "test" (the releases' "val" folder is the test split the paper reports
on); a validation split is carved from "train" by the input pipeline.

TFDS writes into a temporary folder and renames it only when the whole build succeeded, so a build
that fails (bad input, interruption) leaves nothing that a later run would take as complete.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import sys

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from tensorflow_datasets.core import shuffle as tfds_shuffle

from mtan_jax import datasets as datasets_lib
from mtan_jax import rundir
from mtan_jax.data import cityscapes
from mtan_jax.data import release
from mtan_jax.data import synthetic

TFDS_SPLITS = {"train": "train", "test": "val"}  # TFDS split -> release folder


class _DropConfigNotices(logging.Filter):
  """TFDS warns about every config made at run time ("Using custom data configuration ...",
  "Variant folder ... has no dataset_info.json"); each release folder and synthetic size has one."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Using custom data configuration")
                or (message.startswith("Variant folder") and "has no dataset_info" in message))


logging.getLogger("absl").addFilter(_DropConfigNotices())


def _features(layout: release.Layout, height: int, width: int) -> tfds.features.FeaturesDict:
  features = {f.name: tfds.features.Tensor(shape=f.shape(height, width), dtype=f.storage_dtype)
              for f in layout.fields}
  # Records are shuffled on write: the source index says which file an example came from.
  features["index"] = tfds.features.Tensor(shape=(), dtype=np.int32)
  return tfds.features.FeaturesDict(features)


class _QuietBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS' own build messages ("Downloading and preparing dataset Unknown size ...") mislead for a
  local build: `prepare` says what is built, from where and into where, and each split shows a
  progress bar over its examples (`progress=False`: none)."""

  def __init__(self, *, progress: bool = True, **kwargs):
    self._progress = progress
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def _examples_progress(self, count: int, split: str):
    return tqdm.tqdm(total=count, desc=f"building {split}", unit=" examples", leave=False,
                     file=sys.stderr, disable=not self._progress, dynamic_ncols=True)


class _ReleaseBuilder(_QuietBuilder, skip_registration=True):
  """Shared logic: scan every split first (cheap header checks), then write with value checks."""

  LAYOUT: release.Layout
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, release_dir: str | None = None, **kwargs):
    self._release_dir = release_dir
    super().__init__(**kwargs)

  def _resolution(self) -> tuple[int, int]:
    return self.builder_config.height, self.builder_config.width

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=_features(self.LAYOUT, *self._resolution()),
                                 description=self.__doc__)

  def list_files(self) -> release.ReleaseFiles:
    """The release's files (names, sizes, modification times), checked: cheap, every run."""
    return release.list_files(self.LAYOUT, self._release_dir)

  def example_origin(self, folder: str) -> str:
    """Where example {index} of a split folder came from, for error messages."""
    return f"{self._release_dir}/{folder}/*/{{index}}.npy"

  def _split_generators(self, dl_manager):
    if self._release_dir is None:
      raise release.ReleaseError(f"{self.name}: no release folder given; expected "
                                 f"{self.LAYOUT.describe('RELEASE_DIR')}")
    counts = release.scan(self.LAYOUT, self._release_dir, *self._resolution()).counts
    return {split: self._generate_examples(folder, counts[folder])
            for split, folder in TFDS_SPLITS.items()}

  def _generate_examples(self, folder: str, count: int):
    with self._examples_progress(count, folder) as progress:
      for i in range(count):
        example = release.load_example(self.LAYOUT, self._release_dir, folder, i)
        example["index"] = np.int32(i)
        yield i, example
        progress.update(1)


@dataclasses.dataclass
class ResolutionConfig(tfds.core.BuilderConfig):
  height: int = 288
  width: int = 384


def _published(dataset: str) -> list[ResolutionConfig]:
  """A config per resolution the dataset's release comes in (`datasets`)."""
  return [ResolutionConfig(name=f"{h}x{w}", height=h, width=w)
          for h, w in datasets_lib.get(dataset).resolutions]


class MtanNyuv2(_ReleaseBuilder):
  """NYUv2 as published with MTAN: 13-class segmentation, depth (m), normals; 288x384."""

  LAYOUT = release.NYUV2
  BUILDER_CONFIGS = _published("nyuv2")


class MtanCityscapes(_ReleaseBuilder):
  """CityScapes as published with MTAN: 7- and 19-class segmentation, inverse depth."""

  LAYOUT = release.CITYSCAPES
  BUILDER_CONFIGS = _published("cityscapes")


class MtanCityscapesOfficial(_ReleaseBuilder):
  """CityScapes from the official files (leftImg8bit, gtFine labelIds, disparity), made into the
  release's fields at its resolutions (`data/cityscapes.py`); frames in order of city and name."""

  LAYOUT = release.CITYSCAPES
  BUILDER_CONFIGS = _published("cityscapes")

  def list_files(self) -> release.ReleaseFiles:
    return cityscapes.list_files(self._release_dir)

  def example_origin(self, folder: str) -> str:
    return f"frame {{index}} of {self._release_dir}/leftImg8bit/{folder} (by city, then name)"

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(folder) for split, folder in TFDS_SPLITS.items()}

  def _generate_examples(self, folder: str):
    examples = cityscapes.pair_files(self._release_dir, folder)
    height, width = self._resolution()
    with self._examples_progress(len(examples), folder) as progress:
      loaded = _in_threads(lambda example: cityscapes.load(example, height, width), examples)
      for i, fields in enumerate(loaded):
        fields["index"] = np.int32(i)
        yield i, fields
        progress.update(1)


def _in_threads(function, items, workers: int | None = None):
  """`map(function, items)` in order, computed by `workers` threads (default: one per CPU) a few
  items ahead. Pillow decodes and resizes without holding the GIL, so the official CityScapes
  files (2048x1024 PNGs, about 80 ms a frame) build about twice as fast on two cores."""
  workers = workers or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(function, item))
      if len(pending) > 2 * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


RELEASE_BUILDERS = {"nyuv2": MtanNyuv2, "cityscapes": MtanCityscapes}  # by `datasets` name


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


class MtanSynthetic(_QuietBuilder):
  """The built-in synthetic scenes, with the features of the NYUv2 (indoor) or CityScapes (street)
  release, so that every dataset flows through one path. Test examples use indices after the train
  ones, so the two splits never share a scene."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [synthetic_config()]

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
    with self._examples_progress(count, "train" if first == 0 else "test") as progress:
      for i in range(count):
        sample = render(c.seed, first + i, c.height, c.width)
        example = {f.name: sample[f.name].astype(f.storage_dtype) for f in self.layout.fields}
        example["index"] = np.int32(first + i)
        yield i, example
        progress.update(1)


def release_config(height: int, width: int, release_root: pathlib.Path) -> ResolutionConfig:
  """The config of one release folder at one resolution: each resolved folder gets its own built
  dataset (`288x384_<folder name>_<hash of its path>`), so two folders live side by side."""
  return ResolutionConfig(name=f"{height}x{width}_{folder_key(release_root)}", height=height,
                          width=width)


def folder_key(root: pathlib.Path) -> str:
  """`<folder name>_<hash of its path>`: a config name part of its own for each release folder."""
  key = hashlib.sha256(str(root).encode()).hexdigest()[:10]
  slug = re.sub(r"[^A-Za-z0-9]+", "_", root.name).strip("_")[:40] or "root"
  return f"{slug}_{key}"


def builder(dataset: str, *, data_dir: str | None = None, release_dir: str | None = None,
            resolution: tuple[int, int] | None = None, synthetic_size: tuple[int, int] = (795, 654),
            seed: int = 0, progress: bool = True) -> tfds.core.DatasetBuilder:
  """The builder for `dataset` ("nyuv2" or "cityscapes"): the release in `release_dir`, or, when it
  is None, the synthetic scenes of the same kind (indoor for NYUv2, street for CityScapes).

  Args:
    dataset: "nyuv2" or "cityscapes".
    data_dir: where built datasets live (TFDS' default, ~/tensorflow_datasets, when None).
    release_dir: the release folder, or None for synthetic scenes. Each resolved folder has a
      built dataset of its own.
    resolution: (height, width); defaults 288x384 (NYUv2) and 128x256 (CityScapes). A release
      comes in fixed resolutions; synthetic scenes take any multiple of 32.
    synthetic_size: (train, test) example counts of synthetic scenes.
    seed: synthetic scenes' seed.
    progress: a progress bar over the examples while building.
  """
  spec = datasets_lib.get(dataset)
  height, width = resolution or spec.default_resolution
  if release_dir is None:
    config = synthetic_config(spec.synthetic_kind, height, width,
                              *synthetic_size, seed=seed)
    return MtanSynthetic(config=config, data_dir=data_dir, progress=progress)
  cls = RELEASE_BUILDERS[dataset]
  published = [c.name for c in cls.BUILDER_CONFIGS]
  if f"{height}x{width}" not in published:
    raise release.ReleaseError(f"{dataset} release resolution: the release comes in "
                               f"{' and '.join(published)}, found {height}x{width} (--resolution)")
  root = pathlib.Path(release_dir).expanduser().absolute().resolve()
  if dataset == "cityscapes" and root.is_dir():
    if cityscapes.is_official_layout(root):
      cls = MtanCityscapesOfficial
    elif not (root / "train").is_dir():
      raise release.ReleaseError(
          f"cityscapes folder {root} holds neither layout: expected the MTAN release "
          f"({release.CITYSCAPES.describe(root)}) or the official files "
          f"({root}/{{leftImg8bit,gtFine,disparity}}/{{train,val}}/<city>/*.png)")
  return cls(config=release_config(height, width, root), data_dir=data_dir,
             release_dir=str(root), progress=progress)


class _FilesWithoutTensorFlow:
  """The part of `tf` TFDS' shuffler uses for its temporary files, without TensorFlow.

  TFDS keeps a split's serialized examples in memory up to 1 GB, then spills them into temporary
  bucket files that it opens with `tf.io.gfile`, so a build of more than 1 GB (the NYUv2 release,
  2.5 GB at 288x384; CityScapes, 1.7 GB at 128x256) fails with "No module named 'tensorflow'".
  They are plain local files (in the built dataset's temporary folder), opened here with Python's
  own functions."""

  class io:  # noqa: N801  (mirrors tf.io.gfile)
    class gfile:  # noqa: N801
      @staticmethod
      def GFile(path, mode="r"):  # noqa: N802
        return open(os.fspath(path), mode)  # noqa: SIM115  (TFDS closes it)

      @staticmethod
      def exists(path):
        return os.path.exists(os.fspath(path))

      @staticmethod
      def remove(path):
        os.remove(os.fspath(path))

  class errors:  # noqa: N801
    class ResourceExhaustedError(OSError):
      message = ""


def _download_and_prepare(b: tfds.core.DatasetBuilder) -> None:
  """`b.download_and_prepare()`, with TFDS' temporary bucket files written without TensorFlow when
  it is not installed (`_FilesWithoutTensorFlow`)."""
  if importlib.util.find_spec("tensorflow") is not None:
    b.download_and_prepare()
    return
  original = tfds_shuffle.tf
  tfds_shuffle.tf = _FilesWithoutTensorFlow
  try:
    b.download_and_prepare()
  finally:
    tfds_shuffle.tf = original


PROVENANCE = "mtan_provenance.json"  # in a built release dataset: the files it was built from


@dataclasses.dataclass
class Source:
  """A dataset as a run will read it: its builder, the release's files (None for synthetic
  scenes) and the state of the built copy ("up to date", "not built", or "out of date: ...")."""

  builder: tfds.core.DatasetBuilder
  listing: release.ReleaseFiles | None
  status: str
  changes: list[str] = dataclasses.field(default_factory=list)

  def describe(self) -> str:
    """One line: where the data comes from and which built dataset is read."""
    built = pathlib.Path(self.builder.data_dir)
    if self.listing is None:
      return f"built dataset {built} ({self.status})"
    return (f"release {self.listing.root} ({self.listing.counts_text} examples, "
            f"{len(self.listing.files)} files checked), built dataset {built} ({self.status})")


def locate(dataset: str, **kwargs) -> Source:
  """Checks the release folder (names, sizes, modification times: cheap) and compares it with the
  built dataset's record of the files it was built from; builds nothing. Raises ReleaseError for a
  missing folder, split, field folder or file."""
  b = builder(dataset, **kwargs)
  if kwargs.get("release_dir") is None:
    return Source(b, None, "up to date" if b.is_prepared() else "not built")
  return locate_release(b)


def locate_release(b: tfds.core.DatasetBuilder) -> Source:
  """`locate` for any builder of a release folder: one with `list_files()` -> ReleaseFiles."""
  listing = b.list_files()
  if not b.is_prepared():
    return Source(b, listing, "not built")
  recorded = _read_provenance(b)
  if recorded is None:
    return Source(b, listing, "out of date: no record of the files it was built from",
                  ["no record of the files it was built from"])
  if recorded.get("fingerprint") == listing.fingerprint:
    return Source(b, listing, "up to date")
  changes = listing.changes(recorded.get("files", {}))
  return Source(b, listing, f"out of date: {len(changes)} file(s) changed since it was built",
                changes)


def _read_provenance(b) -> dict | None:
  try:
    return json.loads((pathlib.Path(b.data_dir) / PROVENANCE).read_text())
  except (OSError, json.JSONDecodeError):
    return None


@contextlib.contextmanager
def _build_lock(b):
  """Holds an OS lock on the dataset's config while it is checked and built, so that two runs
  starting together build it once (the second waits, then finds it built)."""
  config_dir = pathlib.Path(b.data_dir).parent
  config_dir.parent.mkdir(parents=True, exist_ok=True)
  with open(config_dir.parent / f"{config_dir.name}.lock", "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(dataset: str, say=print, **kwargs) -> tfds.core.DatasetBuilder:
  """`builder(...)`, built if it is not, or rebuilt if its release's files changed since the build
  (see `builder` for the arguments). `say` reports what is built, from where and into where."""
  if kwargs.get("release_dir") is not None:
    return prepare_release(lambda: builder(dataset, **kwargs), f"the {dataset} release", say)
  tfds.display_progress_bar(False)  # our own bar counts examples; TFDS' counts shards and bytes
  b = builder(dataset, **kwargs)
  with _build_lock(b):
    if not b.is_prepared():  # checked under the lock: another run may have built it
      say(f"Building the synthetic {b.builder_config.variant} scenes {b.builder_config.name} into "
          f"{b.data_dir} (once)")
      _download_and_prepare(b)
  return b


def prepare_release(make, what: str, say=print,
                    once: str = "once per release folder and resolution"
                    ) -> tfds.core.DatasetBuilder:
  """The builder `make()` of a release folder (one with `list_files()`), built if it is not, or
  rebuilt if the folder's files changed since the build; the files it was built from recorded in
  the built dataset (PROVENANCE). `what` names the data and `once` how often it is built, in what
  `say` reports."""
  tfds.display_progress_bar(False)  # our own bar counts examples; TFDS' counts shards and bytes
  with _build_lock(make()):
    source = locate_release(make())  # checked under the lock: another run may have built it
    if source.status == "up to date":
      return source.builder
    b, listing = source.builder, source.listing
    if source.changes:
      shown = "\n  ".join(source.changes[:5])
      more = f"\n  ... and {len(source.changes) - 5} more" if len(source.changes) > 5 else ""
      say(f"The built dataset {b.data_dir} is out of date, rebuilding it:\n  {shown}{more}")
      shutil.rmtree(b.data_dir)
      b = make()
    say(f"Building {what} {listing.root} ({listing.counts_text} examples) into {b.data_dir} "
        f"({once}; again if its files change)")
    _download_and_prepare(b)
    after = b.list_files()
    if after.fingerprint != listing.fingerprint:
      shutil.rmtree(b.data_dir)
      changes = after.changes({k: list(v) for k, v in listing.files.items()})
      raise release.ReleaseError(f"{listing.root} changed while it was being built ("
                                 f"{'; '.join(changes[:3])}); nothing was kept: run again")
    record = {"release_dir": str(listing.root), "fingerprint": listing.fingerprint,
              "counts": listing.counts, "files": listing.files}
    rundir.write_text_atomically(pathlib.Path(b.data_dir) / PROVENANCE, json.dumps(record))
  return b
