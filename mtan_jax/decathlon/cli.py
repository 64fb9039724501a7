"""`python experiments/decathlon.py`: flags from `DecathlonConfig`'s schema, the data, the run.

Every error a user can cause is one line on stderr (exit status 1), as the dense scripts."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading

from mtan_jax import cli as dense_cli
from mtan_jax import schema
from mtan_jax.decathlon.config import QUICK_PRESET, DecathlonConfig


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description="Train the MTAN on the Visual Decathlon (WRN-28-4, ten classification tasks). "
      "It trains on the built-in synthetic stand-in with the quick preset, which any flag "
      "overrides.")
  for o in schema.options(DecathlonConfig):
    if o.flag is not None:
      dense_cli._add_flag(p, o, QUICK_PRESET)  # pylint: disable=protected-access
  p.add_argument("--compilation_cache", default=None,
                 help="persistent XLA compilation cache folder ('' to disable)")
  return p


def parse(argv: list[str] | None) -> tuple[DecathlonConfig, argparse.Namespace]:
  args = parser().parse_args(argv)
  given = {k: v for k, v in vars(args).items() if v is not None and k != "compilation_cache"}
  values = {**QUICK_PRESET, **given}  # the synthetic stand-in is the only data read so far
  values.setdefault("workdir", f"runs/decathlon_synthetic_seed{values.get('seed', 0)}")
  names = {f.name for f in dataclasses.fields(DecathlonConfig)}
  return DecathlonConfig(**{k: v for k, v in values.items() if k in names}), args


def main(argv: list[str] | None = None) -> dict:
  """Parses, checks, says what it trains on, runs; user errors as one line, exit status 1."""
  # pylint: disable=import-outside-toplevel
  from mtan_jax import checkpoint, rundir
  from mtan_jax.decathlon import data as data_lib
  from mtan_jax.decathlon import train
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    config, args = parse(argv)
    config.validate()
    tasks = data_lib.synthetic(seed=config.seed)
    print(f"Training on the built-in synthetic stand-in of the Decathlon (ten tasks, "
          f"{data_lib.SYNTHETIC_SIZE}x{data_lib.SYNTHETIC_SIZE}, quick preset: WRN-{config.depth}-"
          f"{config.widen_factor}, {config.epochs} epochs) into {config.workdir}.", flush=True)
    dense_cli.enable_compilation_cache(args.compilation_cache)
    summary = train.run(config, tasks)
    dense_cli.draw_curves(config.workdir)
    print("Test accuracy: " + ", ".join(f"{name} {v['accuracy']:.3f}"
                                        for name, v in summary["test"].items())
          + f"; mean {summary['mean_accuracy']:.3f}", flush=True)
    return summary
  except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C); the run folder keeps its last checkpoint",
          file=sys.stderr, flush=True)
    raise SystemExit(130)
  except (ValueError, train.DecathlonRunError, rundir.RunFolderError, checkpoint.CheckpointError,
          OSError) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def command() -> None:
  """The console script."""
  main()
