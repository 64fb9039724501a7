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
import sys
import types
import typing

from mtan_jax import datasets as datasets_lib
from mtan_jax import huge_pages
from mtan_jax import schema
from mtan_jax import weighting as weighting_lib
from mtan_jax import xla_cpu
from mtan_jax.config import TrainConfig
from mtan_jax.data.pipeline import DataConfig

# The quick preset for synthetic data: what differs from the reference recipe.
QUICK_PRESET = {"data.resolution": (96, 128), "data.synthetic_size": (240, 64), "width_mult": 0.125,
                "epochs": 12, "batch_size": 8, "lr": 1e-3, "lr_halve_epoch": 9}


def _bool(text: str) -> bool:
  if text.lower() in ("1", "true", "yes", "on"):
    return True
  if text.lower() in ("0", "false", "no", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, found {text!r}")


def _text_parser(o: schema.Option):
  """How a flag's text becomes the option's value: its own parser, or from its type."""
  if o.parse is not None:
    def parse(text):
      try:
        return o.parse(text)
      except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return parse
  kind = o.type
  if typing.get_origin(kind) in (typing.Union, types.UnionType):
    kind = next(a for a in typing.get_args(kind) if a is not type(None))
  return _bool if kind is bool else kind


def _shown(o: schema.Option, value) -> str:
  if value is None:
    return "none"
  if o.show is not None:
    return o.show(value)
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value)
  return str(value)


# Defaults the scripts derive from other flags, as --help says them.
DERIVED_DEFAULTS = {"workdir": "runs/<dataset>[_synthetic]_<model>_<weighting>_seed<seed>"}


def add_flag(p: argparse.ArgumentParser, o: schema.Option, preset: dict, note: str = "") -> None:
  """`--flag` for option `o`, its help naming the default and the quick preset's value."""
  parse = _text_parser(o)
  default = f"default {DERIVED_DEFAULTS.get(o.path) or _shown(o, o.default)}"
  if o.path in preset:
    default += f"; quick preset {_shown(o, preset[o.path])}"
  kwargs = dict(default=None, type=parse, help=f"{o.help}{note} ({default})")
  if parse is _bool:
    kwargs.update(nargs="?", const=True, metavar="BOOL")
  if o.choices is not None:
    kwargs["choices"] = o.choices
  p.add_argument(f"--{o.flag}", **kwargs)


def add_schema_flags(p: argparse.ArgumentParser, config_cls, preset: dict) -> None:
  """A flag for every schema field of `config_cls` (nested configs too) that has one."""
  for o in schema.options(config_cls):
    if o.flag is not None:
      add_flag(p, o, preset)


def by_flag(config_cls, args: argparse.Namespace) -> dict:
  """{field path: value} of the schema flags given on the command line."""
  flags = {o.flag: o.path for o in schema.options(config_cls) if o.flag is not None}
  return {flags[k]: v for k, v in vars(args).items() if v is not None and k in flags}


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
  add_schema_flags(p, config_cls, QUICK_PRESET)
  for o, schemes in scheme_options().values():
    add_flag(p, o, QUICK_PRESET, f"; --weighting={' or '.join(schemes)}")
  return p


def parse(argv: list[str] | None, dataset: str,
          config_cls=TrainConfig) -> tuple[TrainConfig, argparse.Namespace]:
  """The config the flags describe (of class `config_cls`), and the parsed flags."""
  args = parser(dataset, config_cls).parse_args(argv)
  given = {k: v for k, v in vars(args).items() if v is not None}
  synthetic = args.data_dir is None
  values: dict = {**(QUICK_PRESET if synthetic else {}), "data.dataset": dataset}
  values.update(by_flag(config_cls, args))
  values["data.release_dir"] = absolute_folder(values.get("data.release_dir"))
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


def absolute_folder(path: str | None) -> str | None:
  """A folder given on the command line as an absolute path: the run's record names it whatever
  the working directory (None stays None)."""
  return None if path is None else str(pathlib.Path(path).expanduser().resolve())


def enable_compilation_cache(folder: str | None) -> None:
  """Keeps compiled XLA programs on disk so that reruns and resumes skip compilation."""
  import jax  # pylint: disable=import-outside-toplevel
  if folder is None:
    folder = os.path.join(os.path.expanduser("~"), ".cache", "mtan_jax", "xla")
  if folder:
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str] | None, dataset: str) -> dict:
  """Parses the flags, checks the config and the data, says what it trains on, and runs; every
  error a user can cause is one message (`harness.exits_on_user_errors`)."""
  xla_cpu.configure()  # before JAX starts
  # pylint: disable=import-outside-toplevel
  from mtan_jax import harness, train
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
    enable_compilation_cache(config.compilation_cache)
    result = train.run(config)
    draw_curves(config.workdir)
    return result


def draw_curves(workdir) -> None:
  """The run's curves into `workdir/curves.png` (process 0); a run that cannot be drawn (no
  matplotlib, say) is complete all the same, so a failure is a warning."""
  import jax  # pylint: disable=import-outside-toplevel
  from mtan_jax import plot  # pylint: disable=import-outside-toplevel
  if jax.process_index() != 0:
    return
  output = pathlib.Path(workdir) / "curves.png"
  try:
    print(f"Curves: {plot.curves([workdir], output)}", flush=True)
  except Exception as error:  # pylint: disable=broad-except
    print(f"warning: could not draw {output}: {type(error).__name__}: {error}", flush=True)


def train_nyuv2() -> None:
  """The console script `mtan-train-nyuv2` (as experiments/nyuv2.py)."""
  huge_pages.restart_with_huge_pages()
  main(sys.argv[1:], "nyuv2")


def train_cityscapes() -> None:
  """The console script `mtan-train-cityscapes` (as experiments/cityscapes.py)."""
  huge_pages.restart_with_huge_pages()
  main(sys.argv[1:], "cityscapes")
