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


def build(name: str, tasks: tuple[tasks_lib.Task, ...], **options) -> Weighting:
  """The scheme `name` for `tasks`; `options` are its fields (e.g. temperature for DWA)."""
  if name not in REGISTRY:
    raise ValueError(f"weighting: expected one of {tuple(sorted(REGISTRY))}, found {name!r}")
  cls = REGISTRY[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  return cls(tuple(tasks), **{k: v for k, v in options.items() if k in fields})
