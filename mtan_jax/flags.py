"""Flags from a config's schema, shared by the experiment scripts (flags only at this edge): every
schema field with a flag becomes `--name=value`, its help naming the default and the quick preset's
value; the given flags come back as {field path: value}. Also the scripts' common chores: folders
made absolute, the compilation cache, the run's curves."""

from __future__ import annotations

import argparse
import os
import pathlib
import types
import typing

from mtan_jax import schema


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


def add_flag(p: argparse.ArgumentParser, o: schema.Option, preset: dict, note: str = "",
             derived: dict | None = None) -> None:
  """`--flag` for option `o`, its help naming the default (`derived[path]` where the script derives
  it from other flags) and the quick preset's value."""
  parse = _text_parser(o)
  default = f"default {(derived or {}).get(o.path) or _shown(o, o.default)}"
  if o.path in preset:
    default += f"; quick preset {_shown(o, preset[o.path])}"
  kwargs = dict(default=None, type=parse, help=f"{o.help}{note} ({default})")
  if parse is _bool:
    kwargs.update(nargs="?", const=True, metavar="BOOL")
  if o.choices is not None:
    kwargs["choices"] = o.choices
  p.add_argument(f"--{o.flag}", **kwargs)


def add_schema_flags(p: argparse.ArgumentParser, config_cls, preset: dict,
                     derived: dict | None = None) -> None:
  """A flag for every schema field of `config_cls` (nested configs too) that has one."""
  for o in schema.options(config_cls):
    if o.flag is not None:
      add_flag(p, o, preset, derived=derived)


def by_flag(config_cls, args: argparse.Namespace) -> dict:
  """{field path: value} of the schema flags given on the command line."""
  flags = {o.flag: o.path for o in schema.options(config_cls) if o.flag is not None}
  return {flags[k]: v for k, v in vars(args).items() if v is not None and k in flags}


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
