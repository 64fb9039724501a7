"""The train step itself: every model and weighting learns, device-count invariance,
rematerialisation, per-device BatchNorm, non-finite steps skipped on every device."""

import functools

import chex
import flax
import jax
import numpy as np
import optax
import pytest

from mtan_jax.dense import train_step as step_lib
from mtan_jax import weighting as weighting_lib
from mtan_jax.models import MODEL_NAMES, build_model
from tests.test_train import NYU, shard, synthetic_batch

pytestmark = pytest.mark.slow  # every test here compiles and runs train steps


def steps(name, weighting_name, optimizer, devices=1, count=6, tasks=NYU, seed=0):
  """`count` train steps on one fixed batch; returns the losses, the final and the initial state."""
  tasks = tasks[:1] if name in ("single", "stan") else tasks
  model = build_model(name, tasks, width_mult=1 / 16, bn_axis_name=step_lib.AXIS)
  weighting = weighting_lib.build(weighting_name, tasks)
  state = step_lib.create_train_state(model, weighting, optimizer, (32, 32), seed)
  devs = jax.local_devices()[:devices]
  train = jax.pmap(functools.partial(step_lib.train_step, model=model, weighting=weighting,
                                     optimizer=optimizer, tasks=tasks, sync_batch_stats=False),
                   axis_name=step_lib.AXIS, devices=devs, donate_argnums=(0,))
  replicated = step_lib.replicate(state, devs, devs)
  batch = shard(synthetic_batch(), devices)
  losses = []
  for _ in range(count):
    replicated, outputs = train(replicated, batch)
    losses.append(float(outputs["loss"][0]))
  return losses, jax.tree_util.tree_map(lambda x: np.asarray(x[0]), replicated), state


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_lowers_the_training_loss(name):
  # The models with a network per task (or per task's attention) on two of NYUv2's three tasks:
  # their step compiles in about two thirds of the time; every task's branch is the same code.
  tasks = NYU[:2] if name in ("mtan", "dense", "cross_stitch") else NYU
  losses, state, initial = steps(name, "equal", step_lib.make_optimizer(1e-3, 0), tasks=tasks)
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.99 * losses[0], losses  # a zero or wrong-signed gradient fails
  assert int(state.step) == 6
  # Training mode moved every BatchNorm's running statistics away from their initial (0, 1).
  moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != np.asarray(b))),
                                 state.batch_stats, initial.batch_stats)
  assert all(jax.tree_util.tree_leaves(moved))


@pytest.mark.parametrize("weighting_name", ["equal", "uncertainty", "dwa"])  # the paper's; the
def test_every_weighting_lowers_its_objective(weighting_name):  # others: test_mtl_step.py
  losses, state, _ = steps("split_standard", weighting_name, step_lib.make_optimizer(1e-3, 0))
  assert losses[-1] < 0.99 * losses[0], losses  # a zero or wrong-signed gradient fails
  if weighting_name == "uncertainty":  # the log-variances are trained with the network
    assert all(abs(float(v) + 0.5) > 1e-4 for v in state.params["weighting"]["log_variance"].values())
  if weighting_name == "dwa":  # six observed steps of the current epoch
    assert int(state.weighting_state["epoch_steps"]) == 6


def test_the_same_global_batch_gives_the_same_update_on_1_and_8_devices():
  """Global-batch BatchNorm, pixel means over the global batch, summed gradients: one SGD step on
  8 images is the same on one device and on eight (one image each), uncertainty weights included."""
  batch = synthetic_batch(count=8)
  model = build_model("split_standard", NYU, width_mult=1 / 16, bn_axis_name=step_lib.AXIS)
  weighting = weighting_lib.build("uncertainty", NYU)
  sgd = optax.sgd(0.05)
  state = step_lib.create_train_state(model, weighting, sgd, (32, 32), 0)
  results = {}
  for devices in (1, 8):
    devs = jax.local_devices()[:devices]
    train = jax.pmap(functools.partial(step_lib.train_step, model=model, weighting=weighting,
                                       optimizer=sgd, tasks=NYU, sync_batch_stats=False),
                     axis_name=step_lib.AXIS, devices=devs)
    new, outputs = train(step_lib.replicate(state, devs, devs), shard(batch, devices))
    results[devices] = (jax.tree_util.tree_map(lambda x: np.asarray(x[0]), new), outputs)
  (one, out_one), (eight, out_eight) = results[1], results[8]
  np.testing.assert_allclose(out_one["loss"][0], out_eight["loss"][0], rtol=1e-5)
  compared = assert_same_update(eight, one, state, 1e-2)
  assert len(compared) > 50 and ("weighting", "log_variance", "depth") in compared
  chex.assert_trees_all_close(one.batch_stats, eight.batch_stats, rtol=1e-4, atol=1e-5)


def assert_same_update(new, expected, initial, rtol):
  """Asserts that `new.params - initial.params` is `expected`'s update, leaf by leaf, within `rtol`
  of each leaf's norm; returns the leaves compared. Leaves with a negligible update are skipped: the
  conv biases before a BatchNorm get a gradient of exactly zero in theory, rounding noise in fact."""
  update = lambda s: flax.traverse_util.flatten_dict(jax.tree_util.tree_map(  # noqa: E731
      lambda a, b: a - np.asarray(b), s.params, initial.params))
  ours, theirs = update(new), update(expected)
  largest = max(np.linalg.norm(v) for v in theirs.values())
  compared = [key for key, value in theirs.items() if np.linalg.norm(value) > 1e-4 * largest]
  for key in compared:
    assert np.linalg.norm(ours[key] - theirs[key]) <= rtol * np.linalg.norm(theirs[key]), key
  return compared


