"""The VGG-16 SegNet encoder-decoder shared by Single, STAN, Split and MTAN.

Five encoder stages, each ending in a 2x2 max-pool that keeps its argmax; five decoder stages, each
starting with the max-unpool of the mirror encoder stage. With filters (64, 128, 256, 512, 512):

  encoder j:  0: 3->64, 64->64   1: 64->128, 128->128   2..4: three convs to 256, 512, 512
  decoder j:  0: 512->512 x3     1: 512->256, 256 x2    2: 256->128, 128 x2
              3: 128->64, 64     4: 64->64, 64

Decoder stages are numbered in forward order (j = 0 is the deepest, at H/16); the reference numbers
their layers k = 4 - j.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtan_jax.models import layers
from mtan_jax.models import pooling

VGG16_FILTERS = (64, 128, 256, 512, 512)


class SegNetFeatures(NamedTuple):
  """Intermediate features of one SegNet pass, each a list of five `[B, H_j, W_j, C_j]` maps.

  encoder_first: output of each encoder stage's first conv layer (MTAN's u in the encoder).
  encoder_out: output of each encoder stage, before its pool (MTAN's p in the encoder).
  decoder_in: unpooled input of each decoder stage (MTAN's u in the decoder).
  decoder_out: output of each decoder stage (MTAN's p in the decoder); `decoder_out[4]` is the final
    64-channel feature at full resolution.
  """

  encoder_first: list[jax.Array]
  encoder_out: list[jax.Array]
  decoder_in: list[jax.Array]
  decoder_out: list[jax.Array]


def encoder_widths(filters: tuple[int, ...]) -> list[tuple[int, ...]]:
  """Output width of each conv layer of each encoder stage: two layers in stages 0-1, three after."""
  return [(f,) * (2 if j < 2 else 3) for j, f in enumerate(filters)]


def decoder_widths(filters: tuple[int, ...]) -> list[tuple[int, ...]]:
  """Output width of each conv layer of each decoder stage, in forward order (j = 0 deepest)."""
  widths = []
  for j in range(5):
    k = 4 - j
    out = filters[k - 1] if k > 0 else filters[0]
    widths.append((out,) * (2 if k < 2 else 3))
  return widths


class SegNet(nn.Module):
  """The shared SegNet: `[B, H, W, 3]` -> `SegNetFeatures` (H, W divisible by 32).

  Attributes:
    filters: the five stage widths (VGG-16: 64, 128, 256, 512, 512; Split-wide ends in 1024).
    convs_per_layer: 1, or 2 for Split-deep (every conv layer doubled).
    dtype: compute dtype; parameters stay float32.
    kernel_init: conv kernel initialiser.
    bn_axis_name: device axis for global-batch BatchNorm statistics, or None.
  """

  filters: tuple[int, ...] = VGG16_FILTERS
  convs_per_layer: int = 1
  dtype: layers.Dtype = jnp.float32
  kernel_init: layers.Initializer = layers.xavier_normal
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> SegNetFeatures:
    if len(self.filters) != 5:
      raise ValueError(f"SegNet.filters: expected five stage widths, found {self.filters}")
    stage = lambda widths, name: layers.ConvStage(  # noqa: E731
        widths, self.convs_per_layer, self.dtype, self.kernel_init, self.bn_axis_name, name=name)
    encoder_first, encoder_out, argmaxes = [], [], []
    for j, widths in enumerate(encoder_widths(self.filters)):
      first, x = stage(widths, f"encoder_{j}")(x, train)
      encoder_first.append(first)
      encoder_out.append(x)
      x, argmax = pooling.max_pool_with_argmax(x)
      argmaxes.append(argmax)
    decoder_in, decoder_out = [], []
    for j, widths in enumerate(decoder_widths(self.filters)):
      x = pooling.max_unpool(x, argmaxes[4 - j])
      decoder_in.append(x)
      _, x = stage(widths, f"decoder_{j}")(x, train)
      decoder_out.append(x)
    return SegNetFeatures(encoder_first, encoder_out, decoder_in, decoder_out)
