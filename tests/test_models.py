"""Every model of the registry: output shapes and activations at a tiny size, full-size shapes and
parameter counts through jax.eval_shape, and the wiring that distinguishes the architectures."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtan_jax import tasks as tasks_lib
from mtan_jax.dense import train_step
from mtan_jax.models import MODEL_NAMES, abstract_variables, build_model, count_parameters

NYU = tasks_lib.dataset_tasks("nyuv2")
CITY = tasks_lib.dataset_tasks("cityscapes")
TINY = 1 / 16  # stage widths 4, 8, 16, 32, 32


def model_tasks(name, tasks):
  return tasks[:1] if name in ("single", "stan") else tasks


def images(batch=2, height=64, width=64, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, height, width, 3)),
                     jnp.float32)


@functools.lru_cache(maxsize=None)
def tiny_model_and_variables(name, dataset="nyuv2"):
  tasks = model_tasks(name, NYU if dataset == "nyuv2" else CITY)
  model = build_model(name, tasks, width_mult=TINY)
  return model, train_step.init_variables(model, (32, 32), jax.random.key(0))


def check_outputs(outputs, tasks, batch, height, width):
  assert set(outputs) == {t.name for t in tasks}
  for task in tasks:
    out = outputs[task.name]
    chex.assert_shape(out, (batch, height, width, task.channels))
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)
  if "segmentation" in outputs:
    np.testing.assert_allclose(np.exp(np.asarray(outputs["segmentation"])).sum(-1), 1.0, rtol=1e-5)
  if "normal" in outputs:
    np.testing.assert_allclose(np.linalg.norm(np.asarray(outputs["normal"]), axis=-1), 1.0,
                               rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_tiny_forward_shapes_and_activations(name):
  # Evaluation mode here; training mode (batch statistics, their updates) is exercised by every
  # model's train steps in test_train.py.
  model, variables = tiny_model_and_variables(name)
  tasks = model_tasks(name, NYU)
  outputs = jax.jit(functools.partial(model.apply, train=False))(variables, images(2, 64, 96))
  check_outputs(outputs, tasks, 2, 64, 96)


def test_cityscapes_tiny_forward():
  model, variables = tiny_model_and_variables("mtan", "cityscapes")
  check_outputs(model.apply(variables, images(2, 32, 64), train=False), CITY, 2, 32, 64)


# Reference counts measured on the official PyTorch models.
NYU_COUNTS = {"split_standard": 25_055_188, "split_wide": 43_934_164, "split_deep": 50_807_764,
              "dense": 123_743_995, "cross_stitch": 74_941_807, "mtan": 44_229_076}
CITY_COUNTS = {"split_standard": 25_017_674, "split_wide": 43_896_650, "split_deep": 50_770_250,
               "dense": 90_796_895, "cross_stitch": 49_960_988, "mtan": 41_206_986}
NYU_SINGLE = {"single": (24_981_069, 24_980_289, 24_980_419),
              "stan": (38_185_805, 38_185_025, 38_185_155)}
CITY_SINGLE = {"single": (24_980_679, 24_980_289), "stan": (38_185_415, 38_185_025)}


@pytest.mark.parametrize("name", sorted(NYU_COUNTS))
def test_full_size_parameter_counts_match_the_reference(name):
  assert count_parameters(name, NYU) == NYU_COUNTS[name]
  assert count_parameters(name, CITY) == CITY_COUNTS[name]


@pytest.mark.parametrize("name", ["single", "stan"])
def test_full_size_single_task_counts_match_the_reference(name):
  assert tuple(count_parameters(name, (t,)) for t in NYU) == NYU_SINGLE[name]
  assert tuple(count_parameters(name, (t,)) for t in CITY) == CITY_SINGLE[name]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("dataset,height,width", [("nyuv2", 288, 384), ("cityscapes", 128, 256)])
def test_full_size_output_shapes_through_eval_shape(name, dataset, height, width):
  tasks = model_tasks(name, NYU if dataset == "nyuv2" else CITY)
  model = build_model(name, tasks)
  variables = abstract_variables(model)
  x = jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32)
  outputs = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  for task in tasks:
    chex.assert_shape(outputs[task.name], (2, height, width, task.channels))
  chex.assert_trees_all_equal_dtypes(variables["params"],
                                     jax.tree_util.tree_map(lambda _: jnp.zeros((), jnp.float32),
                                                            variables["params"]))


def kernel_shape(params, *path):
  for key in path:
    params = params[key]
  return params["kernel"].shape


def test_mtan_attention_widths_follow_the_reference():
  """Shared f convs and per-task g/h mask widths at full size (HWIO kernels)."""
  params = abstract_variables(build_model("mtan", NYU))["params"]
  enc_f = [(64, 128), (128, 256), (256, 512), (512, 512), (512, 512)]
  dec_f = [(512, 512), (512, 256), (256, 128), (128, 64), (64, 64)]  # forward order: k = 4 .. 0
  enc_mask = [(64, 64), (256, 128), (512, 256), (1024, 512), (1024, 512)]
  dec_mask = [(1024, 512), (768, 256), (384, 128), (192, 64), (128, 64)]
  for j in range(5):
    assert kernel_shape(params, f"encoder_att_block_{j}", "conv") == (3, 3) + enc_f[j]
    assert kernel_shape(params, f"decoder_att_block_{j}", "conv") == (3, 3) + dec_f[j]
    for task in NYU:
      cin, c = enc_mask[j]
      assert kernel_shape(params, f"{task.name}_encoder_mask_{j}", "conv_g") == (1, 1, cin, c)
      assert kernel_shape(params, f"{task.name}_encoder_mask_{j}", "conv_h") == (1, 1, c, c)
      cin, c = dec_mask[j]
      assert kernel_shape(params, f"{task.name}_decoder_mask_{j}", "conv_g") == (1, 1, cin, c)
  # The f convs exist once (shared); masks and heads once per task.
  assert sum(key.startswith("encoder_att_block") for key in params) == 5
  assert sum(key.endswith("_head") for key in params) == 3


def test_mtan_tasks_share_f_but_not_masks():
  model, variables = tiny_model_and_variables("mtan")
  x = images(2, 32, 32, seed=1)
  apply = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"])[0])
  base = apply(variables)

  def perturbed(*path):
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    node = params
    for key in path[:-1]:
      node = node[key]
    node[path[-1]] = node[path[-1]] + 0.5
    return apply({**variables, "params": params})

  # (BatchNorm scales, not conv biases: a bias before a training-mode BN cancels out.)
  # A depth mask changes the depth output only.
  out = perturbed("depth_encoder_mask_2", "bn_g", "scale")
  np.testing.assert_array_equal(out["segmentation"], base["segmentation"])
  assert not np.allclose(out["depth"], base["depth"])
  # A shared f conv changes every task.
  out = perturbed("encoder_att_block_1", "bn", "scale")
  assert all(not np.allclose(out[t.name], base[t.name]) for t in NYU)


def test_split_deep_doubles_every_conv_and_split_wide_widens_the_bottleneck():
  deep = abstract_variables(build_model("split_deep", NYU))["params"]["backbone"]
  standard = abstract_variables(build_model("split_standard", NYU))["params"]["backbone"]
  assert sum(len(stage) for stage in deep.values()) == 52
  assert sum(len(stage) for stage in standard.values()) == 26
  wide = abstract_variables(build_model("split_wide", NYU))["params"]["backbone"]
  assert kernel_shape(wide, "encoder_4", "block_0", "conv") == (3, 3, 512, 1024)
  assert kernel_shape(wide, "decoder_0", "block_0", "conv") == (3, 3, 1024, 512)


def test_dense_keeps_the_reference_dead_block():
  params = abstract_variables(build_model("dense", NYU))["params"]
  assert kernel_shape(params, "shared_decoder_4", "block_1", "conv") == (3, 3, 64, 13)
  params = abstract_variables(build_model("dense", CITY))["params"]
  assert kernel_shape(params, "shared_decoder_4", "block_1", "conv") == (3, 3, 64, 7)
  # Task decoder stage 0 reads concat(task unpooled, shared unpooled).
  assert kernel_shape(params, "depth_decoder_0", "block_0", "conv") == (3, 3, 1024, 512)


def test_cross_stitch_mixes_tasks_with_one_scalar_per_layer_and_source():
  model, variables = tiny_model_and_variables("cross_stitch")
  params = variables["params"]
  chex.assert_trees_all_close(params["cross_stitch_encoder"], jnp.ones((4, 3)))
  chex.assert_trees_all_close(params["cross_stitch_decoder"], jnp.ones((5, 3)))
  x = images(2, 32, 32, seed=2)
  apply = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"])[0])

  def seg_output(alpha_scale, bump):
    p = jax.tree_util.tree_map(lambda a: a, params)
    # Keep only the segmentation network's own features in every mixture when alpha_scale = 0.
    p["cross_stitch_encoder"] = p["cross_stitch_encoder"].at[:, 1:].multiply(alpha_scale)
    p["cross_stitch_decoder"] = p["cross_stitch_decoder"].at[:, 1:].multiply(alpha_scale)
    p["depth_encoder_0"]["block_0"]["bn"]["scale"] += bump
    return apply({**variables, "params": p})["segmentation"]

  # With the reference's mixing, the depth network's first stage reaches the segmentation output...
  assert not np.allclose(seg_output(1.0, 0.0), seg_output(1.0, 0.5))
  # ... and with its mixing weights at zero it cannot.
  np.testing.assert_allclose(seg_output(0.0, 0.0), seg_output(0.0, 0.5), rtol=1e-6)


def test_bfloat16_forward_is_close_to_float32():
  """bfloat16 compute with float32 parameters tracks float32.

  bfloat16 keeps 8 mantissa bits, so each conv block adds ~0.5% relative error; through the encoder
  that stays within a few percent (checked tightly below). In the decoder, a max-unpool routes each
  value by a discrete argmax, and near-ties flip under rounding, so the final outputs of a randomly
  initialised network are compared by agreement, not by a tight tolerance.
  """
  f32, variables = tiny_model_and_variables("mtan")
  bf16 = build_model("mtan", NYU, width_mult=TINY, dtype="bfloat16")
  x = images(2, 64, 64, seed=3)

  def run(model):
    return jax.jit(functools.partial(model.apply, train=True, capture_intermediates=True,
                                     mutable=["batch_stats", "intermediates"]))(variables, x)

  (out32, state32), (out16, state16) = run(f32), run(bf16)
  for j in range(5):
    stage32 = np.asarray(state32["intermediates"]["backbone"][f"encoder_{j}"]["__call__"][0][1])
    stage16 = state16["intermediates"]["backbone"][f"encoder_{j}"]["__call__"][0][1]
    chex.assert_type(stage16, jnp.bfloat16)
    relative = np.abs(stage32 - np.asarray(stage16, np.float32)).mean() / np.abs(stage32).mean()
    assert relative < 0.1, (j, relative)
  check_outputs(out16, NYU, 2, 64, 64)  # float32 outputs, valid probabilities and unit normals
  agree = np.mean(np.argmax(out32["segmentation"], -1) == np.argmax(out16["segmentation"], -1))
  assert agree > 0.3  # chance is 1/13
  assert np.corrcoef(np.ravel(out32["depth"]), np.ravel(out16["depth"]))[0, 1] > 0.3
  assert np.mean(np.sum(np.asarray(out32["normal"]) * np.asarray(out16["normal"]), -1)) > 0.3


def test_width_multiplier_and_explicit_filters():
  params = abstract_variables(build_model("split_standard", NYU, width_mult=0.5))["params"]
  assert kernel_shape(params, "backbone", "encoder_0", "block_0", "conv") == (3, 3, 3, 32)
  assert kernel_shape(params, "backbone", "encoder_4", "block_0", "conv") == (3, 3, 256, 256)
  params = abstract_variables(build_model("mtan", NYU, filters=(2, 4, 6, 8, 8)))["params"]
  assert kernel_shape(params, "encoder_att_block_2", "conv") == (3, 3, 6, 8)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bad_input_raises_a_clear_error(name):
  model, variables = tiny_model_and_variables(name)
  with pytest.raises(ValueError, match="divisible by 32"):
    model.apply(variables, jnp.zeros((1, 40, 64, 3)))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    model.apply(variables, jnp.zeros((1, 64, 64, 1)))


def test_registry_rejects_bad_configurations():
  with pytest.raises(ValueError, match="single-task"):
    build_model("single", NYU)
  with pytest.raises(ValueError, match="expected one of"):
    build_model("segformer", NYU)
  with pytest.raises(ValueError, match="dtype"):
    build_model("mtan", NYU, dtype="float16")
  with pytest.raises(ValueError, match="five"):
    build_model("mtan", NYU, filters=(4, 8))
  with pytest.raises(ValueError, match="distinct"):
    build_model("mtan", (NYU[0], NYU[0]))


def test_task_sets():
  assert [t.name for t in NYU] == ["segmentation", "depth", "normal"]
  assert [t.channels for t in NYU] == [13, 1, 3]
  assert [(t.name, t.channels) for t in CITY] == [("segmentation", 7), ("depth", 1)]
  assert tasks_lib.dataset_tasks("cityscapes", num_classes=19)[0].channels == 19
  assert [t.name for t in tasks_lib.dataset_tasks("nyuv2", ("normal", "depth"))] == ["normal", "depth"]
  with pytest.raises(ValueError, match="normal"):
    tasks_lib.dataset_tasks("cityscapes", ("normal",))
  with pytest.raises(ValueError, match="channels"):
    tasks_lib.Task("depth", 3)
