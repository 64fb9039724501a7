"""The input pipeline: task-keyed examples, split carving, shuffling by epoch, augmentation, device
batches, multi-host shards and background workers.

    config = DataConfig(dataset="nyuv2")                      # synthetic scenes: no release_dir
    train = Loader(open_split(config, "train", tasks), global_batch_size=8, shuffle=True, ...)
    for batch in train.epoch(epoch):                           # [devices, per-device batch, ...]
      ...

Examples are dicts keyed like the model outputs: "image" `[H, W, 3]` float32, "segmentation"
`[H, W]` int32 (-1 = unlabelled), "depth" `[H, W, 1]` float32 (0 = invalid), "normal" `[H, W, 3]`
float32 (0 = invalid). The last evaluation batch is padded with examples whose every target is
invalid, so they add nothing to a loss or metric sum and every example counts exactly once.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import pathlib
from typing import Callable, Iterator, Sequence

import numpy as np

from mtan_jax import datasets as datasets_lib
from mtan_jax import task_kinds
from mtan_jax import tasks as tasks_lib
from mtan_jax.data import augment as augment_lib
from mtan_jax.data import builders
from mtan_jax.data import memory
from mtan_jax.schema import option

SPLITS = ("train", "validation", "test")


def parse_resolution(text: str) -> tuple[int, int]:
  """"288x384" -> (288, 384)."""
  try:
    height, width = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"expected HEIGHTxWIDTH such as 288x384, found {text!r}") from None
  return height, width


def parse_pair(text: str) -> tuple[int, int]:
  """"795,654" -> (795, 654)."""
  try:
    a, b = (int(v) for v in text.split(","))
  except ValueError:
    raise ValueError(f"expected two integers such as 795,654, found {text!r}") from None
  return a, b


def _resolution_ok(value) -> bool:
  return value is None or (len(value) == 2 and all(
      isinstance(v, int) and v > 0 and v % 32 == 0 for v in value))


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the data comes from and how it is split and augmented (each field's schema: `option`)."""

  dataset: str = option("nyuv2", "the dataset (set by the experiment script)", defines_run=True,
                        flag=False, choices=datasets_lib.NAMES)
  release_dir: str | None = option(
      None, "release folder; none: the built-in synthetic scenes (quick preset)",
      defines_run=True, flag="data_dir")
  tfds_dir: str | None = option(None, "where built datasets are kept; none: ~/tensorflow_datasets")
  resolution: tuple[int, int] | None = option(
      None, "HEIGHTxWIDTH (none: 288x384 for NYUv2, 128x256 for CityScapes; synthetic: any "
      "multiple of 32)", defines_run=True, parse=parse_resolution,
      show=lambda v: f"{v[0]}x{v[1]}",
      check=(_resolution_ok, "HEIGHTxWIDTH, both positive multiples of 32 (five 2x2 poolings)"))
  num_classes: int | None = option(None, "segmentation classes: CityScapes 7 or 19 (none: the "
                                   "dataset's first)", defines_run=True)
  synthetic_size: tuple[int, int] = option(
      (795, 654), "synthetic train,test example counts", defines_run=True, parse=parse_pair,
      check=(lambda v: min(v) >= 1, "at least one train and one test example"))
  synthetic_seed: int = option(0, "which synthetic scenes", defines_run=True)
  validation_fraction: float = option(
      0.0, "share of train held out for validation", defines_run=True,
      check=(lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)"))
  validation_seed: int = option(0, "which examples are held out (independent of --seed)",
                                defines_run=True)
  augment: bool = option(False, "random scale-crop and flip (the reference's), on train only",
                         defines_run=True)


class DataError(ValueError):
  """A record that cannot be read, or that holds values no release can hold (NaN, labels out of
  range), found while training or evaluating; the message names the file and the record."""


class TaskSource:
  """Random access to one split as task-keyed examples (a sequence; `len`, `[i]`).

  Every record is checked as it is read: an unreadable record (a damaged or truncated shard) or a
  non-finite image, depth or normal, or a label outside [-1, classes), raises `DataError` naming the
  shard file, the record, the field and the example it was built from, before it reaches a batch.

  Args:
    source: a TFDS data source of a builder in `builders`.
    positions: which records of `source` form the split.
    tasks: the tasks whose targets to return.
    label_field: the release field holding the segmentation labels (label, label_7, label_19).
    shards: (file, record count) of the source's files in order, to name the file of a record.
    num_classes: labels must lie in [-1, num_classes).
    origin: where the example with record field "index" came from, with `{index}` in it, e.g.
      "/data/nyuv2/train/*/{index}.npy".
  """

  def __init__(self, source, positions: np.ndarray, tasks: Sequence[tasks_lib.Task],
               label_field: str, shards: Sequence[tuple[str, int]] = (),
               num_classes: int | None = None, origin: str = "example {index}"):
    self.source, self.positions = source, np.asarray(positions)
    self.tasks, self.label_field = tuple(tasks), label_field
    self.shards, self.num_classes, self.origin = tuple(shards), num_classes, origin

  def __len__(self) -> int:
    return len(self.positions)

  def shard_of(self, record: int) -> tuple[str | None, int]:
    """The file holding the source's record `record` and its position there."""
    first = 0
    for path, count in self.shards:
      if record < first + count:
        return path, record - first
      first += count
    return None, record

  def where(self, record: int) -> str:
    """'record K of FILE' for the source's record `record`."""
    path, k = self.shard_of(record)
    return f"record {k} of {path or 'the split'}"

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    k = int(self.positions[i])
    try:
      record = self.source[k]
    except Exception as error:  # the reader's own errors (riegeli hash mismatch, short file...)
      path, _ = self.shard_of(k)
      folder = pathlib.Path(path).parent if path else "its folder"
      raise DataError(f"{self.where(k)} cannot be read ({type(error).__name__}: {error}); the "
                      f"built dataset is damaged: delete {folder} to rebuild it") from error
    example = {"image": np.asarray(record["image"], np.float32)}
    for task in self.tasks:
      if task.kind.labels:
        example[task.name] = np.asarray(record[self.label_field], np.int32)
      else:
        example[task.name] = np.asarray(record[task.name], np.float32)
    self._check(example, k, record.get("index"))
    return example

  def _check(self, example: dict[str, np.ndarray], k: int, index) -> None:
    for name, array in example.items():
      if name in task_kinds.KINDS and task_kinds.KINDS[name].labels:
        low, high = int(array.min()), int(array.max())
        if low < -1 or (self.num_classes is not None and high >= self.num_classes):
          found = low if low < -1 else high
          problem = (f"labels in [-1, {self.num_classes}) expected, found {found}")
        else:
          continue
      else:
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if not bad:
          continue
        problem = f"finite values expected, found {bad} NaN or inf"
      made_from = (f" (built from {self.origin.format(index=int(index))})"
                   if index is not None else "")
      raise DataError(f"{self.where(k)}{made_from}, field {name!r}: {problem}")


def _builder_args(config: DataConfig) -> dict:
  return dict(data_dir=config.tfds_dir, release_dir=config.release_dir,
              resolution=config.resolution, synthetic_size=config.synthetic_size,
              seed=config.synthetic_seed)


def locate(config: DataConfig) -> builders.Source:
  """The configured dataset as a run will read it, checked (a release folder's files are listed:
  cheap) but not built: which built dataset, from where, and whether it is up to date."""
  return builders.locate(config.dataset, **_builder_args(config))


def open_split(config: DataConfig, split: str, tasks: Sequence[tasks_lib.Task],
               prepare: bool = True, progress: bool = True) -> TaskSource:
  """One split ("train", "validation" or "test") of the configured dataset, built if needed.

  "validation" is `config.validation_fraction` of the release's train split, chosen by
  `config.validation_seed`; "train" is then the rest. "test" is the release's val folder.
  """
  if split not in SPLITS:
    raise ValueError(f"split: expected one of {SPLITS}, found {split!r}")
  if not 0.0 <= config.validation_fraction < 1.0:
    raise ValueError(f"validation_fraction: expected a number in [0, 1), found "
                     f"{config.validation_fraction}")
  kwargs = dict(_builder_args(config), progress=progress)
  b = builders.prepare(config.dataset, **kwargs) if prepare else builders.builder(
      config.dataset, **kwargs)
  source = b.as_data_source()["test" if split == "test" else "train"]
  positions = np.arange(len(source))
  if split != "test" and config.validation_fraction > 0:
    order = np.random.default_rng([7, config.validation_seed]).permutation(len(source))
    held_out = int(round(config.validation_fraction * len(source)))
    positions = np.sort(order[:held_out] if split == "validation" else order[held_out:])
    if len(positions) == 0:
      raise ValueError(f"validation_fraction {config.validation_fraction} of {len(source)} "
                       f"examples leaves split {split!r} empty")
  spec = datasets_lib.get(config.dataset)
  classes = config.num_classes or spec.default_classes
  label_field = spec.label_field(classes)
  info = b.info.splits["test" if split == "test" else "train"]
  shards = list(zip((str(p) for p in info.filepaths), info.shard_lengths))
  folder = builders.TFDS_SPLITS["test" if split == "test" else "train"]
  origin = ("synthetic scene {index}" if config.release_dir is None else
            b.example_origin(folder))
  return TaskSource(source, positions, tasks, label_field, shards, classes, origin)


def _zeros_like(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A padding example: zero image, every target invalid (-1 labels, 0 depth and normals)."""
  return {k: (task_kinds.KINDS[k].padding(v) if k in task_kinds.KINDS else np.zeros_like(v))
          for k, v in example.items()}


class Loader:
  """Batches of one split for `local_devices` devices of process `process_index`.

  Every process computes the same order for an epoch (from `seed` and the epoch number) and reads
  only its own contiguous share of each global batch. Augmentation draws from (seed, epoch, position
  in the epoch), so results do not depend on worker scheduling or on the number of processes.

  Args:
    source: the split (`open_split`).
    global_batch_size: examples per step over all processes and devices.
    local_devices: devices of this process; batches are `[local_devices, per-device batch, ...]`.
    shuffle: a new order every epoch (training); else the split's order (evaluation).
    seed: shuffling and augmentation seed.
    augment: apply `augment.random_scale_crop_flip`.
    drop_remainder: drop the last partial global batch (training: every step has the same batch
      statistics, as the reference's is not: it keeps a last batch of 1 on NYUv2's 795 examples);
      else pad it with examples whose every target is invalid (evaluation: they add nothing to a
      loss or metric sum, so every example counts once).
    keep_remainder: with `drop_remainder` False, the last global batch is the remainder itself, not
      padded, cut to a multiple of the devices of every process (training as PyTorch's DataLoader
      without drop_last: a smaller last batch; with one device nothing is cut). A remainder smaller
      than the device count gives no batch.
    depth_power: 1 (metric depth) or -1 (inverse depth) for the augmentation's depth scaling.
    process_index, process_count: this process and how many read the split.
    workers: background threads that read and augment examples (the record reader and numpy release
      the GIL for most of the work); 0 reads in the caller.
    prefetch: batches prepared ahead.
    transform: applied to every example after `augment` with a generator of its own (drawn from
      seed, epoch and position as the augmentation's): the Decathlon's crops, flips and
      normalisation.
  """

  def __init__(self, source: Sequence[dict[str, np.ndarray]], *, global_batch_size: int,
               local_devices: int = 1, shuffle: bool = False, seed: int = 0, augment: bool = False,
               drop_remainder: bool = False, keep_remainder: bool = False,
               depth_power: int = 1, process_index: int = 0,
               process_count: int = 1, workers: int = 8, prefetch: int = 4,
               transform: Callable[[dict, np.random.Generator], dict] | None = None):
    shards = local_devices * process_count
    if global_batch_size < 1 or global_batch_size % shards:
      raise ValueError(f"global_batch_size: expected a positive multiple of the {shards} devices "
                       f"({process_count} process(es) x {local_devices}), found {global_batch_size}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} out of range for {process_count} processes")
    if drop_remainder and len(source) < global_batch_size:
      raise ValueError(f"split of {len(source)} examples is smaller than one global batch of "
                       f"{global_batch_size}")
    self.source, self.global_batch_size = source, global_batch_size
    self.local_devices, self.shuffle, self.seed = local_devices, shuffle, seed
    self.augment, self.drop_remainder, self.depth_power = augment, drop_remainder, depth_power
    self.keep_remainder = keep_remainder and not drop_remainder
    self.shards = shards
    self.process_index, self.process_count = process_index, process_count
    self.workers, self.prefetch = workers, max(prefetch, 1)
    self.transform = transform
    self.local_batch_size = global_batch_size // process_count
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self._orders: dict[int, np.ndarray] = {}
    memory.keep_freed_memory()

  def close(self) -> None:
    """Stops the background workers (they are started again when needed)."""
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self.workers)
    return self._pool

  def __len__(self) -> int:
    """Batches per epoch."""
    n, g = len(self.source), self.global_batch_size
    if self.keep_remainder:
      return n // g + (n % g >= self.shards)
    return n // g if self.drop_remainder else -(-n // g)

  def batch_size(self, step: int) -> int:
    """The global batch size of batch `step` (smaller only for a kept remainder)."""
    rest = len(self.source) - step * self.global_batch_size
    if self.keep_remainder and rest < self.global_batch_size:
      return rest - rest % self.shards
    return self.global_batch_size

  def order(self, epoch: int) -> np.ndarray:
    """The split's example order in `epoch` (the same on every process)."""
    n = len(self.source)
    if not self.shuffle:
      return np.arange(n)
    return np.random.default_rng([self.seed, epoch]).permutation(n)

  def _local_positions(self, step: int) -> list[int]:
    """Epoch positions of this process's share of global batch `step` (>= len: padding)."""
    local = self.batch_size(step) // self.process_count
    first = step * self.global_batch_size + self.process_index * local
    return list(range(first, first + local))

  def _cached_order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      self._orders = {epoch: self.order(epoch)}
    return self._orders[epoch]

  def _example(self, epoch: int, position: int):
    order = self._cached_order(epoch)
    if position >= len(order):
      return None
    example = self.source[int(order[position])]
    if self.augment:
      rng = np.random.default_rng([self.seed, epoch, position, 1])
      example = augment_lib.random_scale_crop_flip(example, rng, self.depth_power)
    if self.transform is not None:
      example = self.transform(example, np.random.default_rng([self.seed, epoch, position, 2]))
    return example

  def _assemble(self, examples: list, epoch: int) -> dict[str, np.ndarray]:
    """The batch `[local devices, B, ...]` of `examples`, None ones as padding; a share that is
    all padding (the last evaluation batch of a process past the split's end) is shaped like the
    split's first example."""
    template = next((e for e in examples if e is not None), None)
    if template is None:
      template = self._example(epoch, 0)
    examples = [e if e is not None else _zeros_like(template) for e in examples]
    shape = (self.local_devices, len(examples) // self.local_devices)
    batch = {k: np.stack([e[k] for e in examples]).reshape(shape + template[k].shape)
             for k in template}
    return batch

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The batches of `epoch`, from step `start_step` on (to resume mid-epoch)."""
    self._cached_order(epoch)  # once here, before the worker threads read it
    steps = range(start_step, len(self))
    if self.workers <= 0:
      for step in steps:
        yield self._assemble([self._example(epoch, p) for p in self._local_positions(step)],
                             epoch)
      return
    pool = self._executor()
    pending = collections.deque()
    try:
      for step in steps:
        pending.append([pool.submit(self._example, epoch, p)
                        for p in self._local_positions(step)])
        if len(pending) >= self.prefetch:
          yield self._assemble([f.result() for f in pending.popleft()], epoch)
      while pending:
        yield self._assemble([f.result() for f in pending.popleft()], epoch)
    finally:  # an abandoned epoch: drop the work queued for it
      for futures in pending:
        for f in futures:
          f.cancel()
