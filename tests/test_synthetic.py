"""The synthetic scenes: determinism, formats, and geometry checked from the depth map itself."""

import hashlib

import chex
import numpy as np
import pytest

from mtan_jax.data import synthetic


@pytest.fixture(scope="module")
def indoor():
  return [synthetic.render_indoor(0, i, 96, 128, return_camera=True) for i in range(6)]


def test_same_seed_and_index_give_the_same_sample():
  a, b = synthetic.render_indoor(3, 7, 64, 96), synthetic.render_indoor(3, 7, 64, 96)
  chex.assert_trees_all_equal(a, b)
  c = synthetic.render_indoor(3, 8, 64, 96)
  assert not np.array_equal(a["depth"], c["depth"])
  d = synthetic.render_indoor(4, 7, 64, 96)
  assert not np.array_equal(a["depth"], d["depth"])


def test_samples_are_bit_identical_across_machines():
  # Rendering uses only correctly rounded arithmetic per pixel and portable random streams, so these
  # digests hold on every machine; a change means the built-in data changed.
  digests = {name: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
             for name, a in synthetic.render_indoor(1, 2, 64, 64).items()}
  street = synthetic.render_street(1, 2, 64, 128)
  digests["street_depth"] = hashlib.sha256(street["depth"].tobytes()).hexdigest()[:16]
  assert digests == GOLDEN_DIGESTS


GOLDEN_DIGESTS = {"image": "b485e2ebc393d9e3", "label": "99501bae2c9ae6c6",
                  "depth": "012b1d83eb76502f", "normal": "eece162a5890fc88",
                  "street_depth": "1fb1c3299e5ec123"}


@pytest.mark.parametrize("height,width", [(32, 32), (64, 160), (288, 384)])
def test_indoor_formats(height, width):
  s = synthetic.render_indoor(5, 0, height, width)
  chex.assert_shape([s["image"], s["label"], s["depth"], s["normal"]],
                    [(height, width, 3), (height, width), (height, width, 1), (height, width, 3)])
  chex.assert_type([s["image"], s["label"], s["depth"], s["normal"]],
                   [np.float32, np.int8, np.float32, np.float32])
  assert s["image"].min() >= 0 and s["image"].max() <= 1
  assert set(np.unique(s["label"])) <= set(range(-1, 13))
  valid = s["depth"][..., 0] > 0
  np.testing.assert_allclose(np.linalg.norm(s["normal"][valid], axis=-1), 1.0, atol=1e-5)
  assert np.all(s["normal"][~valid] == 0)


def test_indoor_split_has_every_kind_of_pixel(indoor):
  labels = np.concatenate([s["label"].ravel() for s in indoor])
  for cls in (synthetic.FLOOR, synthetic.WALL, synthetic.CEILING, -1):
    assert np.any(labels == cls)
  assert len(set(np.unique(labels))) >= 10  # most classes appear in a handful of rooms
  depth = np.concatenate([s["depth"].ravel() for s in indoor])
  assert 0.001 < np.mean(depth == 0) < 0.2  # some invalid pixels, mostly valid
  assert 0.2 < depth[depth > 0].min() and depth.max() < 12  # metres, room scale


def back_project(sample):
  """Camera-frame 3D points `[H, W, 3]` from the depth map and the pinhole intrinsics."""
  h, w = sample["label"].shape
  f = float(sample["focal"])
  u = (np.arange(w) + 0.5 - w / 2) / f
  v = (np.arange(h) + 0.5 - h / 2) / f
  z = sample["depth"][..., 0].astype(np.float64)
  return np.stack([z * u[None, :], z * v[:, None], z], axis=-1)


def test_floor_depth_matches_the_camera_height(indoor):
  for s in indoor:
    floor = (s["label"] == synthetic.FLOOR) & (s["depth"][..., 0] > 0)
    assert floor.sum() > 50
    up_in_camera = s["rotation"].T @ np.array([0.0, 1.0, 0.0])
    heights = back_project(s)[floor] @ up_in_camera  # floor points lie camera_height below
    np.testing.assert_allclose(heights, -float(s["camera_height"]), atol=2e-3)


def test_normals_agree_with_depth_gradients_on_planes(indoor):
  checked = 0
  for s in indoor:
    points = back_project(s)
    # Normal from the depth map alone: cross product of central differences.
    du = points[1:-1, 2:] - points[1:-1, :-2]
    dv = points[2:, 1:-1] - points[:-2, 1:-1]
    from_depth = np.cross(du, dv)
    with np.errstate(invalid="ignore"):  # zero crosses next to invalid depth, not checked below
      from_depth /= np.linalg.norm(from_depth, axis=-1, keepdims=True)
    # Planar interiors: a 3x3 neighbourhood of valid floor/wall/ceiling pixels with one normal.
    n, lab, valid = s["normal"], s["label"], s["depth"][..., 0] > 0
    planar = np.isin(lab, [synthetic.FLOOR, synthetic.WALL, synthetic.CEILING]) & valid
    interior = planar[1:-1, 1:-1].copy()
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        window = (slice(1 + dy, n.shape[0] - 1 + dy), slice(1 + dx, n.shape[1] - 1 + dx))
        interior &= planar[window] & np.all(np.abs(n[window] - n[1:-1, 1:-1]) < 1e-6, axis=-1)
    given = n[1:-1, 1:-1][interior]
    cos = np.abs(np.sum(from_depth[interior] * given, axis=-1))
    assert np.all(cos > np.cos(np.radians(2.0)))
    # The given normals face the camera: a point's normal points back along the viewing ray.
    assert np.all(np.sum(points[1:-1, 1:-1][interior] * given, axis=-1) < 0)
    checked += interior.sum()
  assert checked > 10_000


def test_street_formats_and_inverse_depth():
  s = synthetic.render_street(0, 1, 128, 256, return_camera=True)
  chex.assert_shape([s["image"], s["label_7"], s["label_19"], s["depth"]],
                    [(128, 256, 3), (128, 256), (128, 256), (128, 256, 1)])
  assert set(np.unique(s["label_19"])) <= set(range(-1, 19))
  np.testing.assert_array_equal(
      s["label_7"], np.where(s["label_19"] >= 0,
                             synthetic.CITYSCAPES_19_TO_7[np.maximum(s["label_19"], 0)], -1))
  disparity = s["depth"][..., 0]
  sky = s["label_19"] == 10
  assert sky.any() and np.all(disparity[sky] == 0)
  assert 0 <= disparity.min() and disparity.max() < 0.5  # the release's range: code / 65535
  # Inverse depth back to metres on the road: the road lies camera_height below the camera.
  road = (s["label_19"] == 0) & (disparity > 0)
  z = synthetic.CITYSCAPES_BASELINE * synthetic.CITYSCAPES_FOCAL * 256 / (65535 * disparity[road] - 1)
  h, w = disparity.shape
  f = float(s["focal"])
  rows, cols = np.nonzero(road)
  rays = np.stack([(cols + 0.5 - w / 2) / f, (rows + 0.5 - h / 2) / f, np.ones_like(z)], -1)
  up = s["rotation"].T @ np.array([0.0, 1.0, 0.0])
  np.testing.assert_allclose((rays * z[:, None]) @ up, -float(s["camera_height"]), rtol=1e-3)
