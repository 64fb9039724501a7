"""The multi-task methods inside the pmapped train step, on a toy two-layer network (a shared
convolution with BatchNorm, a head per task) that compiles in about a second: the task gradients of
one forward and K batched backward passes equal K separate backward passes; every method's update is
the same on one device and on two; each model's declaration of its task-specific parameters holds."""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtan_jax import losses as losses_lib
from mtan_jax.dense import train_step as step_lib
from mtan_jax import weighting as weighting_lib
from mtan_jax.models import build_model, layers, shared_parameter_names
from mtan_jax.weighting import base
from tests.test_train import NYU, shard, synthetic_batch

SHARED = frozenset({"trunk", "trunk_bn"})
METHODS = tuple(n for n in weighting_lib.NAMES if n not in ("equal", "uncertainty", "dwa"))


class Toy(nn.Module):
  """[B, H, W, 3] -> {segmentation: 13 logits, depth: 1, normal: 3 (unit)}; BatchNorm over the
  device axis as the real models (global batch statistics)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Conv(8, (3, 3), name="trunk")(x)
    h = nn.relu(nn.BatchNorm(use_running_average=not train, axis_name=step_lib.AXIS,
                             name="trunk_bn")(h))
    self.sow("intermediates", "representation", h)
    h = layers.shared_representation(self, h)  # what the heads read of the trunk
    out = {"segmentation": nn.Conv(13, (1, 1), name="segmentation_head")(h),
           "depth": nn.Conv(1, (1, 1), name="depth_head")(h)}
    normal = nn.Conv(3, (1, 1), name="normal_head")(h)
    out["normal"] = normal / jnp.sqrt(jnp.sum(normal ** 2, axis=-1, keepdims=True) + 1e-6)
    return out


class FixedCoefficients(base.GradientWeighting):
  """Test scheme: shared update 0.3 g_seg + 1.7 g_depth - 0.5 g_normal; task weights (2, 3, 4)."""

  def combine(self, grads, losses, params, state):
    c, w = jnp.array([0.3, 1.7, -0.5]), jnp.array([2.0, 3.0, 4.0])
    return base.Combined(base.combine_gradients(grads, c), w, {**state, "weights": w},
                         jax.tree_util.tree_map(jnp.zeros_like, params))


@dataclasses.dataclass(frozen=True)
class GramProbe(base.GramWeighting):
  """Test scheme: coefficients diag(G) / trace(G) of the Gram matrix it is given; weights (2, 3, 4)."""

  def coefficients(self, gram, losses, state):
    return jnp.diag(gram) / jnp.trace(gram), jnp.array([2.0, 3.0, 4.0]), state


def run_steps(weighting, devices, count=2, lr=0.1, clip_grad_norm=0.0, batch=None):
  """`count` SGD steps of the toy network on one batch of 4 (`batch`, default synthetic scenes)
  over `devices` devices with `weighting` (a scheme or its name); returns the final state (host)
  and the initial one."""
  model, sgd = Toy(), optax.sgd(lr)
  if isinstance(weighting, str):
    weighting = weighting_lib.build(weighting, NYU)
  state = step_lib.create_train_state(model, weighting, sgd, (16, 16), 0, SHARED)
  devs = jax.local_devices()[:devices]
  train = jax.pmap(functools.partial(step_lib.train_step, model=model, weighting=weighting,
                                     optimizer=sgd, tasks=NYU, sync_batch_stats=False,
                                     shared=SHARED, clip_grad_norm=clip_grad_norm),
                   axis_name=step_lib.AXIS, devices=devs)
  replicated = step_lib.replicate(state, devs, devs)
  batch = shard(synthetic_batch(count=4, size=(16, 16)) if batch is None else batch, devices)
  for _ in range(count):
    replicated, outputs = train(replicated, batch)
    assert not bool(outputs["skipped"][0])
  return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), replicated), state


def test_one_pass_task_gradients_equal_separate_backward_passes():
  """The fixed scheme's SGD update, on 1 and 2 devices, against K separate jax.grad calls of each
  task loss of the whole batch: shared parameters move by -lr sum_k c_k g_k, task k's head by
  -lr w_k g_k."""
  batch = synthetic_batch(count=4, size=(16, 16))
  model = Toy()
  _, initial = run_steps(FixedCoefficients(NYU), 1, count=0)

  def task_loss(params, task):
    outputs = jax.vmap(  # the device axis BatchNorm expects, of size 1: the whole batch
        lambda images: model.apply({"params": params, "batch_stats": initial.batch_stats}, images,
                                   train=True, mutable=["batch_stats"])[0],
        axis_name=step_lib.AXIS)(batch["image"][None])
    loss_sum, count = losses_lib.task_loss_sums(task, outputs[task.name][0], batch[task.name])
    return loss_sum / count

  grads = [jax.grad(task_loss)(initial.params["model"], task) for task in NYU]
  c, w = [0.3, 1.7, -0.5], [2.0, 3.0, 4.0]
  expected = {}
  for name in initial.params["model"]:
    if name in SHARED:
      expected[name] = jax.tree_util.tree_map(lambda *g: -0.1 * sum(ci * gi for ci, gi in zip(c, g)),
                                              *[g[name] for g in grads])
    else:
      k = [t.name for t in NYU].index(name.removesuffix("_head"))
      expected[name] = jax.tree_util.tree_map(lambda g: -0.1 * w[k] * g, grads[k][name])
      for j, other in enumerate(grads):  # only its own task's loss depends on a head
        if j != k:
          assert all(np.all(np.asarray(g) == 0) for g in jax.tree_util.tree_leaves(other[name]))
  for devices in (1, 2):
    new, _ = run_steps(FixedCoefficients(NYU), devices, count=1)
    update = jax.tree_util.tree_map(lambda a, b: a - np.asarray(b), new.params["model"],
                                    initial.params["model"])
    chex.assert_trees_all_close(update, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(new.weighting_state["weights"], w)
  # --clip_grad_norm: the shared update scaled to norm lr * 1e-3, the heads' as they were.
  clipped, _ = run_steps(FixedCoefficients(NYU), 2, count=1, clip_grad_norm=1e-3)
  update = jax.tree_util.tree_map(lambda a, b: a - np.asarray(b), clipped.params["model"],
                                  initial.params["model"])
  shared_norm = np.sqrt(sum(np.sum(np.square(x)) for k in SHARED
                            for x in jax.tree_util.tree_leaves(update[k])))
  np.testing.assert_allclose(shared_norm, 0.1 * 1e-3, rtol=1e-3)
  chex.assert_trees_all_close(update["depth_head"], expected["depth_head"], rtol=1e-4, atol=1e-7)


def test_representation_gradients_give_the_coefficients_and_one_combined_backward_pass():
  """--task_gradients=representation against an independent computation: the heads written here in
  jnp on the trunk's output h (sown by the toy, not through its perturbation point) give each
  task's gradient of h, their Gram matrix (numpy) the probe's coefficients c; the shared parameters
  move by -lr sum_k c_k g_k (K separate jax.grad calls), each head by -lr w_k g_k; 1 and 2 devices."""
  batch = synthetic_batch(count=4, size=(16, 16))
  model = Toy()
  probe = GramProbe(NYU, task_gradients="representation")
  _, initial = run_steps(probe, 1, count=0)
  params = initial.params["model"]

  def apply(params):
    return jax.vmap(lambda images: model.apply(
        {"params": params, "batch_stats": initial.batch_stats}, images, train=True,
        mutable=["batch_stats", "intermediates"]), axis_name=step_lib.AXIS)(batch["image"][None])

  def task_loss(params, task):
    outputs, _ = apply(params)
    loss_sum, count = losses_lib.task_loss_sums(task, outputs[task.name][0], batch[task.name])
    return loss_sum / count

  def head_loss(h, task):
    head = params[f"{task.name}_head"]
    out = h @ head["kernel"][0, 0] + head["bias"]
    if task.name == "normal":
      out = out / jnp.sqrt(jnp.sum(out ** 2, axis=-1, keepdims=True) + 1e-6)
    loss_sum, count = losses_lib.task_loss_sums(task, out, batch[task.name])
    return loss_sum / count

  h = apply(params)[1]["intermediates"]["representation"][0][0]
  chex.assert_shape(h, (4, 16, 16, 8))
  by_task = np.stack([np.asarray(jax.grad(head_loss)(h, t)).ravel() for t in NYU])
  gram = by_task @ by_task.T
  c, w = np.diag(gram) / np.trace(gram), [2.0, 3.0, 4.0]
  grads = [jax.grad(task_loss)(params, task) for task in NYU]
  expected = {name: jax.tree_util.tree_map(
      lambda *g: -0.1 * sum(ci * gi for ci, gi in zip(c, g)), *[g[name] for g in grads])
      for name in SHARED}
  for k, task in enumerate(NYU):
    expected[f"{task.name}_head"] = jax.tree_util.tree_map(lambda g: -0.1 * w[k] * g,
                                                           grads[k][f"{task.name}_head"])
  for devices in (1, 2):
    new, _ = run_steps(probe, devices, count=1)
    update = jax.tree_util.tree_map(lambda a, b: a - np.asarray(b), new.params["model"], params)
    chex.assert_trees_all_close(update, expected, rtol=2e-4, atol=5e-7)
    np.testing.assert_allclose(new.weighting_state["weights"], w)


@pytest.mark.parametrize("name", ["mgda", "nash_mtl"])
def test_representation_gradients_give_the_same_update_on_one_and_two_devices(name):
  one, initial = run_steps(weighting_lib.build(name, NYU, task_gradients="representation"), 1)
  two, _ = run_steps(weighting_lib.build(name, NYU, task_gradients="representation"), 2)
  # Float32 rounding of the Gram matrix (summed in another order over two devices) reaches the
  # solved coefficients amplified by the conditioning of the solver's system (Nash-MTL's Newton
  # Hessian: ~1e2 here, weights ~18, parameter steps up to ~0.7), so the absolute tolerance is
  # stated relative to the largest parameter step, with the former 1e-6 as its floor.
  step = max(float(np.abs(a - np.asarray(b)).max()) for a, b in zip(
      jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(initial.params)))
  chex.assert_trees_all_close(two.params, one.params, rtol=1e-4, atol=max(1e-6, 2e-5 * step))
  chex.assert_trees_all_close(two.weighting_state, one.weighting_state, rtol=1e-4, atol=1e-6)
  parameters, _ = run_steps(name, 1)
  assert not np.allclose(parameters.weighting_state["weights"], one.weighting_state["weights"])


@pytest.mark.parametrize("name", METHODS)
def test_every_method_gives_the_same_update_on_one_and_two_devices(name):
  """Two steps (so that carried state, e.g. Nash-MTL's previous weights or PCGrad's key, is used):
  the task gradients are summed over devices before the solve, so the split of the batch does not
  matter."""
  one, initial = run_steps(name, 1)
  two, _ = run_steps(name, 2)
  moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - np.asarray(b)).max()),
                                 one.params["model"], initial.params["model"])
  assert max(jax.tree_util.tree_leaves(moved)) > 1e-4  # it trains
  chex.assert_trees_all_close(two.params, one.params, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(two.weighting_state, one.weighting_state, rtol=1e-4, atol=1e-6)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(one.params))


@pytest.mark.parametrize("name", ["nash_mtl", "fairgrad", "imtl"])
def test_a_batch_without_valid_depth_trains_the_other_tasks(name):
  """No valid depth pixel in the batch: depth's loss and gradient are zero, which the methods'
  weight equations cannot solve for. The step is not skipped (run_steps asserts it), depth gets
  weight 0 and its head does not move, the other tasks train."""
  batch = synthetic_batch(count=4, size=(16, 16))
  batch["depth"] = np.zeros_like(batch["depth"])  # 0: no depth measured
  state, initial = run_steps(name, 1, batch=batch)
  weights = np.asarray(state.weighting_state["weights"])
  assert weights[1] == 0 and np.all(weights[[0, 2]] > 0), weights
  chex.assert_trees_all_close(state.params["model"]["depth_head"],
                              initial.params["model"]["depth_head"])
  trunk, before = state.params["model"]["trunk"], initial.params["model"]["trunk"]
  moved = np.abs(trunk["kernel"] - np.asarray(before["kernel"]))
  assert np.all(np.isfinite(moved)) and moved.max() > 1e-4


def test_a_gradient_method_needs_the_shared_parameters():
  weighting = weighting_lib.build("mgda", NYU)
  with pytest.raises(ValueError, match="shared"):
    step_lib.train_step(None, {}, model=Toy(), weighting=weighting, optimizer=optax.sgd(0.1),
                        tasks=NYU, sync_batch_stats=False)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["mtan", "dense", "cross_stitch"])  # Split: as Cross-Stitch
def test_each_models_task_specific_parameters_feed_only_their_task(model_name):
  """The registry's declaration checked on the real model (tiny width, batch statistics as in
  training; with the initial running statistics the sigmoid masks saturate): changing
  the parameters declared task k's changes task k's output and no other's; changing a shared
  parameter group changes every task's (Dense's dead last shared block: none)."""
  model = build_model(model_name, NYU, width_mult=1 / 16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  shared = shared_parameter_names(model_name, variables["params"], NYU)
  images = jnp.asarray(synthetic_batch(count=2)["image"])
  apply = jax.jit(lambda params: model.apply({**variables, "params": params}, images, train=True,
                                             mutable=["batch_stats"])[0])
  before = apply(variables["params"])
  specific = [k for k in variables["params"] if k not in shared]
  assert shared and specific
  rng = np.random.default_rng(0)  # numpy noise: no program compiled per parameter shape
  for name in variables["params"]:
    leaves, tree = jax.tree_util.tree_flatten(variables["params"][name])
    noisy = [(np.asarray(p) * (1 + 0.1 * rng.standard_normal(p.shape))
              + 0.01 * rng.standard_normal(p.shape)).astype(np.float32) for p in leaves]
    changed_params = {**variables["params"], name: jax.tree_util.tree_unflatten(tree, noisy)}
    after = apply(changed_params)
    changed = {t.name for t in NYU if not np.array_equal(after[t.name], before[t.name])}
    if name in specific:
      owner = [t.name for t in NYU if name.startswith(f"{t.name}_")]
      assert changed == set(owner) and len(owner) == 1, (name, changed)
    elif model_name == "dense" and name == "shared_decoder_4":
      assert not changed  # the reference's dead block
    else:
      assert changed == {t.name for t in NYU}, (name, changed)
