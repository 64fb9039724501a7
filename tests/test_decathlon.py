"""The Visual Decathlon's WRN-28-4 MTAN (parameters, shapes, initialisation, the import of the
reference's weights) and the challenge's score against hand-worked values."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtan_jax import decathlon
from mtan_jax import params as params_cli
from mtan_jax.decathlon import score as score_lib
from mtan_jax.models import torch_import
from mtan_jax.models import wrn
from mtan_jax.models.torch_import import load_torch_wrn_state_dict

SIZE = decathlon.IMAGE_SIZE


def abstract(model, size=SIZE):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


def test_the_parameter_count_is_the_references_by_part(capsys):
  groups = params_cli.decathlon_table()
  assert groups == {"shared WRN": 5_850_528, "shared attention f": 969_792,
                    "masks of one task": 261_344, "masks of 10 tasks": 2_613_440,
                    "heads": 803_896, "total": 10_237_656}
  assert params_cli.main(["--dataset=decathlon"]) == 0
  assert "10,237,656" in capsys.readouterr().out


def test_each_task_gives_probabilities_over_its_classes_at_72_pixels():
  model = wrn.WideResNetMTAN(decathlon.CLASSES)
  variables = abstract(model)
  image = jax.ShapeDtypeStruct((2, SIZE, SIZE, 3), jnp.float32)
  for k, classes in enumerate(decathlon.CLASSES):
    out = jax.eval_shape(functools.partial(model.apply, task=k, train=True,
                                           mutable=["batch_stats"]), variables, image)[0]
    chex.assert_shape(out, (2, classes))
  every = jax.eval_shape(functools.partial(model.apply, task=None), variables, image)
  chex.assert_shape(list(every), [(2, c) for c in decathlon.CLASSES])
  with pytest.raises(ValueError, match="task index in \\[0, 10\\), found 10"):
    jax.eval_shape(functools.partial(model.apply, task=10), variables, image)


def test_a_small_wrn_mtan_runs_and_its_outputs_are_distributions():
  """WRN-10-1 on 32x32 (the last map is 4x4, under the reference's 8x8 window: all of it is
  averaged): finite probabilities summing to 1, different per task, BN statistics updated only
  on the task's own path."""
  model = wrn.WideResNetMTAN((3, 5), depth=10, widen_factor=1)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  p, updated = model.apply(variables, x, task=1, train=True, mutable=["batch_stats"])
  chex.assert_shape(p, (4, 5))
  np.testing.assert_allclose(np.sum(p, axis=1), 1.0, rtol=1e-5)
  stats = updated["batch_stats"]
  chex.assert_trees_all_close(stats["task0_mask_0"], variables["batch_stats"]["task0_mask_0"])
  assert not np.allclose(stats["task1_mask_0"]["bn_g"]["mean"],
                         variables["batch_stats"]["task1_mask_0"]["bn_g"]["mean"])
  assert not np.allclose(stats["bn1"]["mean"], variables["batch_stats"]["bn1"]["mean"])


def test_every_layer_has_pytorchs_default_initialisation():
  """Kernels and biases uniform in +-1 / sqrt(fan_in) (fan_in = input channels x kernel area),
  BatchNorm scale 1 and bias 0, as a fresh torch.nn.Conv2d / Linear / BatchNorm2d."""
  model = wrn.WideResNetMTAN(decathlon.CLASSES[:2], depth=10, widen_factor=2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  layers = {"stem": params["conv1"], "block conv": params["layer2_0"]["conv2"],
            "shortcut": params["layer3_0"]["shortcut"],
            "shared f": params["encoder_block_att_1"]["conv"],
            "mask": params["task1_mask_3"]["conv_g"], "head": params["task0_head"]}
  for name, layer in layers.items():
    kernel = np.asarray(layer["kernel"])
    bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))
    for values in (kernel, np.asarray(layer["bias"])):
      assert np.abs(values).max() <= bound, name
      if values.size >= 64:  # uniform over the whole interval: max near the bound, variance b^2/3
        assert np.abs(values).max() > 0.9 * bound, name
        np.testing.assert_allclose(values.var(), bound ** 2 / 3, rtol=0.25, err_msg=name)
  np.testing.assert_array_equal(params["layer1_0"]["bn1"]["scale"], 1.0)
  np.testing.assert_array_equal(params["task0_mask_2"]["bn_h"]["bias"], 0.0)


