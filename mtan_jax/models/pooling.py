"""Down- and up-sampling of SegNet, written without gather or scatter so that XLA fuses them.

- `max_pool_with_argmax` / `max_unpool`: PyTorch's `MaxPool2d(2, 2, return_indices=True)` and
  `MaxUnpool2d(2, 2)`. The index kept is the position inside each 2x2 window (0..3, row-major), not a
  flat index into the map; on ties the first position in row-major order wins, as in PyTorch.
  An equality mask (`x == max`) would be wrong there: ties are common after a ReLU.
- `max_pool_2x2`: the plain pool of MTAN's attention branch, with the same tie rule for its gradient.
- `upsample_bilinear_x2`: `F.interpolate(scale_factor=2, mode="bilinear", align_corners=True)`, which
  `jax.image.resize` (half-pixel centres) does not do.

All functions take and return NHWC maps, `[B, H, W, C]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check_even(x: jax.Array, name: str) -> None:
  if x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(f"{name}: expected [B, H, W, C] with even H and W, found shape {x.shape}")


@jax.named_scope("max_pool_with_argmax")  # names its ops in profiles
def max_pool_with_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """2x2 max-pool with stride 2 that also says where each maximum was.

  Args:
    x: `[B, H, W, C]`, H and W even.

  Returns:
    pooled: `[B, H/2, W/2, C]`, the window maxima (NaN counts as the maximum, as in PyTorch).
    argmax: `[B, H/2, W/2, C]` int8, the window position of the maximum: 0 top-left, 1 top-right,
      2 bottom-left, 3 bottom-right; the first in that order on ties. The gradient of `pooled` flows
      to that position only, as in PyTorch.
  """
  _check_even(x, "max_pool_with_argmax")
  b, h, w, c = x.shape
  windows = x.reshape(b, h // 2, 2, w // 2, 2, c)
  best = windows[:, :, 0, :, 0]
  argmax = jnp.zeros(best.shape, jnp.int8)
  for position, (dy, dx) in enumerate(((0, 1), (1, 0), (1, 1)), start=1):
    candidate = windows[:, :, dy, :, dx]
    # Strictly greater: an equal value later in row-major order does not replace the first one.
    take = (candidate > best) | jnp.isnan(candidate)
    best = jnp.where(take, candidate, best)
    argmax = jnp.where(take, jnp.int8(position), argmax)
  return best, argmax


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """Plain 2x2 max-pool, stride 2: `[B, H, W, C]` -> `[B, H/2, W/2, C]` (gradient to the first max)."""
  return max_pool_with_argmax(x)[0]


@jax.named_scope("max_unpool")  # names its ops in profiles
def max_unpool(x: jax.Array, argmax: jax.Array) -> jax.Array:
  """Inverse of `max_pool_with_argmax`: each value goes back to its window position, zeros elsewhere.

  Args:
    x: `[B, h, w, C]` values, e.g. a decoder feature at the pooled resolution.
    argmax: `[B, h, w, C]` window positions from `max_pool_with_argmax`.

  Returns:
    `[B, 2h, 2w, C]`.
  """
  if x.shape != argmax.shape:
    raise ValueError(f"max_unpool: values {x.shape} and argmax {argmax.shape} must have one shape")
  b, h, w, c = x.shape
  zero = jnp.zeros((), x.dtype)
  at = [jnp.where(argmax == position, x, zero) for position in range(4)]
  top = jnp.stack(at[0:2], axis=3)  # [B, h, w, 2, C]: window row 0, columns 0 and 1
  bottom = jnp.stack(at[2:4], axis=3)
  return jnp.stack([top, bottom], axis=2).reshape(b, 2 * h, 2 * w, c)


def _upsample_axis_x2(x: jax.Array, axis: int) -> jax.Array:
  """Doubles `axis` (length n) by linear interpolation with aligned corners, in two strided halves.

  Output 2k samples input coordinate 2k (n-1) / (2n-1) = k - k / (2n-1), between x[k-1] and x[k];
  output 2k+1 samples k + (n-1-k) / (2n-1), between x[k] and x[k+1]. So
    out[2k]   = a_k x[k-1] + (1 - a_k) x[k],   a_k = k / (2n-1)
    out[2k+1] = (1 - b_k) x[k] + b_k x[k+1],   b_k = (n-1-k) / (2n-1)
  with a_0 = b_{n-1} = 0 (the corners are copied). Two neighbours per output, O(n) work: shifts,
  multiplies and adds that XLA fuses, forward and backward.
  """
  n = x.shape[axis]
  k = np.arange(n, dtype=np.float64)
  weight_shape = [1] * x.ndim
  weight_shape[axis] = n
  a = jnp.asarray((k / (2 * n - 1)).reshape(weight_shape), jnp.float32)
  b = jnp.asarray(((n - 1 - k) / (2 * n - 1)).reshape(weight_shape), jnp.float32)
  edge = jnp.zeros_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis))
  previous = jnp.concatenate([edge, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
  following = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), edge], axis=axis)
  even = a * previous + (1 - a) * x
  odd = (1 - b) * x + b * following
  out_shape = list(x.shape)
  out_shape[axis] = 2 * n
  return jnp.stack([even, odd], axis=axis + 1).reshape(out_shape)


@jax.named_scope("upsample_bilinear_x2")  # names its ops in profiles
def upsample_bilinear_x2(x: jax.Array) -> jax.Array:
  """Bilinear x2 upsampling with `align_corners=True`: `[B, H, W, C]` -> `[B, 2H, 2W, C]`.

  Separable (rows, then columns), each output a weighted sum of its two neighbours (see
  `_upsample_axis_x2`): no gather, so the backward pass has no scatter-add, and no dense
  interpolation matrix, whose product would cost O(H) or O(W) per output. Computes in float32 and
  returns x's dtype.
  """
  if x.ndim != 4:
    raise ValueError(f"upsample_bilinear_x2: expected [B, H, W, C], found shape {x.shape}")
  y = _upsample_axis_x2(x.astype(jnp.float32), axis=1)
  return _upsample_axis_x2(y, axis=2).astype(x.dtype)
