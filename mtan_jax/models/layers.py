"""Building blocks shared by every SegNet variant, NHWC, parameters in float32.

- `BatchNorm`: PyTorch's BatchNorm2d semantics (momentum 0.1 in PyTorch's sense = 0.9 here, eps 1e-5,
  running variance updated with the *unbiased* batch variance), optionally with statistics over a
  named device axis so that the result does not depend on how the batch is split over devices.
- `PointwiseConv`: a 1x1 conv (nn.Conv's parameters) computed as a matrix product.
- `ConvBlock`: 3x3 conv (with bias, as every reference conv) + BatchNorm + ReLU.
- `AttentionMask`: MTAN's g and h: 1x1 conv + BN + ReLU, then 1x1 conv + BN + sigmoid.
- `PredictionHead`: 3x3 conv + 1x1 conv, nothing between them (as the reference).
- `task_output`: the task activations: log-softmax, identity, L2 normalisation.
- `shared_representation`: the perturbation point (`nn.Module.perturb`) where a multi-task model's
  task-specific parts read its shared network; a no-op unless the caller passes perturbations,
  whose gradients are then the task gradients of that representation.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtan_jax import tasks as tasks_lib

Dtype = Any
Initializer = Callable[..., jax.Array]

# PyTorch's xavier_normal_ / xavier_uniform_ (gain 1): fan = channels * kernel area, *untruncated*
# normal. `jax.nn.initializers.glorot_normal` is truncated, so it is not used.
xavier_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
xavier_uniform = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

# PyTorch's default initialisation of Conv2d and Linear (kaiming_uniform with a = sqrt(5)): kernel
# and bias uniform in +-1 / sqrt(fan_in), fan_in = input channels * kernel area. The Decathlon WRN
# uses it (its conv_init is never applied); the SegNet models use Xavier kernels and zero biases.
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
BiasInit = Callable[[int], Initializer]  # fan_in -> the bias initialiser


def torch_default_bias(fan_in: int) -> Initializer:
  """PyTorch's default bias initialiser for `fan_in` inputs: U(-b, b), b = fan_in^-1/2."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def zero_bias(fan_in: int) -> Initializer:
  """Zero biases (the SegNet reference's initialisation), whatever the fan-in."""
  del fan_in
  return nn.initializers.zeros


SHARED_REPRESENTATION = "shared_representation"


def shared_representation(module: nn.Module, value: Any) -> Any:
  """`value` (a pytree of what `module`'s task-specific parts read of its shared network) through
  the perturbation point `SHARED_REPRESENTATION`: unchanged unless the caller passes (or lets the
  call create) a "perturbations" collection, whose gradient is then the gradient of `value`. Not
  created by `init`, so that `model.apply(model.init(...), x)` works at any batch size."""
  if module.is_initializing():
    return value
  return module.perturb(SHARED_REPRESENTATION, value)