def torch_state_dict(model, seed=0):
  """A state dict in the reference's names and layouts (OIHW conv weights, [out, in] linear
  weights), random values: what the reference's WideResNet.state_dict() holds."""
  rng = np.random.default_rng(seed)
  targets = torch_import._targets(abstract(model, 32),
                                  torch_import._wrn_entries(model.classes, model.depth))
  return {key: rng.normal(size=torch_import._torch_shape(conversion, shape)).astype(np.float32)
          for key, (_, _, conversion, shape) in targets.items()}


def test_the_references_weights_land_where_its_layers_are():
  model = wrn.WideResNetMTAN((3, 5), depth=10, widen_factor=1)
  state = torch_state_dict(model)
  state["layer1.0.bn1.num_batches_tracked"] = np.array(3)  # kept by PyTorch, not needed
  variables = load_torch_wrn_state_dict(state, (3, 5), depth=10, widen_factor=1)
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["layer2_0"]["conv2"]["kernel"],
                                state["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["layer3_0"]["shortcut"]["kernel"][0, 0],
                                state["layer3.0.shortcut.0.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(params["task1_head"]["kernel"], state["linear.1.0.weight"].T)
  np.testing.assert_array_equal(params["task1_mask_2"]["conv_h"]["kernel"][0, 0],
                                state["encoder_att.1.2.3.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(stats["encoder_block_att_3"]["bn"]["var"],
                                state["encoder_block_att.3.1.running_var"])
  np.testing.assert_array_equal(stats["bn1"]["mean"], state["bn1.running_mean"])
  x = jnp.ones((2, 32, 32, 3))
  chex.assert_shape(model.apply(variables, x, task=1), (2, 5))

  del state["linear.0.0.bias"]
  state["linear.2.0.weight"] = np.zeros((4, 64), np.float32)
  state["conv1.weight"] = np.zeros((16, 3, 5, 5), np.float32)
  with pytest.raises(ValueError) as error:
    load_torch_wrn_state_dict(state, (3, 5), depth=10, widen_factor=1)
  message = str(error.value)
  assert "missing entries (1):\n  linear.0.0.bias" in message
  assert "unexpected entries (1):\n  linear.2.0.weight" in message
  assert "conv1.weight: expected (16, 3, 3, 3), found (16, 3, 5, 5)" in message


def test_the_score_against_hand_worked_values():
  """1000 (1 - E / (2 E_base))^2 per dataset: the baseline's accuracies give 250 each, a
  perfect classifier 1000 each, twice the baseline's error or more 0."""
  baseline = score_lib.BASELINE_ACCURACY
  total, shares = score_lib.decathlon_score(baseline)
  assert total == pytest.approx(2500.0) and all(s == pytest.approx(250.0) for s in shares.values())
  assert score_lib.decathlon_score({n: 1.0 for n in decathlon.NAMES})[0] == pytest.approx(10000.0)
  # gtsrb at 99%: E = 0.01, E_max = 2 x 0.0247 = 0.0494, 1000 (1 - 0.01 / 0.0494)^2 = 636.12.
  assert score_lib.dataset_score("gtsrb", 0.99) == pytest.approx(636.12, abs=0.01)
  # dtd at 10%: error 0.9 beyond E_max = 0.8894: 0.
  assert score_lib.dataset_score("dtd", 0.10) == 0.0
  # The MTAN paper's row (top-1 %, server-evaluated; it prints the score 2941): the formula on
  # these rounded accuracies gives 2943.
  mtan = dict(zip(("imagenet12", "aircraft", "cifar100", "daimlerpedcls", "dtd", "gtsrb",
                   "vgg-flowers", "omniglot", "svhn", "ucf101"),
                  (63.90, 61.81, 81.59, 91.63, 56.44, 98.80, 81.04, 89.83, 96.88, 50.63)))
  total, _ = score_lib.decathlon_score({k: v / 100 for k, v in mtan.items()})
  assert round(total) == 2943
  with pytest.raises(ValueError, match="missing \\['svhn'\\]"):
    score_lib.decathlon_score({n: 0.5 for n in decathlon.NAMES if n != "svhn"})
  with pytest.raises(ValueError, match="accuracy in \\[0, 1\\], found 63.9"):
    score_lib.dataset_score("imagenet12", 63.9)
