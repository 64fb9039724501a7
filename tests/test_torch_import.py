"""Importing state dicts of the official PyTorch models.

`data/reference_state_dict_shapes.json.gz` lists the key names and shapes of the reference models'
`state_dict()` (stage widths 8, 16, 32, 64, 64), read off the official code; the tests fill them with
random arrays. Numerical agreement with the PyTorch forward pass itself was checked outside the
project (see docs/models.md, on importing weights).
"""

import gzip
import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtan_jax import tasks as tasks_lib
from mtan_jax.models import build_model, load_torch_state_dict

NYU = tasks_lib.dataset_tasks("nyuv2")
with gzip.open(pathlib.Path(__file__).parent / "data" / "reference_state_dict_shapes.json.gz",
               "rt") as f:
  REFERENCE_SHAPES = json.load(f)["models"]
WIDTH = 1 / 8  # the listing's stage widths: 8, 16, 32, 64, 64

CASES = {"single": ("single", NYU[:1]), "single_depth": ("single", NYU[1:2]),
         "stan_normal": ("stan", NYU[2:]), "split_standard": ("split_standard", NYU),
         "split_wide": ("split_wide", NYU), "split_deep": ("split_deep", NYU),
         "dense": ("dense", NYU), "cross_stitch": ("cross_stitch", NYU), "mtan": ("mtan", NYU)}


def random_state_dict(case, seed=0):
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in REFERENCE_SHAPES[case].items():
    if key.endswith("num_batches_tracked"):
      state[key] = np.asarray(7, np.int64)
    elif key.endswith("running_var"):
      state[key] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    else:
      state[key] = rng.normal(size=shape).astype(np.float32)
  return state


def leaf(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return np.asarray(tree)


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.slow) if c in ("mtan", "cross_stitch", "dense") else c
    for c in sorted(CASES)])  # the three large models: the slow tier
def test_every_reference_entry_is_imported(case):
  name, tasks = CASES[case]
  state = random_state_dict(case)
  variables = load_torch_state_dict(name, state, tasks, width_mult=WIDTH)
  model = build_model(name, tasks, width_mult=WIDTH)
  fresh = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  # Same structure and shapes as the model's own variables...
  chex.assert_trees_all_equal_shapes_and_dtypes(variables["params"], fresh["params"])
  chex.assert_trees_all_equal_shapes_and_dtypes(variables["batch_stats"], fresh["batch_stats"])
  # ... and every number of the state dict used exactly once (num_batches_tracked aside).
  imported = sorted(np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(variables)]))
  given = sorted(np.concatenate([np.ravel(v) for k, v in state.items()
                                 if not k.endswith("num_batches_tracked")]))
  np.testing.assert_array_equal(imported, given)
  outputs = model.apply(variables, jnp.ones((1, 32, 32, 3)), train=False)
  assert set(outputs) == {t.name for t in tasks}