def test_rematerialisation_changes_memory_not_the_update():
  """With `remat` the backward pass recomputes BatchNorm, masks, pooling and upsampling from the
  saved conv outputs: the step's update and statistics are those of the plain step (float rounding
  aside), and XLA's memory analysis of the compiled step shows fewer temporaries."""
  batch = shard(synthetic_batch(count=2), 1)
  tasks = NYU[:1]  # STAN: MTAN's attention path for one task, compiled in a third of the time
  model = build_model("stan", tasks, width_mult=1 / 16, bn_axis_name=step_lib.AXIS)
  weighting = weighting_lib.build("equal", tasks)
  sgd = optax.sgd(0.05)
  state = step_lib.create_train_state(model, weighting, sgd, (32, 32), 0)
  devs = jax.local_devices()[:1]
  results, temporaries = {}, {}
  for remat in (False, True):
    train = jax.pmap(functools.partial(step_lib.train_step, model=model, weighting=weighting,
                                       optimizer=sgd, tasks=tasks, sync_batch_stats=False,
                                       remat=remat), axis_name=step_lib.AXIS, devices=devs)
    replicated = step_lib.replicate(state, devs, devs)
    compiled = train.lower(replicated, batch).compile()
    temporaries[remat] = compiled.memory_analysis().temp_size_in_bytes
    new, outputs = compiled(replicated, batch)
    results[remat] = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), (new, outputs))
  (plain, plain_out), (remat, remat_out) = results[False], results[True]
  chex.assert_trees_all_close(remat_out["task_losses"], plain_out["task_losses"], rtol=1e-6)
  assert len(assert_same_update(remat, plain, state, 1e-3)) > 50
  chex.assert_trees_all_close(remat.batch_stats, plain.batch_stats, rtol=1e-5, atol=1e-6)
  assert temporaries[True] < 0.75 * temporaries[False], temporaries


def test_per_device_batchnorm_keeps_the_replicas_running_statistics_identical():
  batch = shard(synthetic_batch(count=4), 2)
  model = build_model("split_standard", NYU, width_mult=1 / 16)  # no axis: per-device statistics
  weighting = weighting_lib.build("equal", NYU)
  sgd = optax.sgd(0.05)
  state = step_lib.create_train_state(model, weighting, sgd, (32, 32), 0)
  devs = jax.local_devices()[:2]
  stats = {}
  for sync in (False, True):
    train = jax.pmap(functools.partial(step_lib.train_step, model=model, weighting=weighting,
                                       optimizer=sgd, tasks=NYU, sync_batch_stats=sync),
                     axis_name=step_lib.AXIS, devices=devs)
    new, _ = train(step_lib.replicate(state, devs, devs), batch)
    stats[sync] = jax.tree_util.tree_map(np.asarray, new.batch_stats)
  leaf = lambda tree: tree["backbone"]["encoder_0"]["block_0"]["bn"]["mean"]  # noqa: E731
  assert not np.allclose(leaf(stats[False])[0], leaf(stats[False])[1])  # replicas drift apart
  np.testing.assert_array_equal(leaf(stats[True])[0], leaf(stats[True])[1])  # ... unless synced
  np.testing.assert_allclose(leaf(stats[True])[0], leaf(stats[False]).mean(0), rtol=1e-5)


def test_a_non_finite_step_is_skipped_in_the_jitted_step():
  model = build_model("split_standard", NYU, width_mult=1 / 16, bn_axis_name=step_lib.AXIS)
  weighting = weighting_lib.build("dwa", NYU)
  adam = step_lib.make_optimizer(1e-3, 0)
  state = step_lib.create_train_state(model, weighting, adam, (32, 32), 0)
  devs = jax.local_devices()[:2]
  train = jax.pmap(functools.partial(step_lib.train_step, model=model, weighting=weighting,
                                     optimizer=adam, tasks=NYU, sync_batch_stats=False),
                   axis_name=step_lib.AXIS, devices=devs)
  batch = synthetic_batch(count=4)
  poisoned = dict(batch, depth=batch["depth"].copy())
  poisoned["depth"][3, 5, 5, 0] = np.inf  # one pixel of one device's share
  before = step_lib.replicate(state, devs, devs)
  after, outputs = train(before, shard(poisoned, 2))
  assert np.all(np.asarray(outputs["skipped"]))  # on every device
  assert not np.isfinite(float(outputs["task_losses"]["depth"][0]))
  assert np.isfinite(float(outputs["task_losses"]["segmentation"][0]))
  unchanged = lambda s: (s.params, s.opt_state, s.batch_stats, s.weighting_state)  # noqa: E731
  chex.assert_trees_all_equal(unchanged(after), unchanged(before))
  assert int(after.step[0]) == 1
  clean, outputs = train(after, shard(batch, 2))
  assert not np.any(np.asarray(outputs["skipped"]))
  assert not np.array_equal(np.asarray(jax.tree_util.tree_leaves(clean.params)[0]),
                            np.asarray(jax.tree_util.tree_leaves(after.params)[0]))
