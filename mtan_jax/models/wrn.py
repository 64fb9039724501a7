"""The Visual Decathlon MTAN: a wide residual network (WRN-28-4) shared by ten classification tasks,
each with soft attention masks over the network's four group outputs and a linear head.

As the reference builds it (lorenmt/mtan, visual_decathlon/model_wrn_mtan.py):

  shared:  g_0 = conv3x3(x) (16 channels); g_1, g_2 = groups 1, 2 of n pre-activation blocks
           (BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut; 1x1 conv shortcut where the shape changes),
           every group starting with stride 2 (a standard WRN keeps stride 1 in group 1);
           g_3 = ReLU(BN(group 3)), that BN with PyTorch momentum 0.9 (90% of each new batch).
  task k:  a_j = mask_kj(g_0 if j = 0 else concat(g_j, t_{j-1})) * g_j
           t_j = f_j(a_j), max-pooled 2x2 for j < 3     (f_j: shared 3x3 conv + BN + ReLU)
           p_k = softmax(Linear_k(mean of t_3's top-left 8x8))

At 72x72 inputs t_3 is 9x9 and the reference's avg_pool2d(8) averages only its top-left 8x8 (kept);
smaller inputs (the built-in synthetic stand-in) average all of a map under 8x8. Every layer has
PyTorch's default initialisation, as the reference (its conv_init is never applied).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtan_jax.models import layers
from mtan_jax.models import pooling

# The reference's avg_pool2d window on the last map.
POOL_WINDOW = 8


def _conv(features: int, kernel: int, stride: int, dtype, name: str, fan_in: int) -> nn.Conv:
  """A PyTorch-initialised convolution with bias, padding (kernel - 1) / 2 (PyTorch's padding)."""
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=layers.torch_default_kernel,
                 bias_init=layers.torch_default_bias(fan_in), name=name)


class WideBasic(nn.Module):
  """A pre-activation residual block: `[B, H, W, Cin]` -> `[B, H / stride, W / stride, planes]`.

  BN-ReLU-conv3x3 (stride 1) then BN-ReLU-conv3x3 (stride `stride`), plus the input, through a
  1x1 conv of that stride when the stride or the width changes.
  """

  planes: int
  stride: int = 1
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cin = x.shape[-1]
    bn = lambda name: layers.BatchNorm(dtype=self.dtype, axis_name=self.bn_axis_name,  # noqa: E731
                                       name=name)
    out = _conv(self.planes, 3, 1, self.dtype, "conv1", 9 * cin)(nn.relu(bn("bn1")(x, train)))
    out = _conv(self.planes, 3, self.stride, self.dtype, "conv2", 9 * self.planes)(
        nn.relu(bn("bn2")(out, train)))
    if self.stride != 1 or cin != self.planes:
      x = _conv(self.planes, 1, self.stride, self.dtype, "shortcut", cin)(x)
    return out + x


