"""A small vectorised numpy ray caster for the synthetic scenes: a pinhole camera, analytic primitives.

Every per-pixel operation is +, -, *, /, sqrt, comparisons or min/max, all correctly rounded in IEEE
arithmetic, so a scene renders to the same bits on any machine (transcendental functions, whose numpy
implementations differ between CPUs, are used on scalars only, in float64).

Conventions: world frame Y up; camera frame x right, y down, z forward (OpenCV). Ray directions are
scaled so that their camera-frame z component is 1: the ray parameter t of a hit *is* its depth (the
camera-frame z coordinate), as NYUv2's depth maps store it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

NEAR = 0.05  # metres: hits closer than this are ignored


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
  """Camera-to-world rotation `[3, 3]` (float64): yaw about world Y, then pitch (down positive), roll.

  Columns are the camera's x (right), y (down) and z (forward) axes in world coordinates.
  """
  cy, sy = math.cos(yaw), math.sin(yaw)
  cp, sp = math.cos(pitch), math.sin(pitch)
  cr, sr = math.cos(roll), math.sin(roll)
  forward = np.array([sy * cp, -sp, cy * cp])
  right0 = np.array([cy, 0.0, -sy])
  down0 = -np.cross(forward, right0)  # world Y is up, so image-down points to -Y at zero pitch
  right = cr * right0 + sr * down0
  down = -np.cross(forward, right)
  return np.stack([right, down, forward], axis=1)


@dataclasses.dataclass
class Surface:
  """What a hit shows: a class label, a base colour and a texture pattern."""

  label: int
  color: tuple[float, float, float]
  texture: int = 0  # 0 plain, 1 stripes (wood), 2 checker, 3 tiles, 4 speckle


class Canvas:
  """Rays of one camera and the nearest hit so far: depth `t`, world normal, surface id per pixel."""

  def __init__(self, height: int, width: int, hfov_degrees: float, origin: np.ndarray,
               rotation: np.ndarray):
    self.height, self.width = height, width
    self.focal = (width / 2) / math.tan(math.radians(hfov_degrees) / 2)
    self.origin = np.asarray(origin, np.float64)
    self.rotation = np.asarray(rotation, np.float64)
    u = ((np.arange(width) + 0.5 - width / 2) / self.focal).astype(np.float32)
    v = ((np.arange(height) + 0.5 - height / 2) / self.focal).astype(np.float32)
    r = self.rotation.astype(np.float32)
    # World direction of each pixel's ray (camera-frame z = 1): three [H, W] arrays.
    self.d = [r[k, 0] * u[None, :] + (r[k, 1] * v[:, None] + r[k, 2]) for k in range(3)]
    self.t = np.full((height, width), np.inf, np.float32)
    self.normal = [np.zeros((height, width), np.float32) for _ in range(3)]
    self.surface = np.full((height, width), -1, np.int16)
    self.surfaces: list[Surface] = []

  def add_surface(self, surface: Surface) -> int:
    self.surfaces.append(surface)
    return len(self.surfaces) - 1

  def pixel_rect(self, center, radius: float) -> tuple[slice, slice] | None:
    """The pixel rectangle that may see a sphere (a conservative bound), or None if it is not seen."""
    p = self.rotation.T @ (np.asarray(center, np.float64) - self.origin)
    if p[2] + radius <= NEAR:
      return None
    if p[2] - radius <= NEAR:
      return slice(0, self.height), slice(0, self.width)
    bounds = []
    for axis, size in ((0, self.width), (1, self.height)):
      ratios = [(p[axis] + s * radius) / (p[2] + q * radius) for s in (-1, 1) for q in (-1, 1)]
      lo = int(math.floor(min(ratios) * self.focal + size / 2)) - 1
      hi = int(math.ceil(max(ratios) * self.focal + size / 2)) + 1
      if hi <= 0 or lo >= size:
        return None
      bounds.append(slice(max(lo, 0), min(hi, size)))
    return bounds[1], bounds[0]

  def offer(self, rect: tuple[slice, slice], t: np.ndarray, normal, surface: int | np.ndarray,
            hit: np.ndarray) -> None:
    """Keeps the new hits (mask `hit`, depth `t`, world normal) that are nearer than what is there."""
    current = self.t[rect]
    closer = hit & (t > NEAR) & (t < current)
    np.copyto(current, t, where=closer)
    for k in range(3):
      np.copyto(self.normal[k][rect], normal[k], where=closer)
    np.copyto(self.surface[rect], np.int16(surface) if np.isscalar(surface) else surface,
              where=closer)

  def rays(self, rect):
    return [d[rect] for d in self.d]


def _safe_reciprocal(d: np.ndarray) -> np.ndarray:
  """1 / d, +-inf where d is 0 (callers run under np.errstate(divide="ignore"))."""
  return np.float32(1) / d


def cast_room(canvas: Canvas, lo, hi, surfaces: dict[str, int]) -> None:
  """The inside of an axis-aligned box room [lo, hi], cast first: every ray leaves through one face.

  `surfaces` maps "floor", "ceiling", "wall_x-", "wall_x+", "wall_z-", "wall_z+" to surface ids.
  """
  o = canvas.origin
  ts = []
  for k in range(3):
    bound = np.where(canvas.d[k] > 0, np.float32(hi[k] - o[k]), np.float32(lo[k] - o[k]))
    ts.append(bound * _safe_reciprocal(canvas.d[k]))
  t = np.minimum(np.minimum(ts[0], ts[1]), ts[2])
  canvas.t[...] = t
  for k, (neg, pos) in enumerate((("wall_x-", "wall_x+"), ("floor", "ceiling"),
                                  ("wall_z-", "wall_z+"))):
    on_face = ts[k] == t
    positive = canvas.d[k] > 0
    canvas.normal[k][...] = on_face * -np.sign(canvas.d[k])  # facing into the room
    np.copyto(canvas.surface, np.where(positive, np.int16(surfaces[pos]), np.int16(surfaces[neg])),
              where=on_face)


def cast_plane_y(canvas: Canvas, height: float, surface_near: int, surface_far: int | None = None,
                 split_x: float | None = None) -> None:
  """The ground plane y = height seen from above; optional: a second surface where |x| > split_x."""
  o = canvas.origin
  dy = canvas.d[1]
  t = np.float32(height - o[1]) * _safe_reciprocal(dy)
  hit = dy < 0
  zero = np.zeros_like(t)
  surface: int | np.ndarray = surface_near
  if surface_far is not None:
    x = np.float32(o[0]) + t * canvas.d[0]
    surface = np.where(np.abs(x) > split_x, np.int16(surface_far), np.int16(surface_near))
  canvas.offer((slice(0, canvas.height), slice(0, canvas.width)), t,
               [zero, np.ones_like(t), zero], surface, hit)


def cast_box(canvas: Canvas, center, half, angle: float, surface: int) -> None:
  """A box with half-sizes `half`, rotated by `angle` (radians) about the vertical axis."""
  radius = float(np.linalg.norm(half))
  rect = canvas.pixel_rect(center, radius)
  if rect is None:
    return
  c, s = math.cos(angle), math.sin(angle)
  o = canvas.origin - np.asarray(center, np.float64)
  # Ray origin and directions in the box frame (rotation about Y by -angle).
  ol = (c * o[0] - s * o[2], o[1], s * o[0] + c * o[2])
  dx, dy, dz = canvas.rays(rect)
  dl = (np.float32(c) * dx - np.float32(s) * dz, dy, np.float32(s) * dx + np.float32(c) * dz)
  near = far = None
  tmins = []
  for k in range(3):
    inv = _safe_reciprocal(dl[k])
    t1 = np.float32(-half[k] - ol[k]) * inv
    t2 = np.float32(half[k] - ol[k]) * inv
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    tmins.append(tmin)
    near = tmin if near is None else np.maximum(near, tmin)
    far = tmax if far is None else np.minimum(far, tmax)
  hit = near <= far
  # The face the ray enters through: the axis whose entry distance is the box's; facing the ray.
  local = [(tmins[k] == near) * -np.sign(dl[k]) for k in range(3)]
  normal = [np.float32(c) * local[0] + np.float32(s) * local[2], local[1],
            np.float32(-s) * local[0] + np.float32(c) * local[2]]
  canvas.offer(rect, near, normal, surface, hit)


def _unit(v: list[np.ndarray]) -> list[np.ndarray]:
  """Normalises a vector field given as three arrays (the hit point minus the centre, for curved
  surfaces: dividing by the radius would leave the rounding error of the subtraction)."""
  inv = np.float32(1) / np.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
  return [c * inv for c in v]


def cast_sphere(canvas: Canvas, center, radius: float, surface: int) -> None:
  rect = canvas.pixel_rect(center, radius)
  if rect is None:
    return
  oc = canvas.origin - np.asarray(center, np.float64)
  dx, dy, dz = canvas.rays(rect)
  a = dx * dx + dy * dy + dz * dz
  b = np.float32(oc[0]) * dx + np.float32(oc[1]) * dy + np.float32(oc[2]) * dz
  disc = b * b - a * np.float32(oc @ oc - radius * radius)
  hit = disc >= 0
  t = (-b - np.sqrt(np.maximum(disc, 0))) / a
  normal = _unit([np.float32(oc[k]) + t * d for k, d in enumerate((dx, dy, dz))])
  canvas.offer(rect, t, normal, surface, hit)


def cast_cylinder(canvas: Canvas, base, radius: float, height: float, surface: int) -> None:
  """An upright capped cylinder standing on `base` (its bottom centre)."""
  center = np.asarray(base, np.float64) + np.array([0.0, height / 2, 0.0])
  rect = canvas.pixel_rect(center, math.hypot(radius, height / 2))
  if rect is None:
    return
  o = canvas.origin
  ox, oz = np.float32(o[0] - base[0]), np.float32(o[2] - base[2])
  dx, dy, dz = canvas.rays(rect)
  a = dx * dx + dz * dz
  b = ox * dx + oz * dz
  disc = b * b - a * np.float32(ox * ox + oz * oz - radius * radius)
  t_side = (-b - np.sqrt(np.maximum(disc, 0))) / np.maximum(a, np.float32(1e-12))
  y = np.float32(o[1]) + t_side * dy
  side = (disc >= 0) & (y >= base[1]) & (y <= base[1] + height)
  zero = np.zeros_like(t_side)
  canvas.offer(rect, t_side, _unit([ox + t_side * dx, zero, oz + t_side * dz]), surface, side)
  top = base[1] + height
  if o[1] > top:  # the top cap is visible only from above
    t_cap = np.float32(top - o[1]) * _safe_reciprocal(dy)
    px, pz = ox + t_cap * dx, oz + t_cap * dz
    cap = (dy < 0) & (px * px + pz * pz <= np.float32(radius * radius))
    canvas.offer(rect, t_cap, [zero, np.ones_like(zero), zero], surface, cap)


def hit_points(canvas: Canvas) -> list[np.ndarray]:
  """World coordinates of each pixel's hit (inf where nothing was hit)."""
  return [np.float32(canvas.origin[k]) + canvas.t * canvas.d[k] for k in range(3)]


def camera_normals(canvas: Canvas) -> np.ndarray:
  """`[H, W, 3]` normals in the camera frame (x right, y down, z forward).

  Every primitive writes unit world normals, and a rotation keeps them unit (to float32 rounding).
  """
  r = canvas.rotation.astype(np.float32)
  return np.stack([r[0, k] * canvas.normal[0] + r[1, k] * canvas.normal[1]
                   + r[2, k] * canvas.normal[2] for k in range(3)], axis=-1)
