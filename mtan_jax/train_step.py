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
from mtan_jax.weighting import Weighting

AXIS = "batch"

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


def replicate(tree: Any, local_devices, pmap_devices=None) -> Any:
  """One copy of `tree` per local device, laid out as `jax.pmap(..., axis_name=AXIS)` lays out its
  outputs, so that feeding either to a pmapped step hits the same compiled program (a different
  layout, e.g. from `flax.jax_utils.replicate`, costs a second compilation).

  `pmap_devices` as given to the steps' pmap: None for every device of every process.
  """
  stacked = jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x), (len(local_devices),) + np.shape(x)), tree)
  return jax.pmap(lambda x: x, axis_name=AXIS, devices=pmap_devices)(stacked)


def init_variables(model: nn.Module, image_shape: tuple[int, int], key: jax.Array) -> Any:
  """The model's initial variables ({"params", "batch_stats"}).

  Run op by op rather than jitted: XLA compiles one random-normal program per kernel shape either
  way, and op by op those programs are shared by every model of the process, while a jitted init
  compiles the whole model again for every process.
  """
  return model.init(key, jnp.zeros((1, *image_shape, 3)), train=False)


def create_train_state(model: nn.Module, weighting: Weighting, optimizer: optax.GradientTransformation,
                       image_shape: tuple[int, int], seed: int) -> TrainState:
  """A fresh state: parameters from `seed`, the weighting's initial parameters and state."""
  init_key, state_key = jax.random.split(jax.random.key(seed))
  variables = init_variables(model, image_shape, init_key)
  weighting_params, weighting_state = weighting.init()
  params = {"model": variables["params"], "weighting": weighting_params}
  return TrainState(step=jnp.int32(0), epoch=jnp.int32(0), params=params,
                    batch_stats=variables["batch_stats"], opt_state=optimizer.init(params),
                    weighting_state=weighting_state, rng=jax.random.key_data(state_key))


def make_optimizer(lr: float, halve_after_steps: int,
                   clip_norm: float = 0.0) -> optax.GradientTransformation:
  """Adam (PyTorch's defaults: betas 0.9 / 0.999, eps 1e-8, no weight decay) whose learning rate is
  halved after `halve_after_steps` steps (the reference's StepLR at epoch 100; 0: never), after
  clipping the gradient to global norm `clip_norm` when it is > 0 (the reference does not clip)."""
  schedule = (optax.piecewise_constant_schedule(lr, {halve_after_steps: 0.5})
              if halve_after_steps > 0 else optax.constant_schedule(lr))
  adam = optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)
  return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm > 0 else adam


def _task_losses(tasks, outputs, batch, axis_name):
  return {t.name: losses_lib.mean_over_axis(
      *losses_lib.task_loss_sums(t, outputs[t.name], batch[t.name]), axis_name) for t in tasks}


def _all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite (integer leaves, e.g. counts, pass)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               weighting: Weighting, optimizer: optax.GradientTransformation, tasks,
               sync_batch_stats: bool, remat: bool = False,
               axis_name: str = AXIS) -> tuple[TrainState, dict]:
  """One optimizer step on one device's share `batch` ({"image": [B, H, W, 3], task targets}).

  `remat`: keep only convolution and matrix-product outputs from the forward pass and recompute the
  rest in the backward pass (`REMAT_POLICY`): the same result up to float rounding in about half the
  memory, for some recomputation (the README's speed section has the figures).

  Returns the new state and {"loss": the weighted objective, "task_losses": {task: global mean},
  "skipped": True when the step was not applied (non-finite loss, gradient or update), "weights": {task:
  weight}, "sums": metric sums of the training predictions}.
  """
  devices = jax.lax.axis_size(axis_name)

  def forward(model_params, image):
    return model.apply({"params": model_params, "batch_stats": state.batch_stats}, image,
                       train=True, mutable=["batch_stats"])

  if remat:
    forward = jax.checkpoint(forward, policy=REMAT_POLICY)

  def objective(params):
    outputs, updated = forward(params["model"], batch["image"])
    with jax.named_scope("losses"):  # named scopes label the ops in profiles
      task_losses = _task_losses(tasks, outputs, batch, axis_name)
      total = weighting.total(task_losses, params["weighting"], state.weighting_state)
    return total / devices, (total, task_losses, outputs, updated["batch_stats"])

  grads, (total, task_losses, outputs, batch_stats) = jax.grad(objective, has_aux=True)(
      state.params)
  grads = jax.lax.psum(grads, axis_name)
  if sync_batch_stats:  # per-device BatchNorm: keep the replicas' running statistics identical
    batch_stats = jax.lax.pmean(batch_stats, axis_name)
  with jax.named_scope("optimizer"):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
  # A non-finite loss, gradient or updated state anywhere skips the step on every device:
  # parameters, optimizer, statistics and weighting state stay as they were (the step counter still
  # moves, so the data and learning-rate schedules stay aligned with an uninterrupted run). The
  # updated state is checked too: finite gradients can still make non-finite parameters (an
  # overflowing update, a NaN learning rate), and a checkpoint must never hold them.
  with jax.named_scope("skip_non_finite"):
    finite = jnp.isfinite(total) & _all_finite(grads) & _all_finite(
        (params, opt_state, batch_stats))
    finite = jax.lax.pmin(finite.astype(jnp.int32), axis_name) > 0
    keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
        lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        batch_stats=keep(batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state),
        weighting_state=keep(weighting.observe(state.weighting_state, task_losses),
                             state.weighting_state))
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


def end_epoch(state: TrainState, *, weighting: Weighting) -> TrainState:
  """Closes a training epoch: the weighting's end-of-epoch update, the epoch counter."""
  return state.replace(epoch=state.epoch + 1,
                       weighting_state=weighting.end_epoch(state.weighting_state))
