"""BatchNorm, conv block, attention mask, heads and initialisers against plain numpy."""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtan_jax import tasks as tasks_lib
from mtan_jax.models import layers


def numpy_conv3x3(x, kernel, bias):
  """'Same' 3x3 convolution (cross-correlation, as PyTorch), x [B,H,W,Cin], kernel [3,3,Cin,Cout]."""
  b, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((b, h, w, kernel.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      out += padded[:, dy:dy + h, dx:dx + w] @ kernel[dy, dx]
  return out + bias


def test_batchnorm_train_normalises_and_updates_running_stats_as_pytorch():
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(2, 3, 4, 5)).astype(np.float32)
  bn = layers.BatchNorm()
  variables = bn.init(jax.random.key(0), jnp.asarray(x), train=True)
  # Initialisation leaves the running statistics at PyTorch's (0, 1).
  chex.assert_trees_all_close(variables["batch_stats"], {"mean": np.zeros(5), "var": np.ones(5)})
  y, updates = bn.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
  flat = x.reshape(-1, 5).astype(np.float64)
  mean, var = flat.mean(0), flat.var(0)
  expected = (x - mean) / np.sqrt(var + 1e-5)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
  n = flat.shape[0]  # 24 values per channel: unbiased variance = var * 24 / 23
  chex.assert_trees_all_close(updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
  chex.assert_trees_all_close(updates["batch_stats"]["var"], 0.9 + 0.1 * var * n / (n - 1),
                              rtol=1e-5)


def test_batchnorm_eval_uses_running_stats_and_affine_params():
  x = np.random.default_rng(1).normal(size=(2, 2, 2, 3)).astype(np.float32)
  variables = {"params": {"scale": jnp.asarray([1.0, 2.0, 0.5]), "bias": jnp.asarray([0.0, 1.0, -1.0])},
               "batch_stats": {"mean": jnp.asarray([0.5, -0.5, 0.0]), "var": jnp.asarray([4.0, 1.0, 0.25])}}
  y = layers.BatchNorm().apply(variables, jnp.asarray(x), train=False)
  expected = ((x - [0.5, -0.5, 0.0]) / np.sqrt(np.asarray([4.0, 1.0, 0.25]) + 1e-5)
              * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0])
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-6)


def test_batchnorm_over_a_device_axis_equals_the_global_batch():
  devices = jax.local_devices()[:4]
  assert len(devices) == 4, "conftest asks for 8 host devices"
  x = np.random.default_rng(2).normal(1.0, 2.0, size=(8, 3, 3, 4)).astype(np.float32)
  bn = layers.BatchNorm(axis_name="batch")
  variables = layers.BatchNorm().init(jax.random.key(0), jnp.asarray(x), train=True)
  y_global, updates_global = layers.BatchNorm().apply(variables, jnp.asarray(x), train=True,
                                                      mutable=["batch_stats"])
  sharded = jax.pmap(lambda v, xs: bn.apply(v, xs, train=True, mutable=["batch_stats"]),
                     axis_name="batch", in_axes=(None, 0), devices=devices)
  y, updates = sharded(variables, jnp.asarray(x.reshape(4, 2, 3, 3, 4)))
  np.testing.assert_allclose(np.asarray(y).reshape(x.shape), np.asarray(y_global), rtol=1e-5,
                             atol=1e-5)
  chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[0], updates), updates_global,
                              rtol=1e-5)
  # Per-device statistics (no axis name) differ: the shards have different means.
  y_local, _ = jax.pmap(lambda v, xs: layers.BatchNorm().apply(v, xs, train=True,
                                                                mutable=["batch_stats"]),
                        in_axes=(None, 0), devices=devices)(variables,
                                                            jnp.asarray(x.reshape(4, 2, 3, 3, 4)))
  assert not np.allclose(np.asarray(y_local).reshape(x.shape), np.asarray(y_global), atol=1e-3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pointwise_conv_is_a_1x1_conv_with_the_same_parameters(dtype):
  x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 3, 4, 5)), jnp.float32)
  ours = layers.PointwiseConv(6, dtype)
  conv = flax.linen.Conv(6, (1, 1), dtype=dtype, param_dtype=jnp.float32,
                         kernel_init=layers.xavier_normal)
  variables = ours.init(jax.random.key(3), x)
  # The same parameter tree, shapes and initial values as the convolution's (checkpoints, import).
  chex.assert_trees_all_equal(variables, conv.init(jax.random.key(3), x))
  variables = jax.tree_util.tree_map(lambda v: v + 0.1, variables)  # a non-zero bias too
  y = ours.apply(variables, x)
  chex.assert_shape(y, (2, 3, 4, 6))
  chex.assert_type(y, dtype)
  params = variables["params"]
  expected = (np.asarray(x, np.float64) @ np.asarray(params["kernel"][0, 0], np.float64)
              + np.asarray(params["bias"]))
  tolerance = 1e-5 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(np.asarray(y, np.float32), expected, rtol=tolerance, atol=tolerance)
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray(conv.apply(variables, x), np.float32), rtol=tolerance,
                             atol=tolerance)


def test_conv_block_is_conv_bn_relu():
  x = np.random.default_rng(3).normal(size=(2, 4, 5, 3)).astype(np.float32)
  block = layers.ConvBlock(6)
  variables = block.init(jax.random.key(1), jnp.asarray(x), train=False)
  kernel = np.asarray(variables["params"]["conv"]["kernel"])
  chex.assert_shape(kernel, (3, 3, 3, 6))
  conv = numpy_conv3x3(x, kernel, 0.0)  # bias initialised to 0
  expected = np.maximum((conv - conv.reshape(-1, 6).mean(0))
                        / np.sqrt(conv.reshape(-1, 6).var(0) + 1e-5), 0)
  y, _ = block.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-4)
  assert set(variables["params"]["conv"]) == {"kernel", "bias"}  # every conv has a bias


