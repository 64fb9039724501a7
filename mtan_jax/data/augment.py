"""The reference's NYUv2 training augmentation, in numpy on one example `[H, W, C]`.

- Random scale-crop: a scale s from {1.0, 1.2, 1.5}; a crop of int(H/s) x int(W/s) at a uniform
  top-left (both ends inclusive); every map resized back to H x W: image and normals bilinear with
  aligned corners (normals not re-normalised, as the reference), labels and depth nearest (PyTorch's
  legacy floor rule), and depth divided by s (a closer view of the same scene).
- Horizontal flip with probability 0.5, negating the normals' x component.

Invalid depth (0) stays 0; unlabelled pixels (-1) stay -1. For CityScapes' inverse depth, dividing by
s is what the reference's ports do, though physically disparity should be multiplied by s; the
`depth_power` argument makes that choice explicit (-1 for inverse depth).
"""

from __future__ import annotations

import numpy as np

SCALES = (1.0, 1.2, 1.5)


def bilinear_align_corners(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes `[h, w, C]` to `[height, width, C]` bilinearly with aligned corners (float32)."""
  h, w = x.shape[:2]

  def taps(size_in, size_out):
    coords = np.arange(size_out) * ((size_in - 1) / (size_out - 1)) if size_out > 1 else np.zeros(1)
    low = np.minimum(np.floor(coords).astype(np.intp), max(size_in - 2, 0))
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (coords - low).astype(np.float32)

  y0, y1, fy = taps(h, height)
  x0, x1, fx = taps(w, width)
  top, bottom = x[y0], x[y1]
  rows = top + (bottom - top) * fy[:, None, None]
  left, right = rows[:, x0], rows[:, x1]
  return left + (right - left) * fx[None, :, None]


def nearest_legacy(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """PyTorch's `F.interpolate(mode="nearest")`: source = floor(dst * in / out) in float32."""
  h, w = x.shape[:2]
  rows = np.minimum(np.floor(np.arange(height, dtype=np.float32) * np.float32(h / height)),
                    h - 1).astype(np.intp)
  cols = np.minimum(np.floor(np.arange(width, dtype=np.float32) * np.float32(w / width)),
                    w - 1).astype(np.intp)
  return x[rows][:, cols]


def random_scale_crop_flip(example: dict[str, np.ndarray], rng: np.random.Generator,
                           depth_power: int = 1) -> dict[str, np.ndarray]:
  """Augments one example: keys image, segmentation, depth, normal (any subset besides image).

  Depth is divided by scale ** depth_power: 1 for metric depth (NYUv2), -1 to multiply inverse
  depth by the scale. Returns new arrays; the input is not modified.
  """
  height, width = example["image"].shape[:2]
  scale = SCALES[rng.integers(len(SCALES))]
  out = dict(example)
  if scale != 1.0:
    h, w = int(height / scale), int(width / scale)
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    crop = lambda a: a[top:top + h, left:left + w]  # noqa: E731
    smooth = [k for k in ("image", "normal") if k in example]
    stacked = bilinear_align_corners(np.concatenate([crop(example[k]) for k in smooth], -1),
                                     height, width)
    channels = np.cumsum([0] + [example[k].shape[-1] for k in smooth])
    for k, a, b in zip(smooth, channels[:-1], channels[1:]):
      out[k] = stacked[..., a:b]
    if "segmentation" in example:
      out["segmentation"] = nearest_legacy(crop(example["segmentation"]), height, width)
    if "depth" in example:
      out["depth"] = nearest_legacy(crop(example["depth"]), height, width) / np.float32(
          scale ** depth_power)
  if rng.random() < 0.5:
    out = {k: v[:, ::-1] for k, v in out.items()}
    if "normal" in out:
      out["normal"] = out["normal"] * np.array([-1, 1, 1], np.float32)
  return {k: np.ascontiguousarray(v) for k, v in out.items()}
