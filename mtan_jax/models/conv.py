"""A convolution whose kernel gradient is computed as matrix products on a CPU.

XLA's CPU backend lowers the kernel gradient of a 3x3 convolution (a convolution of the input with
the output's gradient over the whole image) about nine times slower than the forward convolution:
at 288x384, 64 -> 128 channels, batch 2 on a 2-core CPU, 0.90 s against 0.10 s, where PyTorch
takes about 0.13 s. MTAN's training step spends half its time there. `conv_general_dilated`
computes the same gradient as one matrix product per kernel tap,

    dK[i, j] = sum over b, y, x of  X_padded[b, y + i, x + j, :]^T  dY[b, y, x, :]   ([Cin, Cout]),

which XLA runs near the machine's matrix-product speed (0.28 s in the case above), where that pays
(`taps_pay`: large images, channels kept or widened). The forward pass and the input's gradient
are XLA's own; other backends (GPU, TPU) keep XLA's kernel gradient (`lax.platform_dependent`),
as do strided, dilated or grouped convolutions and other layouts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, tuple) and all(isinstance(d, str) for d in dimension_numbers):
    return tuple(dimension_numbers) == _NHWC
  return tuple(dimension_numbers) == tuple(lax.conv_dimension_numbers(
      (1, 1, 1, 1), (1, 1, 1, 1), _NHWC))


def _forward(x, kernel, padding, precision):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC,
                                  precision=precision)


def kernel_gradient_by_taps(x: jax.Array, grad: jax.Array, kernel_shape, padding,
                            precision=None) -> jax.Array:
  """The kernel gradient of a stride-1 NHWC convolution, one matrix product per tap: tap (i, j)
  is the product of the padded input shifted by (i, j) with the output's gradient, summed over
  the batch and the pixels.

  Args:
    x: the convolution's input `[B, H, W, Cin]`.
    grad: the gradient of its output `[B, H', W', Cout]`.
    kernel_shape: `(kh, kw, Cin, Cout)`.
    padding: `((top, bottom), (left, right))`.
  Returns `[kh, kw, Cin, Cout]` in `x`'s dtype, accumulated in float32.
  """
  kh, kw, cin, _ = kernel_shape
  height, width = grad.shape[1], grad.shape[2]
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  flat_grad = grad.reshape(-1, grad.shape[-1])

  def tap(i, j):
    shifted = lax.slice(padded, (0, i, j, 0), (padded.shape[0], i + height, j + width, cin))
    return lax.dot_general(shifted.reshape(-1, cin), flat_grad, (((0,), (0,)), ((), ())),
                           precision=precision, preferred_element_type=jnp.float32)

  return jnp.stack([jnp.stack([tap(i, j) for j in range(kw)]) for i in range(kh)]).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, padding, precision):
  return _forward(x, kernel, padding, precision)


def _conv_fwd(x, kernel, padding, precision):
  return _forward(x, kernel, padding, precision), (x, kernel)


def _conv_bwd(padding, precision, residuals, grad):
  x, kernel = residuals
  dx, = jax.vjp(lambda x: _forward(x, kernel, padding, precision), x)[1](grad)

  def xla_kernel_gradient(x, grad):
    return jax.vjp(lambda k: _forward(x, k, padding, precision), kernel)[1](grad)[0]

  if not taps_pay(x.shape, kernel.shape):
    return dx, xla_kernel_gradient(x, grad)
  dk = lax.platform_dependent(
      x, grad, cpu=lambda x, g: kernel_gradient_by_taps(x, g, kernel.shape, padding, precision),
      default=xla_kernel_gradient)
  return dx, dk.astype(kernel.dtype)


def taps_pay(x_shape, kernel_shape) -> bool:
  """Whether `kernel_gradient_by_taps` is used (on a CPU): for convolutions that keep or widen
  their channels on images of at least 144x192 pixels. Measured on the SegNet's 3x3 shapes at
  batch 2 on a 2-core CPU, it is 1.5x to 3.3x faster than XLA's there (288x384, 64 -> 128: 0.29 s
  against 0.76 s); on smaller images, or where the channels halve, XLA's is as fast or faster
  (96x128, 64 -> 128: 0.03 s against 0.02 s)."""
  _, height, width, _ = x_shape
  _, _, cin, cout = kernel_shape
  return cout >= cin and height * width >= 144 * 192


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` (the signature `nn.Conv` calls), with the kernel gradient of
  stride-1, undilated, ungrouped NHWC convolutions with explicit padding computed by
  `kernel_gradient_by_taps` on a CPU where `taps_pay`. Anything else is
  `lax.conv_general_dilated` itself."""
  simple = (tuple(window_strides) == (1, 1) and not isinstance(padding, str)
            and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
            and feature_group_count == 1 and batch_group_count == 1
            and preferred_element_type is None and _is_nhwc(dimension_numbers))
  if not simple:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  padding = tuple((int(a), int(b)) for a, b in padding)
  return _conv(lhs, rhs, padding, precision)
