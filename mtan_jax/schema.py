"""One schema for configuration: each field says once what it is, and the rest is derived from it.

A field declared with `option(default, help, defines_run=..., ...)` carries its help text, whether
it defines the run, its flag (if any), choices, a parser for text and a check of its value. From
that metadata come the `--name=value` flags and `--help` (`cli`), the validation (`check`), the
resume check (`differences`) and the report's grouping of runs (`identity`). Adding a field to a
config dataclass (or to a weighting scheme, whose options become flags) is the only edit a new
option needs.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable

_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
  """A configuration value no run can use; the message names the flag, what was expected and what
  was found."""


def option(default: Any = _MISSING, help: str = "", *,  # pylint: disable=redefined-builtin
           defines_run: bool = False, flag: str | bool | None = None,
           choices: tuple | Callable[[], tuple] | None = None,
           parse: Callable[[str], Any] | None = None,
           check: tuple[Callable[[Any], bool], str] | None = None,
           show: Callable[[Any], str] | None = None,
           default_factory: Any = _MISSING) -> Any:
  """A dataclass field with its schema.

  Args:
    default, default_factory: as for `dataclasses.field`.
    help: one line for `--help`.
    defines_run: a resume with another value is refused, and runs with other values are other rows
      of the report; otherwise the value may change on resume (recorded) and runs differing only in
      it are repeats.
    flag: the flag's name when it is not the field's (`"data_dir"`), or False for no flag.
    choices: the allowed values (or a function returning them, for registries read late).
    parse: text -> value, for types that are not bool, int, float or str (e.g. "288x384").
    check: (predicate, what is expected) beyond choices, e.g. (positive, "a number > 0").
    show: value -> text as the flag takes it, for `--help` (e.g. (288, 384) -> "288x384").
  """
  metadata = {"schema": {"help": help, "defines_run": defines_run, "flag": flag,
                         "choices": choices, "parse": parse, "check": check, "show": show}}
  if default_factory is not _MISSING:
    return dataclasses.field(default_factory=default_factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Option:
  """One field of a config as the schema sees it."""

  path: str  # "lr", "data.resolution"
  name: str  # the field's own name
  type: Any  # the resolved annotation
  default: Any
  help: str
  defines_run: bool
  flag: str | None  # None: no flag
  choices: tuple | None
  parse: Callable[[str], Any] | None
  check: tuple[Callable[[Any], bool], str] | None
  show: Callable[[Any], str] | None


def _default(field: dataclasses.Field) -> Any:
  if field.default is not _MISSING:
    return field.default
  if field.default_factory is not _MISSING:  # type: ignore[misc]
    return field.default_factory()  # type: ignore[misc]
  return None


def options(cls, prefix: str = "") -> list[Option]:
  """The schema fields of dataclass `cls`, nested config dataclasses flattened
  ("data.resolution")."""
  hints = typing.get_type_hints(cls)
  out = []
  for field in dataclasses.fields(cls):
    kind = hints[field.name]
    if dataclasses.is_dataclass(kind):
      out += options(kind, f"{prefix}{field.name}.")
      continue
    schema = field.metadata.get("schema")
    if schema is None:
      continue
    flag = schema["flag"]
    flag = None if flag is False else (flag or field.name)
    choices = schema["choices"]
    out.append(Option(f"{prefix}{field.name}", field.name, kind, _default(field), schema["help"],
                      schema["defines_run"], flag, choices() if callable(choices) else choices,
                      schema["parse"], schema["check"], schema["show"]))
  return out


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """A config's `to_dict()` (or its JSON) as {"path": value}; mappings are flattened one level per
  dict ("weighting_options.temperature"), tuples become lists (as JSON has them)."""
  out = {}
  for key, value in values.items():
    if isinstance(value, dict):
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def defining_paths(cls) -> list[str]:
  """The paths of the fields that define a run."""
  return [o.path for o in options(cls) if o.defines_run]


def _defining(path: str, roots: tuple[str, ...]) -> bool:
  """Whether a flattened `path` belongs to a defining field (itself, or a key of its mapping)."""
  return path in roots or any(path.startswith(root + ".") for root in roots)


def identity(config) -> dict[str, Any]:
  """What defines a run: {path: value} of its defining fields (mappings flattened)."""
  roots = tuple(defining_paths(type(config)))
  return {k: v for k, v in flat(dataclasses.asdict(config)).items() if _defining(k, roots)}


def changed(saved: dict[str, Any], config, defining: bool = True) -> dict[str, tuple[Any, Any]]:
  """{path: (saved value, config's value)} of the fields that define the run (`defining=True`) or
  of the others, where a saved config (`to_dict` JSON) and `config` differ."""
  was, now = flat(saved), flat(dataclasses.asdict(config))
  roots = tuple(defining_paths(type(config)))
  out = {}
  for key in sorted(set(was) | set(now)):
    if _defining(key, roots) == defining and was.get(key) != now.get(key):
      out[key] = (was.get(key), now.get(key))
  return out


def differences(saved: dict[str, Any], config, source: str, defining: bool = True) -> list[str]:
  """`changed` as readable lines naming the saved config's `source`."""
  return [f"{key}: {source} {was!r}, now {now!r}"
          for key, (was, now) in changed(saved, config, defining).items()]


def validate(config) -> None:
  """Raises ConfigError with every problem `check` finds, one message."""
  problems = check(config)
  if problems:
    raise ConfigError("; ".join(problems))


# Fields that say how to start a run, not what it is: never recorded as changes on a resume.
START_FIELDS = ("resume", "overwrite", "compilation_cache")


def changes_on_resume(saved: dict[str, Any], config, source: str = "") -> dict[str, list[Any]]:
  """{path: [was, now]} of the fields that may change on a resume (not defining the run) and did,
  e.g. epochs or --remat: recorded in the run's log, while config.json keeps the first config."""
  del source
  return {k: list(v) for k, v in changed(saved, config, defining=False).items()
          if k not in START_FIELDS}


def check(config) -> list[str]:
  """What is wrong with `config`'s values, one line per field (named by its flag): the schema's
  choices and checks."""
  values = flat(dataclasses.asdict(config))
  problems = []
  for o in options(type(config)):
    value = values.get(o.path)
    name = f"--{o.flag or o.path}"
    if o.choices is not None and value not in o.choices:
      problems.append(f"{name}: expected one of {tuple(o.choices)}, found {value!r}")
    elif o.check is not None and not o.check[0](value):
      problems.append(f"{name}: expected {o.check[1]}, found {value!r}")
  return problems


# Checks shared by many fields.
def finite_positive(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
      value) and value > 0


def at_least(least: int) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= least,
          f"an integer >= {least}")