def test_mtan_entries_land_where_the_reference_uses_them():
  state = random_state_dict("mtan", seed=1)
  v = load_torch_state_dict("mtan", state, NYU, width_mult=WIDTH)
  p, stats = v["params"], v["batch_stats"]
  # OIHW -> HWIO.
  np.testing.assert_array_equal(leaf(p, "backbone/encoder_0/block_0/conv/kernel"),
                                state["encoder_block.0.0.weight"].transpose(2, 3, 1, 0))
  # The reference numbers decoder layers backwards: its decoder_block[4] is the deepest stage.
  np.testing.assert_array_equal(leaf(p, "backbone/decoder_0/block_0/conv/bias"),
                                state["decoder_block.4.0.bias"])
  np.testing.assert_array_equal(leaf(p, "backbone/decoder_4/block_1/bn/scale"),
                                state["conv_block_dec.0.1.weight"])
  # Stages 2-4 hold two extra layers, each a Sequential of its own.
  np.testing.assert_array_equal(leaf(stats, "backbone/encoder_3/block_2/bn/var"),
                                state["conv_block_enc.3.1.1.running_var"])
  # Task i of the reference is tasks[i]; g and h are layers 0/1 and 3/4 of att_layer.
  np.testing.assert_array_equal(leaf(p, "depth_encoder_mask_3/conv_h/kernel"),
                                state["encoder_att.1.3.3.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(leaf(stats, "normal_decoder_mask_1/bn_g/mean"),
                                state["decoder_att.2.3.1.running_mean"])
  np.testing.assert_array_equal(leaf(p, "decoder_att_block_0/conv/bias"),
                                state["decoder_block_att.4.0.bias"])
  np.testing.assert_array_equal(leaf(p, "depth_head/conv_1x1/kernel"),
                                state["pred_task2.1.weight"].transpose(2, 3, 1, 0))
  # logsigma, the uncertainty weighting's log-variances, per task.
  assert {k: float(x) for k, x in v["log_variance"].items()} == pytest.approx(
      dict(zip(["segmentation", "depth", "normal"], state["logsigma"].tolist())))


def test_cross_stitch_and_dense_specific_entries():
  state = random_state_dict("cross_stitch", seed=2)
  p = load_torch_state_dict("cross_stitch", state, NYU, width_mult=WIDTH)["params"]
  np.testing.assert_array_equal(p["cross_stitch_encoder"], state["cs_unit_encoder"])
  np.testing.assert_array_equal(p["cross_stitch_decoder"], state["cs_unit_decoder"])
  np.testing.assert_array_equal(leaf(p, "normal_decoder_1/block_2/conv/bias"),
                                state["decoder_block_t.2.3.6.bias"])
  state = random_state_dict("dense", seed=3)
  p = load_torch_state_dict("dense", state, NYU, width_mult=WIDTH)["params"]
  np.testing.assert_array_equal(leaf(p, "shared_decoder_4/block_1/conv/bias"),  # the dead block
                                state["decoder_block.0.3.bias"])
  np.testing.assert_array_equal(leaf(p, "segmentation_encoder_2/block_1/bn/bias"),
                                state["encoder_block_t.0.2.4.bias"])


def numpy_conv3x3_nchw(x, weight, bias):
  """The reference's Conv2d(3x3, padding 1) in NCHW with an OIHW weight."""
  b, _, h, w = x.shape
  padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  out = np.zeros((b, weight.shape[0], h, w))
  for dy in range(3):
    for dx in range(3):
      out += np.einsum("bihw,oi->bohw", padded[:, :, dy:dy + h, dx:dx + w], weight[:, :, dy, dx])
  return out + bias[None, :, None, None]


def test_imported_first_block_computes_what_the_reference_computes():
  state = random_state_dict("single", seed=4)
  v = load_torch_state_dict("single", state, NYU[:1], width_mult=WIDTH)
  model = build_model("single", NYU[:1], width_mult=WIDTH)
  x_nchw = np.random.default_rng(5).uniform(size=(2, 3, 32, 64)).astype(np.float32)
  _, inter = model.apply(v, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), train=False,
                         capture_intermediates=True, mutable=["intermediates"])
  ours = np.asarray(inter["intermediates"]["backbone"]["encoder_0"]["block_0"]["__call__"][0])
  conv = numpy_conv3x3_nchw(x_nchw, state["encoder_block.0.0.weight"], state["encoder_block.0.0.bias"])
  bn = lambda name: state[f"encoder_block.0.1.{name}"][None, :, None, None]  # noqa: E731
  expected = np.maximum((conv - bn("running_mean")) / np.sqrt(bn("running_var") + 1e-5) * bn("weight")
                        + bn("bias"), 0)
  np.testing.assert_allclose(ours, expected.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


def test_mismatched_state_dict_lists_every_problem():
  state = random_state_dict("mtan", seed=6)
  del state["encoder_att.0.2.3.weight"]
  del state["pred_task3.1.bias"]
  state["extra_layer.weight"] = np.zeros(3, np.float32)
  state["decoder_block.4.0.weight"] = np.zeros((64, 32, 3, 3), np.float32)
  with pytest.raises(ValueError) as error:
    load_torch_state_dict("mtan", state, NYU, width_mult=WIDTH)
  message = str(error.value)
  for expected in ("missing entries (2)", "encoder_att.0.2.3.weight", "pred_task3.1.bias",
                   "unexpected entries (1)", "extra_layer.weight",
                   "entries of the wrong shape (1)",
                   "decoder_block.4.0.weight: expected (64, 64, 3, 3), found (64, 32, 3, 3)"):
    assert expected in message, message


def test_a_two_task_state_dict_does_not_fit_three_tasks():
  state = {k: v for k, v in random_state_dict("mtan").items()
           if not k.startswith(("encoder_att.2.", "decoder_att.2.", "pred_task3."))}
  state["logsigma"] = np.zeros(2, np.float32)
  variables = load_torch_state_dict("mtan", state, NYU[:2], width_mult=WIDTH)
  assert set(variables["log_variance"]) == {"segmentation", "depth"}
  with pytest.raises(ValueError, match="missing entries"):
    load_torch_state_dict("mtan", state, NYU, width_mult=WIDTH)
