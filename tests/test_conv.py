"""The convolution whose kernel gradient is a matrix product per tap on a CPU: the gradient against
a plain numpy sum, the layer's gradients against XLA's own, the rule that picks it, the fallback."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mtan_jax.models import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def numpy_kernel_gradient(x, grad, kernel_shape, padding):
  """dK[i, j, c, o] = sum_{b, y, x} X_padded[b, y + i, x + j, c] dY[b, y, x, o], by loops."""
  kh, kw, _, _ = kernel_shape
  padded = np.pad(x, ((0, 0), *padding, (0, 0)))
  height, width = grad.shape[1:3]
  out = np.zeros(kernel_shape)
  for i in range(kh):
    for j in range(kw):
      window = padded[:, i:i + height, j:j + width].reshape(-1, x.shape[-1])
      out[i, j] = window.T @ grad.reshape(-1, grad.shape[-1])
  return out


@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), ((2, 0), (0, 2)), ((0, 0), (0, 0))])
def test_the_kernel_gradient_by_taps_is_the_sum_it_stands_for(padding):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
  kernel_shape = (3, 3, 3, 5)
  out_h = 7 + sum(padding[0]) - 2
  out_w = 9 + sum(padding[1]) - 2
  grad = rng.standard_normal((2, out_h, out_w, 5)).astype(np.float32)
  got = conv.kernel_gradient_by_taps(jnp.asarray(x), jnp.asarray(grad), kernel_shape, padding)
  chex.assert_shape(got, kernel_shape)
  np.testing.assert_allclose(got, numpy_kernel_gradient(x, grad, kernel_shape, padding),
                             rtol=1e-5, atol=1e-5)


def test_the_rule_takes_large_images_whose_channels_do_not_shrink():
  assert conv.taps_pay((2, 288, 384, 64), (3, 3, 64, 128))
  assert conv.taps_pay((2, 144, 192, 128), (3, 3, 128, 128))
  assert not conv.taps_pay((2, 144, 192, 128), (3, 3, 128, 64))  # channels halve
  assert not conv.taps_pay((2, 96, 128, 64), (3, 3, 64, 128))  # a small image


def test_the_layers_gradients_are_xlas_where_the_taps_are_used():
  """A 144x192 image widening 2 -> 3 channels takes the taps on a CPU: the same loss, input
  gradient and (to float32 summation order) kernel gradient as lax.conv_general_dilated."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 144, 192, 2)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 2, 3)), jnp.float32)
  assert conv.taps_pay(x.shape, kernel.shape)
  numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, NHWC)

  def loss(function):
    return lambda x, k: jnp.sum(jnp.sin(function(x, k, (1, 1), ((1, 1), (1, 1)),
                                                 dimension_numbers=numbers)))

  ours = jax.jit(jax.value_and_grad(loss(conv.conv_general_dilated), (0, 1)))(x, kernel)
  xla = jax.value_and_grad(loss(lax.conv_general_dilated), (0, 1))(x, kernel)
  np.testing.assert_allclose(ours[0], xla[0], rtol=1e-6)
  np.testing.assert_array_equal(ours[1][0], xla[1][0])  # XLA's own input gradient
  scale = float(np.abs(xla[1][1]).max())  # sums of 27,648 products: their rounding is absolute
  np.testing.assert_allclose(ours[1][1], xla[1][1], rtol=1e-5, atol=1e-5 * scale)
  assert "platform_index" in str(jax.make_jaxpr(jax.grad(loss(conv.conv_general_dilated), 1))(
      x, kernel))  # the per-platform choice is in the program


def test_other_convolutions_are_laxs_own():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 3)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  for kwargs in ({"window_strides": (2, 2), "padding": ((1, 1), (1, 1))},
                 {"window_strides": (1, 1), "padding": "SAME"}):
    got = conv.conv_general_dilated(x, kernel, dimension_numbers=NHWC, **kwargs)
    want = lax.conv_general_dilated(x, kernel, dimension_numbers=NHWC, **kwargs)
    np.testing.assert_array_equal(got, want)
    jaxpr = str(jax.make_jaxpr(lambda k: conv.conv_general_dilated(  # noqa: B023
        x, k, dimension_numbers=NHWC, **kwargs))(kernel))  # noqa: B023
    assert "custom_vjp" not in jaxpr
