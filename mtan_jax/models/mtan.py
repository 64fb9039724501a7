"""MTAN: the shared SegNet plus, per task, soft attention masks in every encoder and decoder stage.

The shared SegNet runs once; then each task runs its own attention path:

  encoder stage j:  mask = g,h_task[j](u_j) for j = 0, g,h_task[j](concat(u_j, t_{j-1})) otherwise
                    t_j  = maxpool2x2(f_enc[j](mask * p_j))           (f: shared 3x3 conv block)
  decoder stage j:  s'   = f_dec[j](bilinear_up_x2_align_corners(s))   (s = t_4 at the start)
                    s    = g,h_task[j](concat(u_j, s')) * p_j

with u/p the stage's first-layer output / stage output in the encoder, and its unpooled input / stage
output in the decoder. The task head reads the last `s`; the shared decoder's output reaches the heads
only through the masks. The f convs are shared by all tasks but run once per task, and in training mode
their BatchNorm running statistics are updated once per task, in task order, as in the reference.

STAN (single-task attention network) is this model with one task.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtan_jax import tasks as tasks_lib
from mtan_jax.models import layers
from mtan_jax.models import pooling
from mtan_jax.models.backbones import segnet


class MTAN(nn.Module):
  """Multi-Task Attention Network on SegNet: `[B, H, W, 3]` -> `{task name: [B, H, W, channels]}`.

  Attributes:
    tasks: the tasks, in the order of the reference's task indices (heads pred_task1, 2, 3).
    filters: the five SegNet stage widths.
    dtype: compute dtype; parameters stay float32; outputs are float32.
    bn_axis_name: device axis for global-batch BatchNorm statistics, or None.
  """

  tasks: tuple[tasks_lib.Task, ...]
  filters: tuple[int, ...] = segnet.VGG16_FILTERS
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    layers.check_image(x, "MTAN")
    f = self.filters
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    shared = segnet.SegNet(f, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                           name="backbone")(x, train)
    # Shared f: the encoder's widens to the next stage's width, the decoder's narrows to the stage's.
    encoder_f = [layers.ConvBlock(f[min(j + 1, 4)], name=f"encoder_att_block_{j}", **kw)
                 for j in range(5)]
    decoder_f_widths = [f[4]] + [widths[-1] for widths in segnet.decoder_widths(f)[1:]]
    decoder_f = [layers.ConvBlock(width, name=f"decoder_att_block_{j}", **kw)
                 for j, width in enumerate(decoder_f_widths)]

    # What the task branches read of the shared network, each stage's (u, p), as one perturbation
    # point: its gradient is the task gradients of the shared representation (`--task_gradients`).
    encoder_reads, decoder_reads = layers.shared_representation(self, (
        [(shared.encoder_first[j], shared.encoder_out[j]) for j in range(5)],
        [(shared.decoder_in[j], shared.decoder_out[j]) for j in range(5)]))

    outputs = {}
    for task in self.tasks:
      t = None
      for j in range(5):
        u, p = encoder_reads[j]
        mask_in = u if j == 0 else jnp.concatenate([u, t], axis=-1)
        mask = layers.AttentionMask(p.shape[-1], name=f"{task.name}_encoder_mask_{j}",
                                    **kw)(mask_in, train)
        t = pooling.max_pool_2x2(encoder_f[j](mask * p, train))
      s = t
      for j in range(5):
        s = decoder_f[j](pooling.upsample_bilinear_x2(s), train)
        u, p = decoder_reads[j]
        mask = layers.AttentionMask(p.shape[-1], name=f"{task.name}_decoder_mask_{j}",
                                    **kw)(jnp.concatenate([u, s], axis=-1), train)
        s = mask * p
      head = layers.PredictionHead(task.channels, self.dtype, name=f"{task.name}_head")
      outputs[task.name] = layers.task_output(task, head(s))
    return outputs
