"""The reference's augmentation: resampling rules against numpy loops, and its invariants."""

import chex
import numpy as np
import pytest

from mtan_jax.data import augment


def loop_bilinear_align_corners(x, height, width):
  h, w = x.shape[:2]
  out = np.zeros((height, width, x.shape[2]))
  for i in range(height):
    sy = i * (h - 1) / (height - 1)
    y0 = min(int(np.floor(sy)), h - 2); fy = sy - y0
    for j in range(width):
      sx = j * (w - 1) / (width - 1)
      x0 = min(int(np.floor(sx)), w - 2); fx = sx - x0
      out[i, j] = ((1 - fy) * ((1 - fx) * x[y0, x0] + fx * x[y0, x0 + 1])
                   + fy * ((1 - fx) * x[y0 + 1, x0] + fx * x[y0 + 1, x0 + 1]))
  return out


def test_bilinear_align_corners_matches_a_loop():
  x = np.random.default_rng(0).normal(size=(6, 8, 3)).astype(np.float32)
  out = augment.bilinear_align_corners(x, 9, 12)
  chex.assert_shape(out, (9, 12, 3))
  np.testing.assert_allclose(out, loop_bilinear_align_corners(x.astype(np.float64), 9, 12),
                             rtol=1e-5, atol=1e-6)


def test_nearest_legacy_uses_the_floor_rule():
  x = np.arange(5 * 7).reshape(5, 7)
  out = augment.nearest_legacy(x, 6, 8)
  rows = [min(int(np.floor(i * 5 / 6)), 4) for i in range(6)]
  cols = [min(int(np.floor(j * 7 / 8)), 6) for j in range(8)]
  np.testing.assert_array_equal(out, x[np.ix_(rows, cols)])


def scene(height=48, width=64, seed=0):
  """Labels in blocks; depth 2.5 m, invalid (0) exactly where the label is -1; unit normals."""
  rng = np.random.default_rng(seed)
  label = np.repeat(np.repeat(rng.integers(-1, 5, (6, 8)), 8, 0), 8, 1).astype(np.int32)
  depth = np.where(label >= 0, 2.5, 0.0).astype(np.float32)[..., None]
  normal = np.where(label[..., None] >= 0, np.array([0.6, 0.0, 0.8], np.float32), 0)
  image = rng.uniform(size=(height, width, 3)).astype(np.float32)
  return {"image": image, "segmentation": label, "depth": depth, "normal": normal.astype(np.float32)}


@pytest.mark.parametrize("seed", range(12))
def test_augmentation_invariants(seed):
  example = scene()
  out = augment.random_scale_crop_flip(example, np.random.default_rng(seed))
  chex.assert_trees_all_equal_shapes_and_dtypes(out, example)
  label, depth, normal = out["segmentation"], out["depth"][..., 0], out["normal"]
  # Labels keep their class set; nothing new appears (nearest sampling).
  assert set(np.unique(label)) <= set(np.unique(example["segmentation"]))
  # Invalid stays invalid, valid stays valid: depth and labels are resampled alike.
  np.testing.assert_array_equal(depth == 0, label == -1)
  # Depth is divided by the scale: one value, 2.5 / s, for s in {1, 1.2, 1.5}.
  values = np.unique(depth[depth > 0])
  assert len(values) == 1 and min(abs(values[0] - 2.5 / s) for s in augment.SCALES) < 1e-6
  scale = 2.5 / values[0]
  # Flipped normals have their x negated; normals are blended, not re-normalised (as the reference).
  x_sign = np.sign(normal[..., 0][np.abs(normal[..., 0]) > 0.5])
  assert np.all(x_sign == x_sign[0])
  flipped = x_sign[0] < 0
  if scale == 1.0:  # no crop: the image is the input, mirrored or not
    expected = example["image"][:, ::-1] if flipped else example["image"]
    np.testing.assert_array_equal(out["image"], expected)
  assert out["image"].min() >= 0 and out["image"].max() <= 1


def test_every_scale_and_both_flips_occur():
  seen = set()
  for seed in range(40):
    out = augment.random_scale_crop_flip(scene(), np.random.default_rng(seed))
    d = out["depth"][out["depth"] > 0][0]
    flipped = bool(np.any(out["normal"][..., 0] < -0.5))
    seen.add((round(float(2.5 / d), 3), flipped))
  assert seen == {(s, f) for s in (1.0, 1.2, 1.5) for f in (False, True)}


def test_inverse_depth_is_multiplied_by_the_scale():
  example = scene()
  for seed in range(20):
    out = augment.random_scale_crop_flip(example, np.random.default_rng(seed), depth_power=-1)
    values = np.unique(out["depth"][out["depth"] > 0])
    assert len(values) == 1 and min(abs(values[0] - 2.5 * s) for s in augment.SCALES) < 1e-5