class BatchNorm(nn.Module):
  """Batch normalisation over `[B, H, W, C]` with PyTorch's BatchNorm2d semantics.

  Differs from `flax.linen.BatchNorm` in one way that matters for faithful training: the running
  variance is updated with the unbiased batch variance (times n / (n - 1)), as PyTorch does. Statistics
  are two-pass (mean, then mean squared deviation) in float32 whatever the compute dtype.

  Attributes:
    momentum: weight of the old running statistics (PyTorch momentum 0.1 = 0.9 here).
    epsilon: added to the variance.
    dtype: output dtype.
    axis_name: a pmap/shard_map axis over which batch statistics are averaged (global-batch BN);
      None for per-device statistics.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
    if train:
      xf = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      count = xf.size // channels
      mean = jnp.mean(xf, axis=axes)
      if self.axis_name is not None:
        mean = jax.lax.pmean(mean, self.axis_name)
        count = count * jax.lax.axis_size(self.axis_name)
      var = jnp.mean(jnp.square(xf - mean), axis=axes)
      if self.axis_name is not None:
        var = jax.lax.pmean(var, self.axis_name)
      if not self.is_initializing():
        unbiased = var * (count / max(count - 1, 1))
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased
    else:
      mean, var = running_mean.value, running_var.value
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    y = (x.astype(jnp.float32) - mean) * multiplier + bias
    return y.astype(self.dtype)


class PointwiseConv(nn.Module):
  """A 1x1 convolution, `[B, H, W, Cin]` -> `[B, H, W, features]`, computed as a matrix product.

  Its parameters are those of `nn.Conv(features, (1, 1))`: `kernel` `[1, 1, Cin, features]` (same
  initialiser, same values for the same key) and `bias` `[features]`, so checkpoints and imported
  weights are unchanged. A 1x1 convolution is a product over channels; written as one, XLA emits
  a plain matrix product, which CPUs run much faster than the general convolution (figures in the
  README's speed section).
  """

  features: int
  dtype: Dtype = jnp.float32
  kernel_init: Initializer = xavier_normal
  bias_init: BiasInit = zero_bias

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param("bias", self.bias_init(x.shape[-1]), (self.features,), jnp.float32)
    y = jnp.einsum("bhwc,cd->bhwd", x.astype(self.dtype), kernel[0, 0].astype(self.dtype))
    return y + bias.astype(self.dtype)


class ConvBlock(nn.Module):
  """3x3 conv (padding 1, with bias) + BatchNorm + ReLU: `[B, H, W, Cin]` -> `[B, H, W, features]`."""

  features: int
  dtype: Dtype = jnp.float32
  kernel_init: Initializer = xavier_normal
  bn_axis_name: str | None = None
  bias_init: BiasInit = zero_bias

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=self.kernel_init,
                bias_init=self.bias_init(9 * x.shape[-1]), name="conv")(x)
    x = BatchNorm(dtype=self.dtype, axis_name=self.bn_axis_name, name="bn")(x, train)
    return nn.relu(x)


class ConvStage(nn.Module):
  """A run of conv blocks: the reference's "conv layers" of one SegNet stage, in order.

  Attributes:
    features: output width of each reference conv layer, e.g. (128, 128, 128).
    convs_per_layer: 1, or 2 for Split-deep (each layer is two conv blocks, the second keeping width).

  Returns `(first, last)`: the output of the first reference layer (MTAN's u in the encoder) and the
  output of the stage (MTAN's p).
  """

  features: tuple[int, ...]
  convs_per_layer: int = 1
  dtype: Dtype = jnp.float32
  kernel_init: Initializer = xavier_normal
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    first = None
    block = 0
    for width in self.features:
      for _ in range(self.convs_per_layer):
        x = ConvBlock(width, self.dtype, self.kernel_init, self.bn_axis_name,
                      name=f"block_{block}")(x, train)
        block += 1
      if first is None:
        first = x
    return first, x


class AttentionMask(nn.Module):
  """MTAN's task mask (g then h): 1x1 conv + BN + ReLU, 1x1 conv + BN + sigmoid.

  `[B, H, W, Cin]` -> `[B, H, W, features]` with values in [0, 1]; the hidden width equals `features`
  in every SegNet use of the reference.
  """

  features: int
  dtype: Dtype = jnp.float32
  kernel_init: Initializer = xavier_normal
  bn_axis_name: str | None = None
  bias_init: BiasInit = zero_bias

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for name, activation in (("g", nn.relu), ("h", nn.sigmoid)):
      x = PointwiseConv(self.features, self.dtype, self.kernel_init, self.bias_init,
                        name=f"conv_{name}")(x)
      x = BatchNorm(dtype=self.dtype, axis_name=self.bn_axis_name, name=f"bn_{name}")(x, train)
      x = activation(x)
    # Kept only when the caller asks for it (apply(..., mutable=["intermediates"])), for plots.
    self.sow("intermediates", "mask", x)
    return x


class PredictionHead(nn.Module):
  """3x3 conv (keeps width) then 1x1 conv to the task's channels; no BN or activation between.

  `[B, H, W, C]` -> `[B, H, W, channels]` in float32 (the task activation follows in float32).
  The 3x3 conv runs in the compute dtype, the 1x1 in float32 whatever it is: a prediction rounded
  to bfloat16 trained surface normals 0.7 degrees worse in mean angle than float32 (quick preset,
  two seeds each); with this last layer in float32, 0.2 degrees, inside float32's spread. It is
  a 1x1 conv to a few channels, so the cost is nil.
  """

  channels: int
  dtype: Dtype = jnp.float32
  kernel_init: Initializer = xavier_normal

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(x.shape[-1], (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=self.kernel_init, name="conv_3x3")(x)
    return PointwiseConv(self.channels, jnp.float32, self.kernel_init, name="conv_1x1")(x)


def task_output(task: tasks_lib.Task, head_out: jax.Array) -> jax.Array:
  """The task's activation on its head output `[B, H, W, C]` (float32).

  Segmentation: log-probabilities over classes. Depth: raw. Normals: divided by their L2 norm, with no
  epsilon, as the reference (an all-zero prediction gives NaN there too).
  """
  return task.kind.activation(head_out)


def check_image(x: jax.Array, model: str) -> None:
  """Raises ValueError unless `x` is `[B, H, W, 3]` with H and W divisible by 32 (five 2x2 pools)."""
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"{model}: expected an RGB image batch [B, H, W, 3] (NHWC), found shape "
                     f"{tuple(x.shape)}")
  if x.shape[1] % 32 or x.shape[2] % 32:
    raise ValueError(f"{model}: expected height and width divisible by 32 (SegNet pools five times), "
                     f"found {x.shape[1]}x{x.shape[2]}")
