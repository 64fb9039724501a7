"""What a task-weighting scheme is, and the registry of schemes by name.

A scheme is a small frozen dataclass with pure methods over explicit pytrees:

- `init() -> (params, state)`: trainable parameters (optimised with the network, e.g. the
  uncertainty log-variances) and non-trainable state (e.g. DWA's loss history); both are pytrees that
  live in the train state and are checkpointed with it.
- `total(losses, params, state) -> scalar`: the objective from the task losses `{task: scalar}`.
- `weights(params, state) -> {task: scalar}`: the current weight of each task (for logs).
- `observe(state, losses) -> state`: called every training step with the unweighted task losses.
- `end_epoch(state) -> state`: called once at the end of every training epoch.

Adding a scheme means adding one module to this package that defines a class with the `register`
decorator; the package imports every module in it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from mtan_jax import schema
from mtan_jax import tasks as tasks_lib

Losses = dict[str, Any]
REGISTRY: dict[str, Callable[..., "Weighting"]] = {}


def register(name: str):
  """Class decorator: makes the scheme available as `build(name, ...)`."""
  def wrap(cls):
    if name in REGISTRY:
      raise ValueError(f"weighting {name!r} registered twice")
    REGISTRY[name] = cls
    cls.name = name
    return cls
  return wrap


@dataclasses.dataclass(frozen=True)
class Weighting:
  """Base class: equal weights, no parameters, no state. Subclasses override what they need."""

  tasks: tuple[tasks_lib.Task, ...]
  name = "base"

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.tasks)

  def init(self) -> tuple[dict, dict]:
    return {}, {}

  def weights(self, params: dict, state: dict) -> dict[str, Any]:
    return {name: jnp.float32(1.0) for name in self.task_names}

  def total(self, losses: Losses, params: dict, state: dict):
    weights = self.weights(params, state)
    return sum(weights[name] * losses[name] for name in self.task_names)

  def observe(self, state: dict, losses: Losses) -> dict:
    return state

  def end_epoch(self, state: dict) -> dict:
    return state


def options(name: str) -> list[schema.Option]:
  """The options scheme `name` declares (its dataclass fields with a schema, e.g. DWA's
  temperature); each is a flag of the experiment scripts."""
  return schema.options(REGISTRY[name])


def option_problems(name: str, values: dict[str, Any]) -> list[str]:
  """What is wrong with `values` as the options of scheme `name` (unknown ones, failed checks)."""
  known = {o.name: o for o in options(name)}
  problems = [f"--{key}: not an option of the {name} weighting (its options: "
              f"{', '.join(sorted(known)) or 'none'})" for key in sorted(set(values) - set(known))]
  for key, value in values.items():
    o = known.get(key)
    if o is not None and o.check is not None and not o.check[0](value):
      problems.append(f"--{key}: expected {o.check[1]}, found {value!r}")
  return problems


def build(name: str, tasks: tuple[tasks_lib.Task, ...], **values) -> Weighting:
  """The scheme `name` for `tasks`; `values` are its options (e.g. temperature for DWA). Unknown
  options are refused (ValueError naming them)."""
  if name not in REGISTRY:
    raise ValueError(f"weighting: expected one of {tuple(sorted(REGISTRY))}, found {name!r}")
  problems = option_problems(name, values)
  if problems:
    raise ValueError("; ".join(problems))
  return REGISTRY[name](tuple(tasks), **values)
