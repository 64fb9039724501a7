"""The train state and the pure per-device train / eval steps.

`train_step(state, batch) -> (state, outputs)` is written for one device with collectives over a
named axis ("batch"): the task losses are pixel means over the global batch (sums and counts summed
over devices), gradients are summed over devices, and BatchNorm statistics are averaged over the
global batch (or over each device's batch, synchronising the running statistics). `jax.pmap` runs it
over local devices, across hosts too; moving to `shard_map` changes only the mapping call.

Gradient bookkeeping: each device differentiates J_d = F(L, params) / D, where the task losses L
are already global (their sums go through psum) and D is the number of devices. Differentiating
through psum sends every device's share of the data gradient back to the device that holds the data,
so the sum of the per-device gradients is exactly dF/dparams: the update does not depend on how the
global batch is split over devices (tested on 1 and 8 devices).
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtan_jax import losses as losses_lib
from mtan_jax import metrics as metrics_lib
from mtan_jax.parallel import AXIS, all_finite, keep_where, replicate, unreplicate  # noqa: F401  (the steps' axis)
from mtan_jax.weighting import Weighting
from mtan_jax.weighting.base import combine_gradients, gram_matrix


# What a rematerialised forward keeps for the backward pass: the outputs of convolutions and matrix
# products. BatchNorm, ReLU, sigmoid, masking, pooling, upsampling and concatenation are recomputed
# from them (elementwise work, cheap beside the convolutions); they hold most activation memory.
REMAT_POLICY = jax.checkpoint_policies.dots_saveable


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training: a pytree, checkpointed whole.

  Attributes:
    step: optimizer steps taken (int32).
    epoch: completed epochs (int32).
    params: {"model": network parameters, "weighting": the weighting's trainable parameters}.
    batch_stats: BatchNorm running statistics.
    opt_state: the optimizer's state.
    weighting_state: the weighting's non-trainable state (e.g. DWA's loss history).
    rng: uint32[2] key data for stochastic layers (none of the paper's models has one yet).
  """

  step: jax.Array
  epoch: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  weighting_state: Any
  rng: jax.Array


def init_variables(model: nn.Module, image_shape: tuple[int, int], key: jax.Array) -> Any:
  """The model's initial variables ({"params", "batch_stats"}).

  Run op by op rather than jitted: XLA compiles one random-normal program per kernel shape either
  way, and op by op those programs are shared by every model of the process, while a jitted init
  compiles the whole model again for every process.
  """
  return model.init(key, jnp.zeros((1, *image_shape, 3)), train=False)


def create_train_state(model: nn.Module, weighting: Weighting, optimizer: optax.GradientTransformation,
                       image_shape: tuple[int, int], seed: int,
                       shared: frozenset[str] = frozenset()) -> TrainState:
  """A fresh state: parameters from `seed`, the weighting's initial parameters and state (`shared`:
  the names of the model's shared parameters, for a scheme whose state is shaped like them)."""
  init_key, state_key = jax.random.split(jax.random.key(seed))
  variables = init_variables(model, image_shape, init_key)
  weighting_params, weighting_state = weighting.init_for(
      {k: v for k, v in variables["params"].items() if k in shared})
  params = {"model": variables["params"], "weighting": weighting_params}
  return TrainState(step=jnp.int32(0), epoch=jnp.int32(0), params=params,
                    batch_stats=variables["batch_stats"], opt_state=optimizer.init(params),
                    weighting_state=weighting_state, rng=jax.random.key_data(state_key))


def make_optimizer(lr: float, halve_after_steps: int) -> optax.GradientTransformation:
  """Adam (PyTorch's defaults: betas 0.9 / 0.999, eps 1e-8, no weight decay) whose learning rate is
  halved after `halve_after_steps` steps (the reference's StepLR at epoch 100; 0: never)."""
  schedule = (optax.piecewise_constant_schedule(lr, {halve_after_steps: 0.5})
              if halve_after_steps > 0 else optax.constant_schedule(lr))
  return optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)


