"""Equal weighting: the objective is the plain sum of the task losses."""

from mtan_jax.weighting import base


@base.register("equal")
class Equal(base.Weighting):
  """L = sum_k L_k."""
