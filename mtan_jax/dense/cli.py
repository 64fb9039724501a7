"""The dense experiment scripts' flags (NYUv2, CityScapes): `--name=value` -> a TrainConfig.

Without `--data_dir` the scripts train on the built-in synthetic scenes with a quick preset (reduced
resolution, width and epochs) that finishes in minutes on a CPU; any flag given explicitly overrides
the preset. With `--data_dir` (a release folder) the defaults are the reference recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

from mtan_jax import datasets as datasets_lib
from mtan_jax import flags
from mtan_jax import huge_pages
from mtan_jax import schema
from mtan_jax import weighting as weighting_lib
from mtan_jax import xla_cpu
from mtan_jax.dense.config import TrainConfig
from mtan_jax.data.pipeline import DataConfig

# The quick preset for synthetic data: what differs from the reference recipe.
QUICK_PRESET = {"data.resolution": (96, 128), "data.synthetic_size": (240, 64), "width_mult": 0.125,
                "epochs": 12, "batch_size": 8, "lr": 1e-3, "lr_halve_epoch": 9}


# Defaults the scripts derive from other flags, as --help says them.
DERIVED_DEFAULTS = {"workdir": "runs/<dataset>[_synthetic]_<model>_<weighting>_seed<seed>"}


def scheme_options() -> dict[str, tuple[schema.Option, list[str]]]:
  """Every weighting scheme's options by flag: (the option, the schemes that declare it)."""
  out: dict[str, tuple[schema.Option, list[str]]] = {}
  for name in weighting_lib.NAMES:
    for o in weighting_lib.options(name):
      out.setdefault(o.flag, (o, []))[1].append(name)
  return out


def parser(dataset: str, config_cls=TrainConfig) -> argparse.ArgumentParser:
  """The experiment script's flags: one per schema field of `config_cls` (and its data config),
  one per option of a weighting scheme, and the compilation cache."""
  p = argparse.ArgumentParser(
      description=f"Train and evaluate on {dataset} (MTAN and its baselines). Without --data_dir: "
      f"the built-in synthetic scenes with the quick preset, which any flag overrides.")
  flags.add_schema_flags(p, config_cls, QUICK_PRESET, DERIVED_DEFAULTS)
  for o, schemes in scheme_options().values():
    flags.add_flag(p, o, QUICK_PRESET, f"; --weighting={' or '.join(schemes)}")
  return p


def parse(argv: list[str] | None, dataset: str,
          config_cls=TrainConfig) -> tuple[TrainConfig, argparse.Namespace]:
  """The config the flags describe (of class `config_cls`), and the parsed flags."""
  args = parser(dataset, config_cls).parse_args(argv)
  given = {k: v for k, v in vars(args).items() if v is not None}
  synthetic = args.data_dir is None
  values: dict = {**(QUICK_PRESET if synthetic else {}), "data.dataset": dataset}
  values.update(flags.by_flag(config_cls, args))
  values["data.release_dir"] = flags.absolute_folder(values.get("data.release_dir"))
  values.setdefault("workdir", str(pathlib.Path("runs") / (
      f"{dataset}{'_synthetic' if synthetic else ''}_{values.get('model', 'mtan')}_"
      f"{values.get('weighting', 'equal')}_seed{values.get('seed', 0)}")))
  weighting = values.get("weighting", "equal")
  chosen = {o.name: o.default for o in weighting_lib.options(weighting)}
  scheme_flags = scheme_options()
  chosen.update({k: v for k, v in given.items() if k in scheme_flags})
  values["weighting_options"] = chosen  # unknown ones are refused by validate(), naming them
  data = {k.removeprefix("data."): v for k, v in values.items() if k.startswith("data.")}
  train = {k: v for k, v in values.items()
           if k in {f.name for f in dataclasses.fields(config_cls)} and k != "data"}
  return config_cls(data=DataConfig(**data), **train), args


def main(argv: list[str] | None, dataset: str) -> dict:
  """Parses the flags, checks the config and the data, says what it trains on, and runs; every
  error a user can cause is one message (`harness.exits_on_user_errors`)."""
  xla_cpu.configure()  # before JAX starts
  # pylint: disable=import-outside-toplevel
  from mtan_jax import harness
  from mtan_jax.dense import train
  from mtan_jax.data import pipeline
  with harness.exits_on_user_errors():
    config, _ = parse(argv, dataset)
    config.validate()
    source = pipeline.locate(config.data)
    if config.data.release_dir is None:
      height, width = config.resolution
      kind = datasets_lib.get(dataset).synthetic_kind
      print(f"Training on the built-in synthetic scenes ({kind}, {height}x{width}, quick preset; "
            f"{source.describe()}); pass "
            f"--data_dir=RELEASE_FOLDER for the real {dataset} data.", flush=True)
    else:
      print(f"Training on the {dataset} {source.describe()}.", flush=True)
    flags.enable_compilation_cache(config.compilation_cache)
    result = train.run(config)
    flags.draw_curves(config.workdir)
    return result


def train_nyuv2() -> None:
  """The console script `mtan-train-nyuv2` (as experiments/nyuv2.py)."""
  huge_pages.restart_with_huge_pages()
  main(sys.argv[1:], "nyuv2")


def train_cityscapes() -> None:
  """The console script `mtan-train-cityscapes` (as experiments/cityscapes.py)."""
  huge_pages.restart_with_huge_pages()
  main(sys.argv[1:], "cityscapes")
