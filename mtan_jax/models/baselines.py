"""The paper's baselines: Single task, Split (standard / wide / deep), Dense, Cross-stitch.

STAN is `mtan.MTAN` with one task. Every model maps `[B, H, W, 3]` to `{task name: [B, H, W, C]}`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtan_jax import tasks as tasks_lib
from mtan_jax.models import layers
from mtan_jax.models import pooling
from mtan_jax.models.backbones import segnet


class SplitSegNet(nn.Module):
  """Hard parameter sharing: one SegNet, one prediction head per task on its last feature.

  With one task this is the Single-task SegNet; Split-wide uses filters ending in 1024 (2x the last
  stage), Split-deep `convs_per_layer=2`.

  Attributes:
    tasks: the tasks, in the reference's head order.
    filters: the five SegNet stage widths.
    convs_per_layer: 1 (standard, wide) or 2 (deep).
    dtype: compute dtype; parameters stay float32; outputs are float32.
    bn_axis_name: device axis for global-batch BatchNorm statistics, or None.
  """

  tasks: tuple[tasks_lib.Task, ...]
  filters: tuple[int, ...] = segnet.VGG16_FILTERS
  convs_per_layer: int = 1
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    layers.check_image(x, "SplitSegNet")
    features = segnet.SegNet(self.filters, self.convs_per_layer, self.dtype,
                             bn_axis_name=self.bn_axis_name, name="backbone")(x, train)
    # The heads' input, as a perturbation point (`--task_gradients=representation`).
    last = layers.shared_representation(self, features.decoder_out[-1])
    return {task.name: layers.task_output(
        task, layers.PredictionHead(task.channels, self.dtype, name=f"{task.name}_head")(last))
            for task in self.tasks}


class DenseSegNet(nn.Module):
  """Dense soft sharing: a shared SegNet, and per task a SegNet fed with the shared features.

  Task encoder stage k >= 1 reads `concat(task pooled_{k-1}, shared pooled_{k-1})`; task decoder stage s
  reads `concat(task unpooled_s, shared unpooled_s)` (task first, as the reference). Each network
  unpools with its own argmax. The shared decoder's last block ends in `dead_channels` outputs (the
  reference's class count) that nothing reads: it is kept, as in the reference's parameter count.
  Initialisation is Xavier-uniform.
  """

  tasks: tuple[tasks_lib.Task, ...]
  filters: tuple[int, ...] = segnet.VGG16_FILTERS
  dead_channels: int = 13
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    layers.check_image(x, "DenseSegNet")
    f = self.filters
    stage = lambda widths, name: layers.ConvStage(  # noqa: E731
        widths, 1, self.dtype, layers.xavier_uniform, self.bn_axis_name, name=name)
    encoder = segnet.encoder_widths(f)
    shared_decoder = segnet.decoder_widths(f)
    shared_decoder[4] = (f[0], self.dead_channels)
    task_decoder = segnet.decoder_widths(f)
    task_decoder[4] = (2 * f[0], f[0])

    shared_pooled, shared_argmax = [], []
    h = x
    for k, widths in enumerate(encoder):
      _, h = stage(widths, f"shared_encoder_{k}")(h, train)
      h, argmax = pooling.max_pool_with_argmax(h)
      shared_pooled.append(h)
      shared_argmax.append(argmax)
    shared_unpooled = []
    for s, widths in enumerate(shared_decoder):
      h = pooling.max_unpool(h, shared_argmax[4 - s])
      shared_unpooled.append(h)
      _, h = stage(widths, f"shared_decoder_{s}")(h, train)  # the last output is never read

    # What the task networks read of the shared one, as a perturbation point
    # (`--task_gradients=representation`); the last pooled feature feeds only the shared decoder.
    shared_pooled, shared_unpooled = layers.shared_representation(
        self, (shared_pooled[:4], shared_unpooled))
    outputs = {}
    for task in self.tasks:
      h, argmaxes = x, []
      for k, widths in enumerate(encoder):
        if k > 0:
          h = jnp.concatenate([h, shared_pooled[k - 1]], axis=-1)
        _, h = stage(widths, f"{task.name}_encoder_{k}")(h, train)
        h, argmax = pooling.max_pool_with_argmax(h)
        argmaxes.append(argmax)
      for s, widths in enumerate(task_decoder):
        h = jnp.concatenate([pooling.max_unpool(h, argmaxes[4 - s]), shared_unpooled[s]], axis=-1)
        _, h = stage(widths, f"{task.name}_decoder_{s}")(h, train)
      head = layers.PredictionHead(task.channels, self.dtype, layers.xavier_uniform,
                                   name=f"{task.name}_head")
      outputs[task.name] = layers.task_output(task, head(h))
    return outputs


class CrossStitchSegNet(nn.Module):
  """Cross-stitch baseline *as the reference implements it*.

  One SegNet per task, no shared network. Before encoder stages 1-4 and decoder stages 0-4 the task
  features are mixed as `sum_t alpha[layer, t] * feature_t`, with one learned scalar per (layer, source
  task), initialised to 1.

  This differs from Misra et al. (CVPR 2016), where each target task has its own mixing weights
  (a T x T matrix per layer, or per channel) initialised near the identity: here the mixing scalars are
  shared by every target task, so from encoder stage 1 on all task networks receive the *same* input
  and differ only through their own weights and their own pooling argmax (each task unpools the shared
  mixture with its own indices). Initialisation is Xavier-uniform.

  Parameters `cross_stitch_encoder` `[4, T]` and `cross_stitch_decoder` `[5, T]`.
  """

  tasks: tuple[tasks_lib.Task, ...]
  filters: tuple[int, ...] = segnet.VGG16_FILTERS
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    layers.check_image(x, "CrossStitchSegNet")
    f = self.filters
    n = len(self.tasks)
    alpha_encoder = self.param("cross_stitch_encoder", nn.initializers.ones, (4, n), jnp.float32)
    alpha_decoder = self.param("cross_stitch_decoder", nn.initializers.ones, (5, n), jnp.float32)
    stage = lambda widths, name: layers.ConvStage(  # noqa: E731
        widths, 1, self.dtype, layers.xavier_uniform, self.bn_axis_name, name=name)
    decoder = segnet.decoder_widths(f)
    decoder[4] = (f[0], f[0])

    def stitch(alpha: jax.Array, features: list[jax.Array]) -> jax.Array:
      return sum(alpha[t].astype(features[t].dtype) * features[t] for t in range(n))

    pooled = [x] * n
    argmaxes = [[] for _ in range(n)]
    for k, widths in enumerate(segnet.encoder_widths(f)):
      h_in = x if k == 0 else stitch(alpha_encoder[k - 1], pooled)
      for t, task in enumerate(self.tasks):
        _, h = stage(widths, f"{task.name}_encoder_{k}")(h_in, train)
        pooled[t], argmax = pooling.max_pool_with_argmax(h)
        argmaxes[t].append(argmax)
    features = pooled
    for s, widths in enumerate(decoder):
      mixed = stitch(alpha_decoder[s], features)
      features = [stage(widths, f"{task.name}_decoder_{s}")(
          pooling.max_unpool(mixed, argmaxes[t][4 - s]), train)[1]
                  for t, task in enumerate(self.tasks)]
    outputs = {}
    for t, task in enumerate(self.tasks):
      head = layers.PredictionHead(task.channels, self.dtype, layers.xavier_uniform,
                                   name=f"{task.name}_head")
      outputs[task.name] = layers.task_output(task, head(features[t]))
    return outputs
