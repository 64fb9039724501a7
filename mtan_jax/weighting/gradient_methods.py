"""Gradient-level multi-task methods: each step's update of the shared parameters is a combination
sum_k c_k g_k of the task gradients, its coefficients solved inside the jitted step from their Gram
matrix (`solvers`). Task-specific parameters get w_k g_k, w the method's task weights where it
defines them (the weights it puts on the task losses), else 1.

| name        | coefficients c                              | task weights w | state            |
|-------------|---------------------------------------------|----------------|------------------|
| mgda        | min-norm point of the (normalised) g_k      | c              | -                |
| pcgrad      | sum of the projected g_k, random order      | 1              | key              |
| cagrad      | (g0 + lambda g_w) / (1 + c^2) (rescale 1)   | 1              | -                |
| imtl        | IMTL-G closed form                          | c              | -                |
| nash_mtl    | G alpha = 1 / alpha                         | alpha          | previous alpha   |
| fairgrad    | G alpha = alpha^(-1/a)                      | alpha          | -                |
| aligned_mtl | column sums of sqrt(l_min) V L^-1/2 V'      | c              | -                |
| db_mtl      | buffered log-loss gradients, equal norms    | 1 / L          | buffer [K, ...]  |
| gradnorm    | w = K softmax(s), s learned (balance loss)  | w              | L(0), s (params) |

The Gram-matrix methods (all but db_mtl and gradnorm) take `task_gradients="representation"` to
solve from the task gradients of the shared representation instead (`base.GramWeighting`).
"""

import dataclasses

import jax
import jax.numpy as jnp

from mtan_jax import schema
from mtan_jax.schema import option
from mtan_jax.weighting import base
from mtan_jax.weighting import solvers

MGDA_NORMALISATIONS = ("none", "l2", "loss", "loss+")


@base.register("mgda")
@dataclasses.dataclass(frozen=True)
class MGDA(base.GramWeighting):
  """MGDA (Sener & Koltun 2018): the min-norm point w of the convex hull of the task gradients,
  each first divided by its normaliser (none; l2: |g_k|; loss: L_k; loss+: L_k |g_k|). As their
  code, the weights then multiply the task losses: c = w on the unnormalised gradients."""

  mgda_normalisation: str = option("none", "MGDA's gradient normaliser", defines_run=True,
                                   choices=MGDA_NORMALISATIONS)

  def coefficients(self, gram, losses, state):
    norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), solvers.EPS))
    scale = {"none": jnp.ones_like(losses), "l2": norms, "loss": losses,
             "loss+": losses * norms}[self.mgda_normalisation]
    scale = jnp.maximum(scale, solvers.EPS)
    w = solvers.min_norm_weights(gram / (scale[:, None] * scale[None, :]))
    return w, w, state


@base.register("pcgrad")
@dataclasses.dataclass(frozen=True)
class PCGrad(base.GramWeighting):
  """PCGrad (Yu et al. 2020): every task gradient loses its components along the gradients it
  conflicts with (negative dot product), against the others in a random order of its own; the
  shared update is the sum. Task-specific parameters get their plain gradients."""

  def init(self):
    params, state = super().init()
    return params, {**state, "key": jax.random.key_data(jax.random.key(1))}

  def coefficients(self, gram, losses, state):
    key, subkey = jax.random.split(jax.random.wrap_key_data(state["key"]))
    c = solvers.pcgrad_coefficients(gram, subkey)
    return c, jnp.ones_like(c), {**state, "key": jax.random.key_data(key)}


@base.register("cagrad")
@dataclasses.dataclass(frozen=True)
class CAGrad(base.GramWeighting):
  """CAGrad (Liu et al. 2021): the update maximising the worst task's improvement within a ball of
  radius c |g0| around the average gradient g0, from its dual on the simplex; rescaled by
  1 / (1 + c^2) as the official code does. Task-specific parameters get their plain gradients."""

  cagrad_c: float = option(0.4, "CAGrad's c (radius of the ball around the mean gradient)",
                           defines_run=True, check=(lambda v: 0 <= v < float("inf"), "c >= 0"))

  def coefficients(self, gram, losses, state):
    c = solvers.cagrad_weights(gram, self.cagrad_c)
    return c, jnp.ones_like(c), state


@base.register("imtl")
@dataclasses.dataclass(frozen=True)
class IMTL(base.GramWeighting):
  """IMTL-G (Liu et al. 2021): weights (summing to 1) whose combination has equal projections on
  every task's unit gradient."""

  def coefficients(self, gram, losses, state):
    alpha = solvers.imtl_weights(gram)
    return alpha, alpha, state


@base.register("nash_mtl")
@dataclasses.dataclass(frozen=True)
class NashMTL(base.GramWeighting):
  """Nash-MTL (Navon et al. 2022): the bargaining solution G alpha = 1 / alpha, alpha > 0,
  warm-started from the previous step's alpha (its state; a task whose gradient was zero then
  starts afresh). The weights multiply the task losses,
  so task-specific parameters get alpha_k g_k as in the official code."""

  def init(self):
    params, state = super().init()
    return params, {**state, "alpha": jnp.zeros(len(self.tasks), jnp.float32)}

  def coefficients(self, gram, losses, state):
    alpha = solvers.bargaining_weights(gram, start=state["alpha"])
    return alpha, alpha, {**state, "alpha": alpha}


