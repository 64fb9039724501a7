"""Dynamic Weight Average (the MTAN paper)."""

import dataclasses

import jax
import jax.numpy as jnp

from mtan_jax import schema
from mtan_jax.schema import option
from mtan_jax.weighting import base


def dwa_weights(previous: jax.Array, before_previous: jax.Array, temperature: float) -> jax.Array:
  """lambda = K softmax(w / T) with w_k = L_k(t-1) / L_k(t-2); `[K]` epoch-mean losses -> `[K]`."""
  ratios = previous / before_previous
  return ratios.shape[0] * jax.nn.softmax(ratios / temperature)


@base.register("dwa")
@dataclasses.dataclass(frozen=True)
class DWA(base.Weighting):
  """lambda_k(t) = K exp(w_k(t-1) / T) / sum_i exp(w_i(t-1) / T), w_k(t-1) = L_k(t-1) / L_k(t-2).

  L_k(t) is the mean over the training steps of epoch t of task k's unweighted loss. The weights are
  1 in the first two epochs and fixed within an epoch. State: the running sums of the current epoch
  and the means of the two previous epochs.
  """

  temperature: float = option(2.0, "DWA's temperature T", defines_run=True,
                              check=(schema.finite_positive, "a finite temperature > 0"))

  def init(self):
    k = len(self.tasks)
    state = {**base.epoch_sums(k), "history": jnp.ones((2, k), jnp.float32),  # [L(t-1), L(t-2)]
             "epochs_seen": jnp.zeros((), jnp.int32)}
    return {}, state

  def weights(self, params, state):
    history = state["history"]
    dynamic = dwa_weights(history[0], history[1], self.temperature)
    lam = jnp.where(state["epochs_seen"] >= 2, dynamic, jnp.ones_like(dynamic))
    return {name: lam[i] for i, name in enumerate(self.task_names)}

  def total(self, losses, params, state):
    weights = self.weights(params, state)
    return sum(jax.lax.stop_gradient(weights[name]) * losses[name] for name in self.task_names)

  def observe(self, state, losses):
    return base.add_to_epoch_sums(state, self.stacked(losses))

  def end_epoch(self, state):
    mean, state = base.close_epoch_sums(state)
    return {**state, "history": jnp.stack([mean, state["history"][0]]),
            "epochs_seen": state["epochs_seen"] + 1}
