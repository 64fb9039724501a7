"""Losses and weighting schemes against hand-worked numbers."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtan_jax import losses
from mtan_jax import tasks as tasks_lib
from mtan_jax import weighting
from mtan_jax.weighting.dwa import dwa_weights

NYU = tasks_lib.dataset_tasks("nyuv2")


def test_segmentation_nll_ignores_unlabelled_pixels():
  # Two pixels, 2 classes: probabilities (0.8, 0.2) labelled 0 and (0.4, 0.6) labelled 1, one ignored.
  log_probs = jnp.log(jnp.asarray([[[[0.8, 0.2], [0.4, 0.6], [0.5, 0.5]]]]))
  labels = jnp.asarray([[[0, 1, -1]]])
  total, count = losses.segmentation_nll(log_probs, labels)
  assert float(count) == 2
  assert float(total) == pytest.approx(-math.log(0.8) - math.log(0.6), rel=1e-6)


def test_depth_l1_over_valid_pixels():
  prediction = jnp.asarray([1.0, 2.0, 5.0, 7.0]).reshape(1, 1, 4, 1)
  target = jnp.asarray([1.5, 0.0, 4.0, 9.0]).reshape(1, 1, 4, 1)  # 0 = invalid
  total, count = losses.depth_l1(prediction, target)
  assert (float(total), float(count)) == pytest.approx((0.5 + 1.0 + 2.0, 3))


def test_normal_loss_is_one_minus_cosine():
  prediction = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]]).reshape(1, 1, 3, 3)
  target = jnp.asarray([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).reshape(1, 1, 3, 3)
  total, count = losses.normal_cosine(prediction, target)
  assert (float(total), float(count)) == pytest.approx((0.0 + 1.0, 2))


def test_reference_mask_is_the_sum_of_channels():
  # The reference marks a normal valid when its components do not sum to 0.
  target = jnp.asarray([[0.5, -0.5, 0.0], [0.0, 0.0, 1.0]]).reshape(1, 1, 2, 3)
  np.testing.assert_array_equal(losses.valid_mask(NYU[2], target), [[[0.0, 1.0]]])


def test_mean_over_devices_is_the_pixel_mean_of_the_global_batch():
  sums = jnp.asarray([3.0, 5.0, 0.0, 4.0])
  counts = jnp.asarray([1.0, 3.0, 0.0, 4.0])
  mean = jax.pmap(lambda s, c: losses.mean_over_axis(s, c, "d"), axis_name="d",
                  devices=jax.local_devices()[:4])(sums, counts)
  np.testing.assert_allclose(mean, 12.0 / 8.0)
  assert float(losses.mean_over_axis(jnp.float32(0), jnp.float32(0), None)) == 0.0


def task_losses(seg, depth, normal):
  return {"segmentation": jnp.float32(seg), "depth": jnp.float32(depth),
          "normal": jnp.float32(normal)}


def test_equal_weighting_sums_the_losses():
  w = weighting.build("equal", NYU)
  params, state = w.init()
  assert float(w.total(task_losses(1.0, 2.0, 0.5), params, state)) == pytest.approx(3.5)


def test_uncertainty_weighting_formula():
  w = weighting.build("uncertainty", NYU)
  params, state = w.init()
  chex.assert_trees_all_close(params["log_variance"],
                              {"segmentation": -0.5, "depth": -0.5, "normal": -0.5})
  params = {"log_variance": {"segmentation": jnp.float32(0.0), "depth": jnp.float32(1.0),
                             "normal": jnp.float32(-1.0)}}
  # L / (2 exp(s)) + s / 2 for each task.
  expected = (2.0 / 2 + 0.0) + (3.0 / (2 * math.e) + 0.5) + (1.0 * math.e / 2 - 0.5)
  assert float(w.total(task_losses(2.0, 3.0, 1.0), params, state)) == pytest.approx(expected,
                                                                                    rel=1e-6)
  # The gradient with respect to s_k is -L_k / (2 exp(s_k)) + 1/2.
  grad = jax.grad(lambda p: w.total(task_losses(2.0, 3.0, 1.0), p, state))(params)
  assert float(grad["log_variance"]["depth"]) == pytest.approx(-3.0 / (2 * math.e) + 0.5,
                                                               rel=1e-6)


def test_dwa_weights_formula():
  # w = L(t-1) / L(t-2) = (0.5, 1.0, 2.0); lambda = 3 softmax(w / 2).
  lam = dwa_weights(jnp.asarray([1.0, 2.0, 2.0]), jnp.asarray([2.0, 2.0, 1.0]), 2.0)
  e = np.exp(np.array([0.25, 0.5, 1.0]))
  np.testing.assert_allclose(lam, 3 * e / e.sum(), rtol=1e-6)


def test_dwa_state_over_epochs():
  w = weighting.build("dwa", NYU, temperature=2.0)
  params, state = w.init()
  epoch_losses = [(2.0, 4.0, 1.0), (1.0, 4.0, 2.0), (0.5, 4.0, 1.0)]
  for epoch, (seg, depth, normal) in enumerate(epoch_losses):
    if epoch < 2:  # the first two epochs are unweighted
      chex.assert_trees_all_close(w.weights(params, state),
                                  {"segmentation": 1.0, "depth": 1.0, "normal": 1.0})
    # Two steps per epoch whose mean is the epoch's loss.
    for delta in (-0.1, 0.1):
      state = w.observe(state, task_losses(seg + delta, depth + delta, normal + delta))
    state = w.end_epoch(state)
  # Weights for epoch 3 come from the epoch means of epochs 2 and 1: w = (0.5, 1, 0.5).
  e = np.exp(np.array([0.5, 1.0, 0.5]) / 2.0)
  expected = 3 * e / e.sum()
  got = w.weights(params, state)
  np.testing.assert_allclose([got[k] for k in ("segmentation", "depth", "normal")], expected,
                             rtol=1e-5)
  # The weights carry no gradient into the objective.
  grad = jax.grad(lambda l: w.total(l, params, state))(task_losses(1.0, 1.0, 1.0))
  np.testing.assert_allclose(grad["segmentation"], expected[0], rtol=1e-5)


def test_unknown_weighting_is_refused():
  with pytest.raises(ValueError, match="expected one of"):
    weighting.build("graddrop", NYU)  # not (yet) a scheme
