"""Pooling, unpooling and align-corners upsampling against plain-numpy implementations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtan_jax.models import pooling


def numpy_pool_with_argmax(x):
  """PyTorch MaxPool2d(2, 2, return_indices=True) semantics, one window at a time."""
  b, h, w, c = x.shape
  pooled = np.zeros((b, h // 2, w // 2, c), x.dtype)
  argmax = np.zeros((b, h // 2, w // 2, c), np.int64)
  for n in range(b):
    for i in range(h // 2):
      for j in range(w // 2):
        for ch in range(c):
          window = [x[n, 2 * i + dy, 2 * j + dx, ch] for dy in (0, 1) for dx in (0, 1)]
          best = 0
          for k in range(1, 4):
            if window[k] > window[best]:  # strictly greater: first wins ties
              best = k
          pooled[n, i, j, ch] = window[best]
          argmax[n, i, j, ch] = best
  return pooled, argmax


def numpy_unpool(values, argmax):
  b, h, w, c = values.shape
  out = np.zeros((b, 2 * h, 2 * w, c), values.dtype)
  for n in range(b):
    for i in range(h):
      for j in range(w):
        for ch in range(c):
          k = argmax[n, i, j, ch]
          out[n, 2 * i + k // 2, 2 * j + k % 2, ch] = values[n, i, j, ch]
  return out


def tie_heavy_input(seed, shape=(2, 6, 8, 3)):
  """Small integers after a ReLU: most windows hold ties, many of them all-zero."""
  rng = np.random.default_rng(seed)
  return np.maximum(rng.integers(-2, 3, size=shape), 0).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_max_pool_with_argmax_matches_numpy_with_ties(seed):
  x = tie_heavy_input(seed)
  pooled, argmax = jax.jit(pooling.max_pool_with_argmax)(jnp.asarray(x))
  chex.assert_shape(pooled, (2, 3, 4, 3))
  chex.assert_shape(argmax, (2, 3, 4, 3))
  expected_pooled, expected_argmax = numpy_pool_with_argmax(x)
  np.testing.assert_array_equal(np.asarray(pooled), expected_pooled)
  np.testing.assert_array_equal(np.asarray(argmax), expected_argmax)
  # The input really has ties that the first-position rule had to break.
  windows = x.reshape(2, 3, 2, 4, 2, 3)
  assert np.any((windows == windows.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4)) > 1)


def test_max_pool_hand_worked_window():
  # One 2x2 window [[1, 5], [5, 2]]: max 5, first at position 1 (top-right).
  x = jnp.asarray([[1.0, 5.0], [5.0, 2.0]]).reshape(1, 2, 2, 1)
  pooled, argmax = pooling.max_pool_with_argmax(x)
  assert float(pooled[0, 0, 0, 0]) == 5.0
  assert int(argmax[0, 0, 0, 0]) == 1
  restored = pooling.max_unpool(pooled, argmax)
  np.testing.assert_array_equal(np.asarray(restored)[0, :, :, 0], [[0.0, 5.0], [0.0, 0.0]])


@pytest.mark.parametrize("seed", [0, 1])
def test_max_unpool_matches_numpy(seed):
  x = tie_heavy_input(seed)
  _, argmax = pooling.max_pool_with_argmax(jnp.asarray(x))
  values = np.random.default_rng(seed + 10).normal(size=argmax.shape).astype(np.float32)
  out = jax.jit(pooling.max_unpool)(jnp.asarray(values), argmax)
  chex.assert_shape(out, x.shape)
  np.testing.assert_array_equal(np.asarray(out), numpy_unpool(values, np.asarray(argmax)))


def test_pool_gradient_goes_to_the_first_maximum_only():
  x = tie_heavy_input(3)
  weights = np.random.default_rng(4).normal(size=(2, 3, 4, 3)).astype(np.float32)
  grad = jax.grad(lambda v: jnp.sum(pooling.max_pool_2x2(v) * weights))(jnp.asarray(x))
  _, expected_argmax = numpy_pool_with_argmax(x)
  np.testing.assert_array_equal(np.asarray(grad), numpy_unpool(weights, expected_argmax))


def test_unpool_gradient_reads_back_the_argmax_position():
  x = tie_heavy_input(5)
  _, argmax = pooling.max_pool_with_argmax(jnp.asarray(x))
  upstream = np.random.default_rng(6).normal(size=x.shape).astype(np.float32)
  grad = jax.grad(lambda v: jnp.sum(pooling.max_unpool(v, argmax) * upstream))(
      jnp.zeros(argmax.shape))
  a = np.asarray(argmax)
  b, h, w, c = a.shape
  expected = np.zeros(a.shape, np.float32)
  for idx in np.ndindex(b, h, w, c):
    n, i, j, ch = idx
    expected[idx] = upstream[n, 2 * i + a[idx] // 2, 2 * j + a[idx] % 2, ch]
  np.testing.assert_allclose(np.asarray(grad), expected)


def test_nan_counts_as_the_maximum():
  x = jnp.asarray([[1.0, jnp.nan], [3.0, 2.0]]).reshape(1, 2, 2, 1)
  pooled, argmax = pooling.max_pool_with_argmax(x)
  assert np.isnan(float(pooled[0, 0, 0, 0]))
  assert int(argmax[0, 0, 0, 0]) == 1


def test_pool_rejects_odd_sizes():
  with pytest.raises(ValueError, match="even H and W"):
    pooling.max_pool_with_argmax(jnp.zeros((1, 3, 4, 1)))


def numpy_bilinear_align_corners(x, out_h, out_w):
  """Direct per-pixel bilinear interpolation with aligned corners."""
  b, h, w, c = x.shape
  out = np.zeros((b, out_h, out_w, c), np.float64)
  for i in range(out_h):
    sy = i * (h - 1) / (out_h - 1) if out_h > 1 else 0.0
    y0 = int(np.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
    for j in range(out_w):
      sx = j * (w - 1) / (out_w - 1) if out_w > 1 else 0.0
      x0 = int(np.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                      + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
  return out


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 2, 2), (1, 9, 12, 3)])
def test_upsample_bilinear_x2_align_corners_matches_numpy(shape):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  y = jax.jit(pooling.upsample_bilinear_x2)(jnp.asarray(x))
  chex.assert_shape(y, (shape[0], 2 * shape[1], 2 * shape[2], shape[3]))
  expected = numpy_bilinear_align_corners(x.astype(np.float64), 2 * shape[1], 2 * shape[2])
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
  # Aligned corners: the four corner pixels are copied exactly.
  np.testing.assert_allclose(np.asarray(y)[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]],
                             rtol=1e-6)


def test_upsample_gradient_is_the_transposed_interpolation():
  """The backward pass sends each output's gradient to its two source pixels with their weights:
  the vector-Jacobian product equals the transpose of the numpy interpolation, built column by
  column from unit inputs."""
  shape = (1, 3, 4, 2)
  upstream = np.random.default_rng(1).normal(size=(1, 6, 8, 2))
  _, vjp = jax.vjp(pooling.upsample_bilinear_x2, jnp.zeros(shape, jnp.float32))
  (grad,) = vjp(jnp.asarray(upstream, jnp.float32))
  expected = np.zeros(shape)
  for idx in np.ndindex(*shape):
    unit = np.zeros(shape)
    unit[idx] = 1.0
    expected[idx] = np.sum(numpy_bilinear_align_corners(unit, 6, 8) * upstream)
  chex.assert_shape(grad, shape)
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-6)


def test_upsample_differs_from_half_pixel_resize():
  x = jnp.asarray(np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1))
  ours = pooling.upsample_bilinear_x2(x)
  half_pixel = jax.image.resize(x, (1, 8, 8, 1), "bilinear")
  assert not np.allclose(np.asarray(ours), np.asarray(half_pixel))


def test_upsample_keeps_bfloat16():
  x = jnp.ones((1, 2, 2, 3), jnp.bfloat16)
  y = pooling.upsample_bilinear_x2(x)
  chex.assert_type(y, jnp.bfloat16)
  np.testing.assert_allclose(np.asarray(y, np.float32), 1.0)