def test_attention_mask_matches_numpy_and_lies_in_unit_interval():
  x = np.random.default_rng(4).normal(size=(2, 4, 4, 6)).astype(np.float32)
  mask_module = layers.AttentionMask(3)
  variables = mask_module.init(jax.random.key(2), jnp.asarray(x), train=False)
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  # Eval mode with fresh running stats (0, 1): BN is x / sqrt(1 + eps).
  g = np.maximum((x @ p["conv_g"]["kernel"][0, 0] + p["conv_g"]["bias"]) / np.sqrt(1 + 1e-5), 0)
  h = (g @ p["conv_h"]["kernel"][0, 0] + p["conv_h"]["bias"]) / np.sqrt(1 + 1e-5)
  expected = 1 / (1 + np.exp(-h))
  mask = mask_module.apply(variables, jnp.asarray(x), train=False)
  chex.assert_shape(mask, (2, 4, 4, 3))
  np.testing.assert_allclose(np.asarray(mask), expected, rtol=1e-5, atol=1e-6)
  train_mask, _ = mask_module.apply(variables, jnp.asarray(100 * x), train=True,
                                    mutable=["batch_stats"])
  assert float(jnp.min(train_mask)) >= 0.0 and float(jnp.max(train_mask)) <= 1.0


def test_prediction_head_is_two_convs_without_activation():
  x = np.random.default_rng(5).normal(size=(1, 4, 4, 8)).astype(np.float32)
  head = layers.PredictionHead(2)
  variables = head.init(jax.random.key(3), jnp.asarray(x))
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  chex.assert_shape(p["conv_3x3"]["kernel"], (3, 3, 8, 8))
  chex.assert_shape(p["conv_1x1"]["kernel"], (1, 1, 8, 2))
  expected = numpy_conv3x3(x, p["conv_3x3"]["kernel"], p["conv_3x3"]["bias"]) @ \
      p["conv_1x1"]["kernel"][0, 0] + p["conv_1x1"]["bias"]
  y = head.apply(variables, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-5)
  assert "batch_stats" not in variables


def test_prediction_head_in_bfloat16_computes_its_last_layer_in_float32():
  """The 3x3 conv runs in the compute dtype, the last 1x1 in float32 on its output, so the
  prediction is not rounded to bfloat16 (rounded normals trained 0.7 degrees worse)."""
  x = np.random.default_rng(6).normal(size=(2, 4, 4, 8)).astype(np.float32)
  head = layers.PredictionHead(3, dtype=jnp.bfloat16)
  variables = head.init(jax.random.key(4), jnp.asarray(x))
  y, state = head.apply(variables, jnp.asarray(x), capture_intermediates=True)
  features = state["intermediates"]["conv_3x3"]["__call__"][0]
  chex.assert_shape([features, y], [(2, 4, 4, 8), (2, 4, 4, 3)])
  chex.assert_type([features, y], [jnp.bfloat16, jnp.float32])
  p = jax.tree_util.tree_map(np.asarray, variables["params"]["conv_1x1"])
  expected = np.asarray(features, np.float32) @ p["kernel"][0, 0] + p["bias"]
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-6)
  assert not np.array_equal(np.asarray(y), np.asarray(y.astype(jnp.bfloat16), np.float32))


def test_xavier_normal_is_untruncated_with_pytorch_std():
  shape = (3, 3, 256, 256)
  w = np.asarray(layers.xavier_normal(jax.random.key(0), shape, jnp.float32))
  std = np.sqrt(2.0 / (256 * 9 + 256 * 9))  # PyTorch xavier_normal_: fan = channels * k * k
  assert abs(w.std() / std - 1) < 0.01
  # A normal has ~1.2% of its mass beyond 2.5 std; jax's glorot_normal truncates at 2 std.
  assert 0.008 < np.mean(np.abs(w) > 2.5 * std) < 0.016


def test_xavier_uniform_bound_matches_pytorch():
  shape = (3, 3, 64, 128)
  w = np.asarray(layers.xavier_uniform(jax.random.key(0), shape, jnp.float32))
  bound = np.sqrt(6.0 / (64 * 9 + 128 * 9))
  assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound


def test_task_outputs():
  logits = jnp.asarray(np.random.default_rng(6).normal(size=(2, 3, 3, 5)).astype(np.float32))
  seg = layers.task_output(tasks_lib.segmentation(5), logits)
  np.testing.assert_allclose(np.exp(np.asarray(seg)).sum(-1), 1.0, rtol=1e-6)
  raw = layers.task_output(tasks_lib.depth(), logits[..., :1])
  np.testing.assert_array_equal(np.asarray(raw), np.asarray(logits[..., :1]))
  normal = layers.task_output(tasks_lib.normal(), jnp.asarray([[[[3.0, 0.0, 4.0]]]]))
  np.testing.assert_allclose(np.asarray(normal), [[[[0.6, 0.0, 0.8]]]], rtol=1e-6)


@pytest.mark.parametrize("shape,match", [((1, 64, 64, 4), "RGB"), ((64, 64, 3), "RGB"),
                                         ((1, 48, 64, 3), "divisible by 32")])
def test_check_image_rejects_bad_input(shape, match):
  with pytest.raises(ValueError, match=match):
    layers.check_image(jnp.zeros(shape), "model")
