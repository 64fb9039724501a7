"""`python experiments/decathlon.py`: flags from `DecathlonConfig`'s schema, the data, the run.

Every error a user can cause is one line on stderr (exit status 1), as the dense scripts."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading

from mtan_jax import cli as dense_cli
from mtan_jax import huge_pages
from mtan_jax import schema
from mtan_jax import xla_cpu
from mtan_jax.decathlon.config import QUICK_PRESET, DecathlonConfig


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description="Train the MTAN on the Visual Decathlon (WRN-28-4, ten classification tasks). "
      "Without --data_dir: the built-in synthetic stand-in with the quick preset, which any flag "
      "overrides; with it (the release's decathlon-1.0-data folder): the reference's recipe.")
  for o in schema.options(DecathlonConfig):
    if o.flag is not None:
      dense_cli._add_flag(p, o, QUICK_PRESET)  # pylint: disable=protected-access
  p.add_argument("--compilation_cache", default=None,
                 help="persistent XLA compilation cache folder ('' to disable)")
  return p


def parse(argv: list[str] | None) -> tuple[DecathlonConfig, argparse.Namespace]:
  args = parser().parse_args(argv)
  given = {k: v for k, v in vars(args).items() if v is not None and k != "compilation_cache"}
  given = {("release_dir" if k == "data_dir" else "data_dir" if k == "tfds_dir" else k): v
           for k, v in given.items()}
  synthetic = given.get("release_dir") is None
  values = {**(QUICK_PRESET if synthetic else {}), **given}
  for folder in ("release_dir", "annotations_dir"):
    values[folder] = dense_cli.absolute_folder(values.get(folder))
  values.setdefault("workdir", f"runs/decathlon{'_synthetic' if synthetic else ''}_seed"
                               f"{values.get('seed', 0)}")
  names = {f.name for f in dataclasses.fields(DecathlonConfig)}
  return DecathlonConfig(**{k: v for k, v in values.items() if k in names}), args


def main(argv: list[str] | None = None) -> dict:
  """Parses, checks, says what it trains on, runs; user errors as one line, exit status 1."""
  xla_cpu.configure()  # before JAX starts
  # pylint: disable=import-outside-toplevel
  from mtan_jax import checkpoint, rundir
  from mtan_jax.data import DataError, ReleaseError
  from mtan_jax.decathlon import data as data_lib
  from mtan_jax.decathlon import results, train
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    config, args = parse(argv)
    config.validate()
    if config.release_dir is None:
      tasks = data_lib.synthetic(seed=config.seed)
      print(f"Training on the built-in synthetic stand-in of the Decathlon (ten tasks, "
            f"{data_lib.SYNTHETIC_SIZE}x{data_lib.SYNTHETIC_SIZE}, quick preset: WRN-"
            f"{config.depth}-{config.widen_factor}, {config.epochs} epochs) into "
            f"{config.workdir}; pass --data_dir=decathlon-1.0-data for the real datasets.",
            flush=True)
    else:
      tasks = data_lib.release_tasks(config.release_dir, data_dir=config.data_dir,
                                     progress=config.progress)
      print(f"Training on the Decathlon release {config.release_dir} (WRN-{config.depth}-"
            f"{config.widen_factor}, {config.epochs} epochs) into {config.workdir}.", flush=True)
    dense_cli.enable_compilation_cache(args.compilation_cache)
    summary = train.run(config, tasks)
    dense_cli.draw_curves(config.workdir)
    _say_summary(summary, config)
    return summary
  except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C); the run folder keeps its last checkpoint",
          file=sys.stderr, flush=True)
    raise SystemExit(130)
  except (ValueError, train.DecathlonRunError, rundir.RunFolderError, checkpoint.CheckpointError,
          DataError, ReleaseError, results.ResultsError, OSError) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _say_summary(summary: dict, config: DecathlonConfig) -> None:
  split = summary.get("accuracy_split")
  if split:
    accuracy = summary[split]
    print(f"{split.capitalize()} accuracy: " + ", ".join(
        f"{name} {v['accuracy']:.3f}" for name, v in accuracy.items())
        + f"; mean {summary['mean_accuracy']:.3f}"
        + (f"; Decathlon score {summary['score']:.0f}" if "score" in summary else ""), flush=True)
  if "test_predictions" in summary and not config.annotations_dir:
    print(f"Test predictions: {config.workdir}/{summary['test_predictions']} (with "
          f"--annotations_dir=decathlon-1.0/annotations also the server's results.json)",
          flush=True)


def command() -> None:
  """The console script `mtan-train-decathlon` (as experiments/decathlon.py)."""
  huge_pages.restart_with_huge_pages()
  main()
