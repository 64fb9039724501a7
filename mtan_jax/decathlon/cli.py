"""`python experiments/decathlon.py`: flags from `DecathlonConfig`'s schema, the data, the run.

Every error a user can cause is one line on stderr (exit status 1), as the dense scripts."""

from __future__ import annotations

import argparse

from mtan_jax import flags
from mtan_jax import huge_pages
from mtan_jax import xla_cpu
from mtan_jax.decathlon.config import QUICK_PRESET, DecathlonConfig


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description="Train the MTAN on the Visual Decathlon (WRN-28-4, ten classification tasks). "
      "Without --data_dir: the built-in synthetic stand-in with the quick preset, which any flag "
      "overrides; with it (the release's decathlon-1.0-data folder): the reference's recipe.")
  flags.add_schema_flags(p, DecathlonConfig, QUICK_PRESET,
                         {"workdir": "runs/decathlon[_synthetic]_seed<seed>"})
  return p


def parse(argv: list[str] | None) -> DecathlonConfig:
  given = flags.by_flag(DecathlonConfig, parser().parse_args(argv))
  synthetic = given.get("release_dir") is None
  values = {**(QUICK_PRESET if synthetic else {}), **given}
  for folder in ("release_dir", "annotations_dir"):
    values[folder] = flags.absolute_folder(values.get(folder))
  values.setdefault("workdir", f"runs/decathlon{'_synthetic' if synthetic else ''}_seed"
                               f"{values.get('seed', 0)}")
  return DecathlonConfig(**values)


def main(argv: list[str] | None = None) -> dict:
  """Parses, checks, says what it trains on, runs; every error a user can cause is one message
  (`harness.exits_on_user_errors`)."""
  xla_cpu.configure()  # before JAX starts
  # pylint: disable=import-outside-toplevel
  from mtan_jax import harness
  from mtan_jax.decathlon import data as data_lib
  from mtan_jax.decathlon import results, train
  with harness.exits_on_user_errors((results.ResultsError,)):
    config = parse(argv)
    config.validate()
    if config.release_dir is None:
      tasks = data_lib.synthetic(seed=config.seed)
      print(f"Training on the built-in synthetic stand-in of the Decathlon (ten tasks, "
            f"{data_lib.SYNTHETIC_SIZE}x{data_lib.SYNTHETIC_SIZE}, quick preset: WRN-"
            f"{config.depth}-{config.widen_factor}, {config.epochs} epochs) into "
            f"{config.workdir}; pass --data_dir=decathlon-1.0-data for the real datasets.",
            flush=True)
    else:
      tasks = data_lib.release_tasks(config.release_dir, data_dir=config.tfds_dir,
                                     progress=config.progress)
      print(f"Training on the Decathlon release {config.release_dir} (WRN-{config.depth}-"
            f"{config.widen_factor}, {config.epochs} epochs) into {config.workdir}.", flush=True)
    flags.enable_compilation_cache(config.compilation_cache)
    summary = train.run(config, tasks)
    flags.draw_curves(config.workdir)
    _say_summary(summary, config)
    return summary


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
