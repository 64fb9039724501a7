"""Uncertainty weighting (Kendall et al.) as the reference implements it."""

import dataclasses

import jax.numpy as jnp

from mtan_jax.weighting import base


@base.register("uncertainty")
@dataclasses.dataclass(frozen=True)
class Uncertainty(base.Weighting):
  """L = sum_k L_k / (2 exp(s_k)) + s_k / 2 with learned log-variances s_k, initialised to -0.5.

  The same (regression) form for every task, segmentation included, as in the reference; the s_k
  are trained by the same optimizer as the network.
  """

  initial_log_variance: float = -0.5

  def init(self):
    params = {"log_variance": {name: jnp.float32(self.initial_log_variance)
                               for name in self.task_names}}
    return params, {}

  def weights(self, params, state):
    return {name: 0.5 * jnp.exp(-s) for name, s in params["log_variance"].items()}

  def total(self, losses, params, state):
    s = params["log_variance"]
    return sum(0.5 * jnp.exp(-s[name]) * losses[name] + 0.5 * s[name]
               for name in self.task_names)