@base.register("fairgrad")
@dataclasses.dataclass(frozen=True)
class FairGrad(base.GramWeighting):
  """FairGrad (Ban & Ji 2024): alpha-fair weights, G alpha = alpha^(-1 / a) (a = 1: proportional
  fairness, Nash-MTL's condition), solved afresh every step."""

  fairgrad_alpha: float = option(1.0, "FairGrad's fairness alpha", defines_run=True,
                                 check=(schema.finite_positive, "a finite alpha > 0"))

  def coefficients(self, gram, losses, state):
    alpha = solvers.bargaining_weights(gram, exponent=1.0 / self.fairgrad_alpha)
    return alpha, alpha, state


@base.register("aligned_mtl")
@dataclasses.dataclass(frozen=True)
class AlignedMTL(base.GramWeighting):
  """Aligned-MTL (Senushkin et al. 2023): the task gradients made orthogonal and scaled to the
  smallest singular value of their system (eigen-decomposition of the Gram matrix)."""

  def coefficients(self, gram, losses, state):
    c = solvers.aligned_weights(gram)
    return c, c, state


@base.register("db_mtl")
@dataclasses.dataclass(frozen=True)
class DBMTL(base.GradientWeighting):
  """DB-MTL (Lin et al. 2023): the gradients of the log losses, g_k / (L_k + 1e-8), averaged in a
  moving buffer h_k <- g'_k + (beta / t^sigma) (h_k - g'_k), each scaled to the largest buffer's
  norm: the shared update is sum_k (max_j |h_j| / |h_k|) h_k. Task-specific parameters get their
  log loss's gradient, g_k / L_k. State: the buffer (K times the shared parameters) and t."""

  db_beta: float = option(0.9, "DB-MTL's buffer momentum beta", defines_run=True,
                          check=(lambda v: 0 <= v < 1, "0 <= beta < 1"))
  db_beta_sigma: float = option(0.0, "DB-MTL's decay exponent sigma of beta / t^sigma",
                                defines_run=True, check=(lambda v: 0 <= v < float("inf"), ">= 0"))

  def init(self):
    raise ValueError("db_mtl keeps a buffer shaped like the shared parameters: its state is made "
                     "by init_for(shared parameters)")

  def init_for(self, shared_params):
    k = len(self.tasks)
    buffer = jax.tree_util.tree_map(lambda p: jnp.zeros((k, *p.shape), jnp.float32), shared_params)
    return {}, {"weights": jnp.ones(k, jnp.float32), "buffer": buffer,
                "steps": jnp.zeros((), jnp.int32)}

  def combine(self, grads, losses, params, state):
    steps = state["steps"] + 1
    inverse = 1.0 / (losses + 1e-8)
    log_grads = jax.tree_util.tree_map(
        lambda g: g * inverse.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), grads)
    momentum = self.db_beta / steps.astype(jnp.float32) ** self.db_beta_sigma
    buffer = jax.tree_util.tree_map(lambda g, h: g + momentum * (h - g), log_grads, state["buffer"])
    norms = jnp.sqrt(jnp.diag(base.gram_matrix(buffer)))
    alpha = jnp.max(norms) / (norms + 1e-8)
    return base.Combined(base.combine_gradients(buffer, alpha), inverse,
                         {**state, "buffer": buffer, "steps": steps, "weights": inverse},
                         jax.tree_util.tree_map(jnp.zeros_like, params))


@base.register("gradnorm")
@dataclasses.dataclass(frozen=True)
class GradNorm(base.GradientWeighting):
  """GradNorm (Chen et al. 2018), as LibMTL implements it: weights w = K softmax(s) with logits s
  trained by the network's optimizer on sum_k | w_k |g_k| - mean_j(w_j |g_j|) r_k^alpha |, the
  target held constant, r_k = L_k / L_k(0) over its mean, L_k(0) the mean training loss of epoch
  0 (which trains with equal weights). The shared update is sum_k w_k g_k; task-specific
  parameters get w_k g_k."""

  gradnorm_alpha: float = option(1.5, "GradNorm's asymmetry alpha", defines_run=True,
                                 check=(lambda v: 0 <= v < float("inf"), "alpha >= 0"))

  def init(self):
    k = len(self.tasks)
    params = {"loss_scale": jnp.ones(k, jnp.float32)}
    state = {"weights": jnp.ones(k, jnp.float32), **base.epoch_sums(k),
             "initial": jnp.ones(k, jnp.float32), "epochs_seen": jnp.zeros((), jnp.int32)}
    return params, state

  def combine(self, grads, losses, params, state):
    k = len(self.tasks)
    norms = jnp.sqrt(jnp.maximum(jnp.diag(base.gram_matrix(grads)), 0.0))
    ratio = losses / state["initial"]
    target = jax.lax.stop_gradient(ratio / jnp.mean(ratio)) ** self.gradnorm_alpha

    def balance(loss_scale):
      weighted = k * jax.nn.softmax(loss_scale) * norms
      return jnp.sum(jnp.abs(weighted - jax.lax.stop_gradient(jnp.mean(weighted) * target)))

    active = state["epochs_seen"] >= 1
    weights = jnp.where(active, k * jax.nn.softmax(params["loss_scale"]), jnp.ones(k))
    scale_grad = jnp.where(active, jax.grad(balance)(params["loss_scale"]), 0.0)
    summed = base.add_to_epoch_sums({**state, "weights": weights}, losses)
    return base.Combined(base.combine_gradients(grads, weights), weights, summed,
                         {"loss_scale": scale_grad})

  def end_epoch(self, state):
    mean, state = base.close_epoch_sums(state)
    return {**state, "initial": jnp.where(state["epochs_seen"] == 0, mean, state["initial"]),
            "epochs_seen": state["epochs_seen"] + 1}
