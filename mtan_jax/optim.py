"""Optimizer pieces that reproduce PyTorch's bookkeeping where optax's differs.

PyTorch's optimizers skip a parameter whose `.grad` is None, and a parameter's `.grad` stays None
until the first backward pass that reaches it (then `zero_grad` of the PyTorch the reference ran
keeps a zero tensor). So a task's masks and head in the Decathlon, trained one task per step, get
no weight decay and no momentum until that task's first step; optax updates every parameter from
the first step on. `skip_until_first_gradient` keeps, per parameter, whether it has had a gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class SkipUntilFirstGradientState(NamedTuple):
  """`seen`: per parameter leaf, a bool scalar: whether a step's backward pass has reached it."""

  seen: Any


def skip_until_first_gradient() -> optax.GradientTransformationExtraArgs:
  """Zeroes the updates of parameters that have not had a gradient yet.

  `update(updates, state, params, used=tree)` takes `used`, a pytree of bools shaped like the
  parameters (leaves or whole subtrees: prefixes of the parameters' tree): which parameters this
  step's loss reads, i.e. where PyTorch's `.grad` would now be set. None: every parameter. Placed
  before the momentum (after the weight decay), a parameter never used gets a zero input, so its
  momentum stays zero and it does not move, as PyTorch's SGD skips it."""

  def init(params):
    return SkipUntilFirstGradientState(jax.tree_util.tree_map(lambda _: jnp.zeros((), bool),
                                                              params))

  def update(updates, state, params=None, *, used=None, **extra_args):
    del params, extra_args
    if used is None:
      seen = jax.tree_util.tree_map(lambda _: jnp.ones((), bool), state.seen)
    else:
      seen = jax.tree_util.tree_map(
          lambda flag, subtree: jax.tree_util.tree_map(lambda s: s | flag, subtree),
          used, state.seen)
    updates = jax.tree_util.tree_map(lambda u, s: jnp.where(s, u, jnp.zeros_like(u)), updates,
                                     seen)
    return updates, SkipUntilFirstGradientState(seen)

  return optax.GradientTransformationExtraArgs(init, update)


def seen_parameters(opt_state) -> Any:
  """The `seen` flags inside an optimizer state that chains `skip_until_first_gradient`."""
  return optax.tree_utils.tree_get(opt_state, "seen")


def with_seen_parameters(opt_state, seen) -> Any:
  """`opt_state` with its `seen` flags replaced (e.g. a fresh optimizer that keeps them)."""
  return optax.tree_utils.tree_set(opt_state, seen=seen)