class WideResNetMTAN(nn.Module):
  """`[B, H, W, 3]` -> task `task`'s class probabilities `[B, classes[task]]`, or, with `task`
  None, every task's (a tuple; `init` uses it so that every task's parameters exist).

  Attributes:
    classes: each task's class count, in task order (the Decathlon's: `decathlon.CLASSES`).
    depth: the WRN depth (28: 4 blocks per group).
    widen_factor: the WRN width multiplier k (group widths 16k, 32k, 64k).
    dtype: compute dtype; parameters stay float32; outputs are float32.
    bn_axis_name: device axis for global-batch BatchNorm statistics, or None.
  """

  classes: tuple[int, ...]
  depth: int = 28
  widen_factor: int = 4
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None

  @property
  def filters(self) -> tuple[int, int, int, int]:
    k = self.widen_factor
    return (16, 16 * k, 32 * k, 64 * k)

  @nn.compact
  def __call__(self, x: jax.Array, task: int | None = None,
               train: bool = False) -> jax.Array | tuple[jax.Array, ...]:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"WideResNetMTAN: expected an RGB image batch [B, H, W, 3] (NHWC), found "
                       f"shape {tuple(x.shape)}")
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNetMTAN.depth: expected 6n + 4, found {self.depth}")
    if task is not None and not 0 <= task < len(self.classes):
      raise ValueError(f"WideResNetMTAN: expected a task index in [0, {len(self.classes)}), "
                       f"found {task}")
    f, blocks = self.filters, (self.depth - 4) // 6
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)

    h = _conv(f[0], 3, 1, self.dtype, "conv1", 27)(x)
    groups = [h]
    for i in (1, 2, 3):
      for b in range(blocks):
        h = WideBasic(f[i], 2 if b == 0 else 1, name=f"layer{i}_{b}", **kw)(h, train)
      groups.append(h)
    # The last BN with PyTorch momentum 0.9: the running statistics keep 10% of their old value.
    groups[3] = nn.relu(layers.BatchNorm(momentum=0.1, dtype=self.dtype,
                                         axis_name=self.bn_axis_name, name="bn1")(h, train))
    groups = layers.shared_representation(self, groups)

    torch_init = dict(kernel_init=layers.torch_default_kernel, bias_init=layers.torch_default_bias)
    shared_f = [layers.ConvBlock(width, name=f"encoder_block_att_{j}", **torch_init, **kw)
                for j, width in enumerate((f[1], f[2], f[3], f[3]))]

    def branch(k: int) -> jax.Array:
      t = None
      for j in range(4):
        mask_in = groups[0] if j == 0 else jnp.concatenate([groups[j], t], axis=-1)
        mask = layers.AttentionMask(f[j], name=f"task{k}_mask_{j}", **torch_init, **kw)(
            mask_in, train)
        t = shared_f[j](mask * groups[j], train)
        if j < 3:
          t = pooling.max_pool_2x2(t)  # PyTorch's tie rule: zeros after the ReLU tie often
      window = min(POOL_WINDOW, t.shape[1]), min(POOL_WINDOW, t.shape[2])
      pooled = jnp.mean(t[:, :window[0], :window[1], :].astype(jnp.float32), axis=(1, 2))
      logits = nn.Dense(self.classes[k], kernel_init=layers.torch_default_kernel,
                        bias_init=layers.torch_default_bias(f[3]), name=f"task{k}_head")(pooled)
      return jax.nn.softmax(logits, axis=-1)

    if task is None:
      return tuple(branch(k) for k in range(len(self.classes)))
    return branch(task)


def used_by_task(params: dict, task: int) -> dict[str, bool]:
  """{top-level parameter name: whether task `task`'s loss reads it}: the shared network and f
  blocks, and the task's own masks and head (other tasks' start with "task{j}_")."""
  own = f"task{task}_"
  return {name: not name.startswith("task") or name.startswith(own) for name in params}


def parameter_groups(params: dict) -> dict[str, int]:
  """The parameter counts of `params` (a WideResNetMTAN's, arrays or shapes) by part: the shared
  WRN, the shared attention f blocks, one task's masks, every task's masks, the heads, the total."""
  def count(names):
    return sum(int(leaf.size) for name in names for leaf in jax.tree_util.tree_leaves(params[name]))

  tasks = sorted({int(name[4:].split("_")[0]) for name in params if name.startswith("task")})
  masks = [name for name in params if "_mask_" in name]
  f_blocks = [name for name in params if name.startswith("encoder_block_att_")]
  heads = [name for name in params if name.endswith("_head")]
  return {"shared WRN": count(set(params) - set(masks) - set(f_blocks) - set(heads)),
          "shared attention f": count(f_blocks),
          "masks of one task": count([name for name in masks if name.startswith("task0_")]),
          f"masks of {len(tasks)} tasks": count(masks),
          "heads": count(heads),
          "total": count(params)}