def clip_shared_gradient(model_grads: dict, shared: frozenset[str], max_norm: float) -> dict:
  """`model_grads` with the shared parameters' part scaled by min(1, max_norm / (norm + 1e-6)),
  norm their global L2 norm (PyTorch's clip_grad_norm_ over the shared parameters, as Nash-MTL's and
  FAMO's trainers call it); task-specific parameters as they are. max_norm 0: no clipping."""
  if max_norm <= 0:
    return model_grads
  leaves = [g for k, v in model_grads.items() if k in shared for g in jax.tree_util.tree_leaves(v)]
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves))
  factor = jnp.minimum(1.0, max_norm / (norm + 1e-6))
  return {k: jax.tree_util.tree_map(lambda g: g * factor.astype(g.dtype), v) if k in shared else v
          for k, v in model_grads.items()}


def _task_losses(tasks, outputs, batch, axis_name):
  return {t.name: losses_lib.mean_over_axis(
      *losses_lib.task_loss_sums(t, outputs[t.name], batch[t.name]), axis_name) for t in tasks}


def _loss_vector(forward, batch, tasks, weighting: Weighting, devices: int, axis_name: str):
  """(model params[, perturbations of the shared representation]) -> (the task losses `[K]` / the
  device count, (the task losses `[K]`, {task: loss}, outputs, new batch statistics)): the function
  a gradient-level step pulls back once per task."""

  def loss_vector(model_params, taps=None):
    outputs, updated = forward(model_params, batch["image"], taps)
    with jax.named_scope("losses"):
      task_losses = _task_losses(tasks, outputs, batch, axis_name)
    vector = weighting.stacked(task_losses)
    return vector / devices, (vector, task_losses, outputs, updated["batch_stats"])
  return loss_vector


def _gradients_by_task(forward, state: TrainState, batch, tasks, weighting: Weighting,
                       shared: frozenset[str], devices: int, axis_name: str):
  """A gradient-level weighting's step: the task losses differentiated once forward and K times
  backward (the pullback of the task-loss vector at the K unit cotangents), summed over devices
  (so every device solves with the global batch's gradients), then combined by the weighting.
  Returns (grads like state.params, total, task_losses, outputs, batch_stats, weighting_state)."""
  loss_vector = _loss_vector(forward, batch, tasks, weighting, devices, axis_name)
  scaled, pullback, (losses, task_losses, outputs, batch_stats) = jax.vjp(
      loss_vector, state.params["model"], has_aux=True)
  with jax.named_scope("task_gradients"):
    # K pullbacks of the one forward pass, each a plain backward pass. Vmapping the pullback over
    # the K unit cotangents computes the same in one batched backward pass, but XLA's CPU
    # convolutions run the batched transposes at about half the speed (docs/speed.md).
    cotangents = jnp.eye(len(tasks), dtype=scaled.dtype)
    per_task = [pullback(cotangents[k])[0] for k in range(len(tasks))]
    task_grads = jax.tree_util.tree_map(lambda *g: jnp.stack(g), *per_task)
    task_grads = jax.lax.psum(task_grads, axis_name)
  with jax.named_scope("weighting"):
    combined = weighting.combine({k: v for k, v in task_grads.items() if k in shared}, losses,
                                 state.params["weighting"], state.weighting_state)
    specific = combine_gradients({k: v for k, v in task_grads.items() if k not in shared},
                                 combined.task_weights)
  grads = {"model": {**combined.shared, **specific}, "weighting": combined.params_grad}
  total = jnp.sum(combined.task_weights * losses)
  return grads, total, task_losses, outputs, batch_stats, combined.state


def _representation_taps(model: nn.Module, variables: dict, image: jax.Array) -> Any:
  """Zeros shaped like the model's shared representation (`layers.SHARED_REPRESENTATION`, as the
  model marks it with `perturb`) for this device's `image` `[B, H, W, 3]`; shapes only, no compute."""
  _, created = jax.eval_shape(lambda: model.apply(
      variables, image, train=True, mutable=["batch_stats", "perturbations"]))
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), created["perturbations"])


