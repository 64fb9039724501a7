"""Flags of the experiment scripts: `--name=value` -> a TrainConfig (flags only at this edge).

Without `--data_dir` the scripts train on the built-in synthetic scenes with a quick preset (reduced
resolution, width and epochs) that finishes in minutes on a CPU; any flag given explicitly overrides
the preset. With `--data_dir` (a release folder) the defaults are the reference recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import signal
import sys
import threading

from mtan_jax import metrics as metrics_lib
from mtan_jax import weighting as weighting_lib
from mtan_jax.config import TrainConfig
from mtan_jax.data.pipeline import DataConfig
from mtan_jax.models import MODEL_NAMES

# The quick preset for synthetic data: what differs from the reference recipe.
QUICK_PRESET = dict(resolution=(96, 128), synthetic_size=(240, 64), width_mult=0.125, epochs=12,
                    batch_size=8, lr=1e-3, lr_halve_epoch=9)


def _bool(text: str) -> bool:
  if text.lower() in ("1", "true", "yes", "on"):
    return True
  if text.lower() in ("0", "false", "no", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, found {text!r}")


def _resolution(text: str) -> tuple[int, int]:
  try:
    height, width = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 288x384, found {text!r}")
  return height, width


def _pair(text: str) -> tuple[int, int]:
  try:
    a, b = (int(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected two integers such as 795,654, found {text!r}")
  return a, b


def parser(dataset: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description=f"Train and evaluate on {dataset} (MTAN and its baselines).",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  flag = lambda name, **kw: p.add_argument(f"--{name}", default=None, **kw)  # noqa: E731
  flag("data_dir", help="release folder; none: the built-in synthetic scenes (quick preset)")
  flag("tfds_dir", help="where built datasets are kept (default ~/tensorflow_datasets)")
  flag("model", choices=MODEL_NAMES, help="architecture (default mtan)")
  flag("weighting", choices=weighting_lib.NAMES, help="task weighting (default equal)")
  flag("temperature", type=float, help="DWA temperature (default 2)")
  flag("tasks", help="comma-separated subset of the tasks (default: all of the dataset's)")
  flag("num_classes", type=int, help="CityScapes: 7 or 19 classes")
  flag("epochs", type=int)
  flag("batch_size", type=int, help="global batch size")
  flag("eval_batch_size", type=int)
  flag("lr", type=float)
  flag("lr_halve_epoch", type=int, help="halve the learning rate after this epoch (0: never)")
  flag("seed", type=int)
  flag("workdir", help="run folder (default runs/<dataset>_<model>_<weighting>_seed<seed>)")
  flag("resume", type=_bool, nargs="?", const=True, help="continue the run in --workdir")
  flag("overwrite", type=_bool, nargs="?", const=True,
       help="delete the run already in --workdir and start afresh")
  flag("augment", type=_bool, nargs="?", const=True, help="random scale-crop and flip")
  flag("dtype", choices=("float32", "bfloat16"), help="compute dtype")
  flag("remat", type=_bool, nargs="?", const=True,
       help="recompute all but convolution outputs in the backward pass: about half "
       "the memory, for large batches")
  flag("width_mult", type=float, help="network width multiplier")
  flag("steps_per_epoch", type=int, help="0: full epochs")
  flag("metrics", choices=metrics_lib.MODES, help="exact split sums or the reference's averages")
  flag("devices", type=int, help="local devices to use (0: all)")
  flag("multihost", type=_bool, nargs="?", const=True, help="call jax.distributed.initialize()")
  flag("resolution", type=_resolution, help="HEIGHTxWIDTH (synthetic: any multiple of 32)")
  flag("synthetic_size", type=_pair, help="synthetic train,test example counts")
  flag("validation_fraction", type=float, help="share of train held out for validation")
  flag("bn_statistics", choices=("global", "device"), help="BatchNorm statistics")
  flag("max_skipped_steps", type=int,
       help="consecutive non-finite (skipped) steps before the run stops (default 5)")
  flag("workers", type=int, help="input-pipeline threads")
  flag("keep_checkpoints", type=int)
  flag("progress", type=_bool, nargs="?", const=True, help="progress bar")
  flag("compilation_cache", help="persistent XLA compilation cache folder ('' to disable; "
       "default ~/.cache/mtan_jax/xla)")
  return p


def parse(argv: list[str] | None, dataset: str) -> tuple[TrainConfig, argparse.Namespace]:
  """The config the flags describe, and the parsed flags."""
  args = parser(dataset).parse_args(argv)
  given = {k: v for k, v in vars(args).items() if v is not None}
  synthetic = args.data_dir is None
  values: dict = dict(QUICK_PRESET) if synthetic else {}
  values.update(given)
  data_fields = {f.name for f in dataclasses.fields(DataConfig)}
  train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
  data = {k: v for k, v in values.items() if k in data_fields}
  # The folder as an absolute path: the run's record names it whatever the working directory.
  data["release_dir"] = (None if args.data_dir is None
                         else str(pathlib.Path(args.data_dir).expanduser().resolve()))
  data["data_dir"] = args.tfds_dir
  data["dataset"] = dataset
  config = {k: v for k, v in values.items() if k in train_fields and k != "data"}
  if "tasks" in config:
    config["tasks"] = tuple(t.strip() for t in config["tasks"].split(",") if t.strip())
  config["dataset"] = dataset
  config.setdefault("workdir", str(pathlib.Path("runs") / (
      f"{dataset}{'_synthetic' if synthetic else ''}_{config.get('model', 'mtan')}_"
      f"{config.get('weighting', 'equal')}_seed{config.get('seed', 0)}")))
  return TrainConfig(data=DataConfig(**data), **config), args


def enable_compilation_cache(folder: str | None) -> None:
  """Keeps compiled XLA programs on disk so that reruns and resumes skip compilation."""
  import jax  # pylint: disable=import-outside-toplevel
  if folder is None:
    folder = os.path.join(os.path.expanduser("~"), ".cache", "mtan_jax", "xla")
  if folder:
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str] | None, dataset: str) -> dict:
  """Parses the flags, checks the config and the data, says what it trains on, and runs.

  Every error a user can cause (a flag out of range, missing or damaged data, a run folder in use
  or not writable, a refused resume, a full disk, Ctrl-C before training) is said in one message
  on stderr, exit status 1 (130 for Ctrl-C); programming errors keep their traceback."""
  # pylint: disable=import-outside-toplevel
  from mtan_jax import checkpoint, rundir, train
  from mtan_jax.config import ConfigError
  from mtan_jax.data import DataError, ReleaseError, pipeline
  if threading.current_thread() is threading.main_thread():  # Ctrl-C as KeyboardInterrupt again
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    config, args = parse(argv, dataset)
    config.validate()
    source = pipeline.locate(dataclasses.replace(config.data, dataset=dataset))
    if config.data.release_dir is None:
      height, width = config.resolution
      kind = "indoor" if dataset == "nyuv2" else "street"
      print(f"Training on the built-in synthetic scenes ({kind}, {height}x{width}, quick preset; "
            f"{source.describe()}); pass "
            f"--data_dir=RELEASE_FOLDER for the real {dataset} data.", flush=True)
    else:
      print(f"Training on the {dataset} {source.describe()}.", flush=True)
    enable_compilation_cache(args.compilation_cache)
    return train.run(config)
  except train.RunInterrupted as stopped:
    print(stopped, flush=True)
    raise SystemExit(128 + stopped.signal_number)
  except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C) outside the training loop; nothing in progress was saved, "
          "the run folder keeps its last checkpoint", file=sys.stderr, flush=True)
    raise SystemExit(130)
  except (train.RunError, DataError, ReleaseError, ConfigError, rundir.RunFolderError,
          checkpoint.CheckpointError, OSError) as error:  # said plainly, without a traceback
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(1)
