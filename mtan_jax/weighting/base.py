"""What a task-weighting scheme is, and the registry of schemes by name.

A scheme is a small frozen dataclass with pure methods over explicit pytrees:

- `init() -> (params, state)`: trainable parameters (optimised with the network, e.g. the
  uncertainty log-variances) and non-trainable state (e.g. DWA's loss history); both are pytrees that
  live in the train state and are checkpointed with it.
- `total(losses, params, state) -> scalar`: the objective from the task losses `{task: scalar}`.
- `weights(params, state) -> {task: scalar}`: the current weight of each task (for logs).
- `observe(state, losses) -> state`: called every training step with the unweighted task losses.
- `end_epoch(state) -> state`: called once at the end of every training epoch.
- `after_update(state, before, after) -> state`: only for schemes with `needs_losses_after_update`
  (FAMO): the step's batch's task losses before and after the update.

Gradient-level schemes (`GradientWeighting`, `level = "gradient"`) see the task gradients instead of a
single objective: the train step differentiates the vector of task losses once forward and K times
backward (`jax.vjp`, one pullback per task), sums them over devices, and hands the scheme the
gradients of the shared parameters, stacked `[K, ...]` per leaf:

- `combine(grads, losses, params, state) -> Combined`: the update direction of the shared
  parameters, the weight of each task's gradient on its own task-specific parameters, the new state,
  and the gradient of the scheme's trainable parameters (GradNorm's weights).

Most of them only need the Gram matrix of those gradients (`GramWeighting.coefficients`).

Adding a scheme means adding one module to this package that defines a class with the `register`
decorator; the package imports every module in it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
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
  level = "loss"  # one backward pass of `total`; "gradient": `combine` sees the task gradients
  needs_losses_after_update = False  # True: `after_update` gets the batch's losses after the step

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.tasks)

  def init(self) -> tuple[dict, dict]:
    return {}, {}

  def stacked(self, losses: Losses) -> jax.Array:
    """The task losses `{task: scalar}` as a float32 vector `[K]` in the order of `tasks`."""
    return jnp.stack([jnp.asarray(losses[name], jnp.float32) for name in self.task_names])

  def init_for(self, shared_params) -> tuple[dict, dict]:
    """`init()` for schemes whose state is shaped like the model's shared parameters (DB-MTL's
    gradient buffer); `shared_params` is that pytree (arrays or ShapeDtypeStructs)."""
    return self.init()

  def weights(self, params: dict, state: dict) -> dict[str, Any]:
    return {name: jnp.float32(1.0) for name in self.task_names}

  def total(self, losses: Losses, params: dict, state: dict):
    weights = self.weights(params, state)
    return sum(weights[name] * losses[name] for name in self.task_names)

  def observe(self, state: dict, losses: Losses) -> dict:
    return state

  def end_epoch(self, state: dict) -> dict:
    return state

  def after_update(self, state: dict, before: Losses, after: Losses) -> dict:
    """With `needs_losses_after_update`: the state after a step, given the task losses of the
    step's batch before and after the update (one more forward pass)."""
    return state


@flax.struct.dataclass
class Combined:
  """What a gradient-level scheme makes of one step's task gradients.

  Attributes:
    shared: the update direction of the shared parameters (the pytree of the shared gradients,
      unstacked), handed to the optimizer as their gradient.
    task_weights: `[K]`: task k's task-specific parameters get task_weights[k] * g_k.
    state: the scheme's new state.
    params_grad: the gradient of the scheme's trainable parameters (a pytree like them).
  """

  shared: Any
  task_weights: jax.Array
  state: Any
  params_grad: Any


def epoch_sums(k: int) -> dict:
  """State for a mean over an epoch's steps of the task losses (DWA, GradNorm)."""
  return {"epoch_sum": jnp.zeros(k, jnp.float32), "epoch_steps": jnp.zeros((), jnp.int32)}


def add_to_epoch_sums(state: dict, losses: jax.Array) -> dict:
  """`state` with one step's task losses `[K]` added to its epoch sums."""
  return {**state, "epoch_sum": state["epoch_sum"] + losses,
          "epoch_steps": state["epoch_steps"] + 1}


def close_epoch_sums(state: dict) -> tuple[jax.Array, dict]:
  """(the epoch's mean task losses `[K]`, `state` with its epoch sums set back to zero)."""
  mean = state["epoch_sum"] / jnp.maximum(state["epoch_steps"], 1)
  return mean, {**state, **epoch_sums(mean.shape[0])}


def gram_matrix(grads) -> jax.Array:
  """G[i, j] = g_i . g_j over every leaf of `grads` (leaves stacked `[K, ...]`), float32 `[K, K]`."""
  leaves = [g.reshape(g.shape[0], -1).astype(jnp.float32) for g in jax.tree_util.tree_leaves(grads)]
  return sum(leaf @ leaf.T for leaf in leaves)


def combine_gradients(grads, coefficients: jax.Array):
  """sum_k c_k g_k per leaf of `grads` (leaves stacked `[K, ...]`)."""
  return jax.tree_util.tree_map(
      lambda g: jnp.tensordot(coefficients.astype(g.dtype), g, axes=1), grads)


@dataclasses.dataclass(frozen=True)
class GradientWeighting(Weighting):
  """Base class of the gradient-level schemes: `combine` sees the shared task gradients."""

  level = "gradient"

  def init(self):
    return {}, {"weights": jnp.ones(len(self.tasks), jnp.float32)}

  def weights(self, params, state):
    """The weights of the last step's combination (for logs)."""
    return {name: state["weights"][i] for i, name in enumerate(self.task_names)}

  def combine(self, grads, losses: jax.Array, params, state) -> Combined:
    raise NotImplementedError


TASK_GRADIENTS = ("parameters", "representation")


@dataclasses.dataclass(frozen=True)
class GramWeighting(GradientWeighting):
  """A gradient-level scheme whose update is a combination sum_k c_k g_k computed from the Gram
  matrix (and the losses): `coefficients(gram, losses, state) -> (c, task_weights, state)`.

  `task_gradients="representation"` solves the coefficients from the Gram matrix of the task
  gradients of the shared representation (what the task-specific parts read of the shared network)
  instead of the shared parameters, as MGDA-UB does: the shared parameters then get the gradient of
  sum_k c_k L_k, one backward pass through the shared network instead of K (the train step does it;
  `combine` is the parameter form)."""

  task_gradients: str = schema.option(
      "parameters", "where a gradient method takes the task gradients: the shared parameters, or "
      "the shared representation (MGDA-UB's bound: K backward passes through the task-specific "
      "parts only, one through the shared network)", defines_run=True, choices=TASK_GRADIENTS)

  def coefficients(self, gram: jax.Array, losses: jax.Array, state):
    raise NotImplementedError

  def solve(self, gram: jax.Array, losses: jax.Array, state) -> tuple[jax.Array, jax.Array, Any]:
    """(coefficients `[K]`, task weights `[K]`, new state, its weights set) from a Gram matrix."""
    c, task_weights, state = self.coefficients(gram, losses, state)
    return c, task_weights, {**state, "weights": task_weights.astype(jnp.float32)}

  def combine(self, grads, losses, params, state):
    c, task_weights, state = self.solve(gram_matrix(grads), losses, state)
    return Combined(combine_gradients(grads, c), task_weights, state,
                    jax.tree_util.tree_map(jnp.zeros_like, params))


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