def _gradients_by_representation(forward, model, state: TrainState, batch, tasks,
                                 weighting: Weighting, shared: frozenset[str], devices: int,
                                 axis_name: str):
  """`_gradients_by_task` with the coefficients solved from the task gradients of the shared
  representation (MGDA-UB's bound), which the K pullbacks reach through the task-specific parts
  only; the shared parameters get sum_k c_k g_k from one more pullback, at the cotangent c.
  The representation is the device's share of the global batch's, so the Gram matrix is the sum
  over devices of each device's Gram matrix."""
  taps = _representation_taps(model, {"params": state.params["model"],
                                      "batch_stats": state.batch_stats}, batch["image"])
  loss_vector = _loss_vector(forward, batch, tasks, weighting, devices, axis_name)
  scaled, pullback, (losses, task_losses, outputs, batch_stats) = jax.vjp(
      loss_vector, state.params["model"], taps, has_aux=True)
  with jax.named_scope("task_gradients"):
    # Only the task-specific parameters' and the representation's cotangents are used: XLA drops
    # the rest of each pullback, the backward pass through the shared network.
    cotangents = jnp.eye(len(tasks), dtype=scaled.dtype)
    per_task = [pullback(cotangents[k]) for k in range(len(tasks))]
    specific = jax.tree_util.tree_map(lambda *g: jnp.stack(g), *[
        {name: v for name, v in params.items() if name not in shared} for params, _ in per_task])
    specific = jax.lax.psum(specific, axis_name)
    representation = jax.tree_util.tree_map(lambda *g: jnp.stack(g), *[t for _, t in per_task])
    gram = jax.lax.psum(gram_matrix(representation), axis_name)
  with jax.named_scope("weighting"):
    c, task_weights, weighting_state = weighting.solve(gram, losses, state.weighting_state)
  with jax.named_scope("shared_gradient"):
    combined = pullback(c.astype(scaled.dtype))[0]
    combined = jax.lax.psum({k: v for k, v in combined.items() if k in shared}, axis_name)
  specific = combine_gradients(specific, task_weights)
  grads = {"model": {**combined, **specific},
           "weighting": jax.tree_util.tree_map(jnp.zeros_like, state.params["weighting"])}
  total = jnp.sum(task_weights * losses)
  return grads, total, task_losses, outputs, batch_stats, weighting_state


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               weighting: Weighting, optimizer: optax.GradientTransformation, tasks,
               sync_batch_stats: bool, remat: bool = False, shared: frozenset[str] = frozenset(),
               clip_grad_norm: float = 0.0, axis_name: str = AXIS) -> tuple[TrainState, dict]:
  """One optimizer step on one device's share `batch` ({"image": [B, H, W, 3], task targets}).

  `remat`: keep only convolution and matrix-product outputs from the forward pass and recompute the
  rest in the backward pass (`REMAT_POLICY`): the same result up to float rounding in about half the
  memory, for some recomputation (the README's speed section has the figures).

  `shared`: the top-level names of the model's shared parameters
  (`registry.shared_parameter_names`), over which a gradient-level weighting combines the task
  gradients; the others get their own task's gradient times the weighting's task weight.
  `clip_grad_norm` > 0 clips the shared parameters' gradient to that global norm
  (`clip_shared_gradient`).

  Returns the new state and {"loss": the weighted objective, "task_losses": {task: global mean},
  "skipped": True when the step was not applied (non-finite loss, gradient or update), "weights": {task:
  weight}, "sums": metric sums of the training predictions}.
  """
  if weighting.level == "gradient" and not shared:
    raise ValueError(f"the {weighting.name} weighting combines the task gradients of the shared "
                     f"parameters: expected their names (shared=), found none")
  devices = jax.lax.axis_size(axis_name)

  def forward(model_params, image, taps=None):
    variables = {"params": model_params, "batch_stats": state.batch_stats}
    if taps is not None:  # perturbations at the shared representation (their gradient is its own)
      variables["perturbations"] = taps
    return model.apply(variables, image, train=True, mutable=["batch_stats"])

  if remat:
    forward = jax.checkpoint(forward, policy=REMAT_POLICY)

  def objective(params):
    outputs, updated = forward(params["model"], batch["image"])
    with jax.named_scope("losses"):  # named scopes label the ops in profiles
      task_losses = _task_losses(tasks, outputs, batch, axis_name)
      total = weighting.total(task_losses, params["weighting"], state.weighting_state)
    return total / devices, (total, task_losses, outputs, updated["batch_stats"])

  if getattr(weighting, "task_gradients", "parameters") == "representation":
    grads, total, task_losses, outputs, batch_stats, weighting_state = (
        _gradients_by_representation(forward, model, state, batch, tasks, weighting, shared,
                                     devices, axis_name))
  elif weighting.level == "gradient":
    grads, total, task_losses, outputs, batch_stats, weighting_state = _gradients_by_task(
        forward, state, batch, tasks, weighting, shared, devices, axis_name)
  else:
    grads, (total, task_losses, outputs, batch_stats) = jax.grad(objective, has_aux=True)(
        state.params)
    grads = jax.lax.psum(grads, axis_name)
    weighting_state = state.weighting_state
  grads = {**grads, "model": clip_shared_gradient(grads["model"], shared, clip_grad_norm)}
  if sync_batch_stats:  # per-device BatchNorm: keep the replicas' running statistics identical
    batch_stats = jax.lax.pmean(batch_stats, axis_name)
  with jax.named_scope("optimizer"):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
  weighting_state = weighting.observe(weighting_state, task_losses)
  if weighting.needs_losses_after_update:  # FAMO: the same batch through the updated network
    with jax.named_scope("losses_after_update"):
      new_outputs, _ = forward(params["model"], batch["image"])  # running statistics not kept
      after = _task_losses(tasks, new_outputs, batch, axis_name)
      weighting_state = weighting.after_update(weighting_state, task_losses, after)
  # A non-finite loss, gradient or updated state anywhere skips the step on every device:
  # parameters, optimizer, statistics and weighting state stay as they were (the step counter still
  # moves, so the data and learning-rate schedules stay aligned with an uninterrupted run). The
  # updated state is checked too: finite gradients can still make non-finite parameters (an
  # overflowing update, a NaN learning rate), and a checkpoint must never hold them.
  with jax.named_scope("skip_non_finite"):
    finite = jnp.isfinite(total) & all_finite(grads) & all_finite(
        (params, opt_state, batch_stats, weighting_state))
    finite = jax.lax.pmin(finite.astype(jnp.int32), axis_name) > 0
    new_state = state.replace(step=state.step + 1, **keep_where(
        finite, {"params": params, "batch_stats": batch_stats, "opt_state": opt_state,
                 "weighting_state": weighting_state},
        {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state,
         "weighting_state": state.weighting_state}))
  with jax.named_scope("metrics"):
    sums = metrics_lib.batch_sums(tasks, outputs, batch, axis_name)
  return new_state, {"loss": total, "task_losses": task_losses, "skipped": ~finite,
                     "weights": weighting.weights(state.params["weighting"],
                                                  state.weighting_state), "sums": sums}


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module, tasks,
              axis_name: str = AXIS) -> dict:
  """Predictions with running statistics: {"task_losses": ..., "sums": metric sums}."""
  outputs = model.apply({"params": state.params["model"], "batch_stats": state.batch_stats},
                        batch["image"], train=False)
  with jax.named_scope("losses"):
    task_losses = _task_losses(tasks, outputs, batch, axis_name)
  with jax.named_scope("metrics"):
    return {"task_losses": task_losses,
            "sums": metrics_lib.batch_sums(tasks, outputs, batch, axis_name)}


def new_skip_counts(tasks) -> dict[str, Any]:
  """Skipped steps of an epoch, counted on the device: total, the current and the longest run of
  consecutive ones, and per task the skipped steps whose loss was not finite."""
  zero = np.zeros((), np.int32)
  return {"total": zero, "consecutive": zero, "longest": zero,
          "by_task": {t.name: zero for t in tasks}}


def count_skips(counts: dict[str, Any], skipped, task_losses) -> dict[str, Any]:
  """`counts` after one step (`skipped`: whether it was; `task_losses`: its losses)."""
  skipped = skipped.astype(jnp.int32)
  consecutive = (counts["consecutive"] + 1) * skipped
  return {"total": counts["total"] + skipped, "consecutive": consecutive,
          "longest": jnp.maximum(counts["longest"], consecutive),
          "by_task": {t: n + skipped * (~jnp.isfinite(task_losses[t])).astype(jnp.int32)
                      for t, n in counts["by_task"].items()}}


def end_epoch(state: TrainState, *, weighting: Weighting) -> TrainState:
  """Closes a training epoch: the weighting's end-of-epoch update, the epoch counter."""
  return state.replace(epoch=state.epoch + 1,
                       weighting_state=weighting.end_epoch(state.weighting_state))
