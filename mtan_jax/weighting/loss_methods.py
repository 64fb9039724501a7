"""Loss-level multi-task methods: one objective of the task losses, one backward pass.

| name | objective                                   | state |
|------|---------------------------------------------|-------|
| rlw  | sum_k lambda_k L_k, lambda = softmax(N(0, I)) drawn every step | key |
| gls  | (prod_k L_k)^(1/K)                           | -     |
| famo | sum_k z_k log L_k / c, z = softmax(w); w moved by the loss change of the step's batch | w, Adam |
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from mtan_jax import schema
from mtan_jax.schema import option
from mtan_jax.weighting import base


@base.register("rlw")
@dataclasses.dataclass(frozen=True)
class RLW(base.Weighting):
  """Random Loss Weighting (Lin et al. 2022): weights softmax(z), z ~ N(0, I), drawn afresh every
  step from a key carried in the state (so a resumed run draws what it would have)."""

  def init(self):
    return {}, {"key": jax.random.key_data(jax.random.key(2))}

  def weights(self, params, state):
    z = jax.random.normal(jax.random.wrap_key_data(state["key"]), (len(self.tasks),))
    lam = jax.nn.softmax(z)
    return {name: lam[i] for i, name in enumerate(self.task_names)}

  def total(self, losses, params, state):
    weights = self.weights(params, state)
    return sum(weights[name] * losses[name] for name in self.task_names)

  def observe(self, state, losses):
    key, _ = jax.random.split(jax.random.wrap_key_data(state["key"]))
    return {"key": jax.random.key_data(key)}


@base.register("gls")
@dataclasses.dataclass(frozen=True)
class GLS(base.Weighting):
  """Geometric Loss Strategy (Chennupati et al. 2019): the objective is the geometric mean of the
  task losses, (prod_k L_k)^(1/K); its effective weight on task k is that mean / (K L_k). State: the
  last step's losses, for the logged weights."""

  def init(self):
    return {}, {"losses": jnp.ones(len(self.tasks), jnp.float32)}

  def weights(self, params, state):
    losses = state["losses"]
    mean = jnp.exp(jnp.mean(jnp.log(losses)))
    return {name: mean / (len(self.tasks) * losses[i]) for i, name in enumerate(self.task_names)}

  def total(self, losses, params, state):
    return jnp.prod(self.stacked(losses)) ** (1.0 / len(self.tasks))

  def observe(self, state, losses):
    return {"losses": self.stacked(losses)}


@base.register("famo")
@dataclasses.dataclass(frozen=True)
class FAMO(base.Weighting):
  """FAMO (Liu et al. 2023): objective sum_k z_k log(L_k + 1e-8) / c, z = softmax(w), c = sum_k z_k /
  (L_k + 1e-8) held constant, so task k's weight is z_k / (c (L_k + 1e-8)). After the update, the
  same batch's losses with the new parameters (`needs_losses_after_update`: one more forward pass,
  as the official trainer does) move the logits w: their gradient is softmax's Jacobian' times
  log L_k(before) - log L_k(after), taken by Adam (lr famo_lr, weight decay famo_gamma, PyTorch's
  L2 form). State: w, its Adam state, the last losses (for the logged weights)."""

  famo_gamma: float = option(0.001, "FAMO's weight decay of the logits (NYUv2 0.001; CityScapes "
                             "0.01 in the official scripts)", defines_run=True,
                             check=(lambda v: 0 <= v < float("inf"), "a number >= 0"))
  famo_lr: float = option(0.025, "FAMO's learning rate of the logits", defines_run=True,
                          check=(schema.finite_positive, "a finite learning rate > 0"))
  needs_losses_after_update = True

  def _logits_optimizer(self):
    return optax.chain(optax.add_decayed_weights(self.famo_gamma),
                       optax.adam(self.famo_lr, b1=0.9, b2=0.999, eps=1e-8))

  def init(self):
    logits = jnp.zeros(len(self.tasks), jnp.float32)
    return {}, {"logits": logits, "logits_opt": self._logits_optimizer().init(logits),
                "losses": jnp.ones(len(self.tasks), jnp.float32)}

  def _weight_vector(self, logits, losses):
    z = jax.nn.softmax(logits)
    shifted = losses + 1e-8
    return z / (jnp.sum(z / shifted) * shifted)

  def weights(self, params, state):
    w = self._weight_vector(state["logits"], state["losses"])
    return {name: w[i] for i, name in enumerate(self.task_names)}

  def total(self, losses, params, state):
    z = jax.nn.softmax(state["logits"])
    shifted = self.stacked(losses) + 1e-8
    c = jax.lax.stop_gradient(jnp.sum(z / shifted))
    return jnp.sum(jnp.log(shifted) * z / c)

  def observe(self, state, losses):
    return {**state, "losses": self.stacked(losses)}

  def after_update(self, state, before, after):
    """The logits' step from the losses of one batch before and after the parameters' update."""
    delta = jnp.log(self.stacked(before) + 1e-8) - jnp.log(self.stacked(after) + 1e-8)
    _, pullback = jax.vjp(jax.nn.softmax, state["logits"])
    (gradient,) = pullback(delta)
    updates, opt_state = self._logits_optimizer().update(gradient, state["logits_opt"],
                                                         state["logits"])
    return {**state, "logits": optax.apply_updates(state["logits"], updates),
            "logits_opt": opt_state}
