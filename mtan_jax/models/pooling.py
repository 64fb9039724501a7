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

import functools

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


@functools.lru_cache(maxsize=None)
def align_corners_matrix(size_in: int, size_out: int) -> np.ndarray:
  """`[size_out, size_in]` linear-interpolation weights with aligned corners (float64 numpy).

  Output position i samples input coordinate i * (size_in - 1) / (size_out - 1), so the first and the
  last samples of input and output coincide.
  """
  matrix = np.zeros((size_out, size_in))
  if size_in == 1 or size_out == 1:
    matrix[:, 0] = 1.0
    return matrix
  coords = np.arange(size_out) * (size_in - 1) / (size_out - 1)
  low = np.minimum(np.floor(coords).astype(int), size_in - 2)
  frac = coords - low
  matrix[np.arange(size_out), low] = 1.0 - frac
  matrix[np.arange(size_out), low + 1] += frac
  return matrix


@jax.named_scope("upsample_bilinear_x2")  # names its ops in profiles
def upsample_bilinear_x2(x: jax.Array) -> jax.Array:
  """Bilinear x2 upsampling with `align_corners=True`: `[B, H, W, C]` -> `[B, 2H, 2W, C]`.

  Written as two small constant matrix products (rows, then columns) rather than a gather, so the
  backward pass is a matrix product too, not a scatter-add. Computes in float32 and returns x's dtype.
  """
  _, h, w, _ = x.shape
  rows = jnp.asarray(align_corners_matrix(h, 2 * h), jnp.float32)
  cols = jnp.asarray(align_corners_matrix(w, 2 * w), jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  y = jnp.einsum("oh,bhwc->bowc", rows, x.astype(jnp.float32), precision=hi)
  return jnp.einsum("pw,bowc->bopc", cols, y, precision=hi).astype(x.dtype)
