"""Built-in synthetic multi-task scenes: ray-cast rooms (NYUv2-like) and streets (CityScapes-like).

A new user with no data still sees the whole system work on tasks that are related as in the real
datasets: labels, depth and normals all come from one piece of geometry.

- `render_indoor(seed, index, height, width)`: a room (floor, walls, ceiling) holding beds, sofas,
  tables, chairs, cabinets, books and objects (boxes, slabs, spheres, cylinders), with pictures,
  windows and screens on the walls; a pinhole camera with NYUv2's field of view (~62 degrees). Gives
  an RGB image in [0, 1] shaded from the surface normal with texture and noise, a 13-class label map
  in NYUv2's class order with -1 on some unlabelled pixels, metric depth (camera z) with invalid (0)
  pixels (glass, sensor holes), and camera-frame unit normals (zero where depth is invalid).
- `render_street(seed, index, height, width)`: a road between buildings with cars, trucks, people,
  poles and trees under the sky, CityScapes' field of view (~49 degrees); 19-class and 7-class labels
  and inverse depth stored as the CityScapes release does (disparity code / 65535, 0 = invalid).

The same (seed, index) gives the same sample on any machine (see `raycast`); any height and width.
"""

from __future__ import annotations

import math

import numpy as np

from mtan_jax.data import memory
from mtan_jax.data import raycast
from mtan_jax.data.raycast import Surface

NYUV2_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture",
                 "sofa", "table", "tv", "wall", "window")
(BED, BOOKS, CEILING, CHAIR, FLOOR, FURNITURE, OBJECTS, PICTURE, SOFA, TABLE, TV, WALL,
 WINDOW) = range(13)

CITYSCAPES_19_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                         "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                         "truck", "bus", "train", "motorcycle", "bicycle")
CITYSCAPES_7_CLASSES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
# Cityscapes' train-id -> category mapping.
CITYSCAPES_19_TO_7 = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6], np.int8)

NYUV2_HFOV = 2 * math.degrees(math.atan(320 / 518.8))  # Kinect: fx 518.8 at 640 px
CITYSCAPES_HFOV = 2 * math.degrees(math.atan(1024 / 2262.52))  # fx 2262.52 at 2048 px
CITYSCAPES_BASELINE, CITYSCAPES_FOCAL = 0.209313, 2262.52  # metres, pixels at full resolution


def _rng(seed: int, index: int, salt: int) -> np.random.Generator:
  """A generator determined by (seed, index) alone (PCG64 and SeedSequence are portable)."""
  return np.random.default_rng([salt, int(seed), int(index)])


def _color(rng, base, spread=0.08):
  return tuple(float(np.clip(c + rng.uniform(-spread, spread), 0.02, 0.98)) for c in base)


def _tri(s: np.ndarray) -> np.ndarray:
  """Triangle wave in [0, 1] with period 1 (a texture without transcendental functions)."""
  return np.abs(2 * (s - np.floor(s)) - 1)


def _shade_image(canvas: raycast.Canvas, rng: np.random.Generator, light) -> np.ndarray:
  """RGB in [0, 1]: base colour x texture x (ambient + diffuse from a point light) + noise.

  Every pixel must hold a finite hit (`canvas.t`), which the room or the sky provide.
  """
  surfaces = canvas.surfaces
  colors = np.array([s.color for s in surfaces], np.float32)[canvas.surface]
  textures = np.array([s.texture for s in surfaces], np.int8)[canvas.surface]
  kinds = {s.texture for s in surfaces}
  px, py, pz = raycast.hit_points(canvas)
  pattern = np.ones(px.shape, np.float32)
  if 1 in kinds:  # wood: stripes along x
    stripes = _tri((px + np.float32(0.13) * pz) * np.float32(3))
    np.copyto(pattern, np.float32(0.75) + np.float32(0.25) * stripes, where=textures == 1)
  if 2 in kinds:  # fabric / posters: diagonal bands
    bands = _tri((px + py + pz) * np.float32(2)) > np.float32(0.5)
    np.copyto(pattern, np.float32(0.8), where=(textures == 2) & bands)
  if 3 in kinds:  # paving: a grid of joints on the ground
    grid = np.minimum(px * 2 - np.floor(px * 2), pz * 2 - np.floor(pz * 2))
    np.copyto(pattern, np.float32(0.6), where=(textures == 3) & (grid < np.float32(0.04)))
  lx, ly, lz = [np.float32(light[k]) - p for k, p in enumerate((px, py, pz))]
  dist2 = lx * lx + ly * ly + lz * lz
  lambert = (canvas.normal[0] * lx + canvas.normal[1] * ly + canvas.normal[2] * lz) / np.sqrt(dist2)
  shade = np.float32(0.3) + np.float32(0.8) * np.maximum(lambert, 0) / (1 + np.float32(0.02) * dist2)
  speckle = np.where(textures == 4, np.float32(0.12), np.float32(0.03))
  noise = rng.random(px.shape + (3,), dtype=np.float32) - np.float32(0.5)
  image = colors * (pattern * shade)[..., None] + noise * speckle[..., None]
  return np.clip(image, 0, 1, out=image)


def _ellipse_mask(shape, rng, count, max_fraction=0.12):
  """A union of `count` random axis-aligned ellipses (unlabelled clutter, depth holes)."""
  h, w = shape
  mask = np.zeros(shape, bool)
  rows = np.arange(h, dtype=np.float32)[:, None]
  cols = np.arange(w, dtype=np.float32)[None, :]
  for _ in range(count):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(0.02, max_fraction) * h, rng.uniform(0.02, max_fraction) * w
    y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, h)
    x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, w)
    dy = (rows[y0:y1] - np.float32(cy)) / np.float32(ry)
    dx = (cols[:, x0:x1] - np.float32(cx)) / np.float32(rx)
    mask[y0:y1, x0:x1] |= dy * dy + dx * dx <= 1
  return mask


def _boundaries(surface: np.ndarray) -> np.ndarray:
  """Pixels whose right or lower neighbour shows another surface (where annotators leave gaps)."""
  edge = np.zeros(surface.shape, bool)
  edge[:, :-1] |= surface[:, :-1] != surface[:, 1:]
  edge[:-1, :] |= surface[:-1, :] != surface[1:, :]
  return edge


def _indoor_scene(canvas: raycast.Canvas, rng: np.random.Generator, room) -> list:
  """Adds the room and its furniture to `canvas`; returns wall decals to paint afterwards."""
  (x0, x1), height, (z0, z1) = room
  wall_color = _color(rng, rng.choice([(0.85, 0.82, 0.75), (0.7, 0.78, 0.85), (0.88, 0.8, 0.7)]))
  ids = {"floor": canvas.add_surface(Surface(FLOOR, _color(rng, (0.55, 0.4, 0.28)), 1)),
         "ceiling": canvas.add_surface(Surface(CEILING, _color(rng, (0.92, 0.92, 0.9)), 0))}
  for wall in ("wall_x-", "wall_x+", "wall_z-", "wall_z+"):
    ids[wall] = canvas.add_surface(Surface(WALL, _color(rng, wall_color, 0.04), 4))
  raycast.cast_room(canvas, (x0, 0.0, z0), (x1, height, z1), ids)

  def spot(margin):
    return rng.uniform(x0 + margin, x1 - margin), rng.uniform(max(z0 + 1.5, 0.8), z1 - margin)

  tops = []  # (x, y, z, half-size) of surfaces that can hold small things
  for _ in range(rng.integers(3, 7)):
    kind = rng.choice(["bed", "sofa", "table", "chair", "cabinet", "object"],
                      p=[0.12, 0.15, 0.25, 0.2, 0.13, 0.15])
    angle = float(rng.uniform(-0.6, 0.6))
    if kind == "bed":
      x, z = spot(1.1)
      half = (0.8, 0.28, 1.0)
      canvas_id = canvas.add_surface(Surface(BED, _color(rng, (0.75, 0.7, 0.8), 0.15), 2))
      raycast.cast_box(canvas, (x, half[1], z), half, angle, canvas_id)
    elif kind == "sofa":
      x, z = spot(1.0)
      sofa_id = canvas.add_surface(Surface(SOFA, _color(rng, (0.45, 0.3, 0.35), 0.2), 0))
      raycast.cast_box(canvas, (x, 0.22, z), (0.9, 0.22, 0.45), angle, sofa_id)
      back = (x - 0.35 * math.sin(angle), 0.45, z + 0.35 * math.cos(angle))
      raycast.cast_box(canvas, back, (0.9, 0.45, 0.12), angle, sofa_id)
    elif kind == "table":
      x, z = spot(0.8)
      top_h, half = float(rng.uniform(0.45, 0.8)), (float(rng.uniform(0.4, 0.7)), 0.025, 0.45)
      table_id = canvas.add_surface(Surface(TABLE, _color(rng, (0.5, 0.35, 0.2), 0.1), 1))
      raycast.cast_box(canvas, (x, top_h, z), half, angle, table_id)
      raycast.cast_cylinder(canvas, (x, 0.0, z), 0.06, top_h - 0.02, table_id)
      tops.append((x, top_h + 0.025, z, 0.3))
    elif kind == "chair":
      x, z = spot(0.5)
      chair_id = canvas.add_surface(Surface(CHAIR, _color(rng, (0.3, 0.3, 0.35), 0.2), 0))
      raycast.cast_box(canvas, (x, 0.42, z), (0.22, 0.03, 0.22), angle, chair_id)
      raycast.cast_box(canvas, (x, 0.2, z), (0.03, 0.2, 0.03), angle, chair_id)
      back = (x - 0.2 * math.sin(angle), 0.68, z + 0.2 * math.cos(angle))
      raycast.cast_box(canvas, back, (0.22, 0.24, 0.03), angle, chair_id)
    elif kind == "cabinet":
      x, z = spot(0.6)
      half = (float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.4, 1.0)), 0.25)
      cab_id = canvas.add_surface(Surface(FURNITURE, _color(rng, (0.6, 0.5, 0.4), 0.2), 2))
      raycast.cast_box(canvas, (x, half[1], z), half, angle, cab_id)
      tops.append((x, 2 * half[1], z, 0.2))
    else:
      x, z = spot(0.4)
      obj_id = canvas.add_surface(Surface(OBJECTS, _color(rng, (0.4, 0.6, 0.5), 0.3), 0))
      if rng.random() < 0.5:
        r = float(rng.uniform(0.12, 0.3))
        raycast.cast_sphere(canvas, (x, r, z), r, obj_id)
      else:
        raycast.cast_cylinder(canvas, (x, 0.0, z), float(rng.uniform(0.08, 0.2)),
                              float(rng.uniform(0.3, 0.9)), obj_id)
  for x, y, z, spread in tops:  # books and small objects on tables and cabinets
    for _ in range(rng.integers(0, 3)):
      bx, bz = x + rng.uniform(-spread, spread), z + rng.uniform(-spread, spread)
      if rng.random() < 0.6:
        book = (0.1, float(rng.uniform(0.02, 0.08)), 0.14)
        book_id = canvas.add_surface(Surface(BOOKS, _color(rng, (0.6, 0.2, 0.2), 0.3), 0))
        raycast.cast_box(canvas, (bx, y + book[1], bz), book, float(rng.uniform(-1, 1)), book_id)
      else:
        obj_id = canvas.add_surface(Surface(OBJECTS, _color(rng, (0.3, 0.5, 0.7), 0.3), 0))
        r = float(rng.uniform(0.04, 0.1))
        raycast.cast_sphere(canvas, (bx, y + r, bz), r, obj_id)

  decals = []
  for _ in range(rng.integers(1, 4)):
    kind = rng.choice([PICTURE, WINDOW, TV], p=[0.5, 0.3, 0.2])
    wall = rng.choice(["wall_z+", "wall_x-", "wall_x+"])
    w, h = float(rng.uniform(0.4, 1.4)), float(rng.uniform(0.4, 1.1))
    along = (x0 + w / 2 + 0.1, x1 - w / 2 - 0.1) if wall == "wall_z+" else (
        max(z0 + 1.0, 0.5) + w / 2, z1 - w / 2 - 0.1)
    if along[0] >= along[1]:
      continue
    center = float(rng.uniform(*along))
    bottom = float(rng.uniform(0.8, max(0.85, height - h - 0.2)))
    color = {PICTURE: _color(rng, (0.5, 0.5, 0.5), 0.4), WINDOW: _color(rng, (0.85, 0.92, 1.0), 0.05),
             TV: _color(rng, (0.08, 0.08, 0.1), 0.03)}[kind]
    decal_id = canvas.add_surface(Surface(int(kind), color, 2 if kind == PICTURE else 0))
    decals.append((ids[wall], wall, center, w, bottom, h, decal_id))
  return decals


def _paint_decals(canvas: raycast.Canvas, decals) -> None:
  """Pictures, windows and screens: rectangles on walls (flat, so the geometry is unchanged)."""
  px, py, pz = raycast.hit_points(canvas)
  for wall_id, wall, center, w, bottom, h, decal_id in decals:
    along = px if wall == "wall_z+" else pz
    inside = ((canvas.surface == wall_id) & (np.abs(along - np.float32(center)) <= w / 2)
              & (py >= bottom) & (py <= bottom + h))
    canvas.surface[inside] = decal_id


def render_indoor(seed: int, index: int, height: int = 288, width: int = 384,
                  return_camera: bool = False) -> dict[str, np.ndarray]:
  """One NYUv2-like sample.

  Returns:
    image `[H, W, 3]` float32 in [0, 1]; label `[H, W]` int8 in {-1, 0..12} (NYUv2 class order,
    `NYUV2_CLASSES`); depth `[H, W, 1]` float32 metres, 0 = invalid; normal `[H, W, 3]` float32
    camera-frame unit vectors (x right, y down, z forward, facing the camera), 0 where invalid.
    With `return_camera`, also focal (pixels), camera_height (metres above the floor) and
    rotation (`[3, 3]` camera-to-world, world Y up).
  """
  memory.keep_freed_memory()
  rng = _rng(seed, index, 13)
  room_w, room_d, room_h = rng.uniform(3.0, 6.0), rng.uniform(4.0, 7.5), rng.uniform(2.4, 3.0)
  room = ((-room_w / 2, room_w / 2), room_h, (-1.0, room_d - 1.0))
  cam_h = float(rng.uniform(1.0, 1.6))
  origin = np.array([rng.uniform(-room_w / 5, room_w / 5), cam_h, rng.uniform(-0.6, 0.0)])
  rotation = raycast.camera_rotation(math.radians(rng.uniform(-25, 25)),
                                     math.radians(rng.uniform(5, 22)),
                                     math.radians(rng.uniform(-3, 3)))
  canvas = raycast.Canvas(height, width, NYUV2_HFOV, origin, rotation)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    decals = _indoor_scene(canvas, rng, room)
    _paint_decals(canvas, decals)
    light = (rng.uniform(-room_w / 3, room_w / 3), room_h - 0.3, rng.uniform(0.5, room_d - 1.5))
    image = _shade_image(canvas, rng, light)
  labels = np.array([s.label for s in canvas.surfaces], np.int8)[canvas.surface]
  depth = canvas.t.copy()
  invalid = (labels == WINDOW) | _ellipse_mask(depth.shape, rng, int(rng.integers(0, 3)), 0.08)
  if rng.random() < 0.7:
    labels[_boundaries(canvas.surface)] = -1
  labels[_ellipse_mask(depth.shape, rng, int(rng.integers(0, 2)), 0.1)] = -1
  depth[invalid] = 0
  normal = raycast.camera_normals(canvas)
  normal[invalid] = 0
  sample = {"image": image, "label": labels, "depth": depth[..., None], "normal": normal}
  if return_camera:
    sample.update(focal=np.float64(canvas.focal), camera_height=np.float64(cam_h),
                  rotation=rotation)
  return sample


def _street_scene(canvas: raycast.Canvas, rng: np.random.Generator, road: float,
                  walk: float) -> None:
  road_id = canvas.add_surface(Surface(0, _color(rng, (0.35, 0.35, 0.37), 0.04), 3))
  walk_id = canvas.add_surface(Surface(1, _color(rng, (0.6, 0.58, 0.55), 0.05), 3))
  raycast.cast_plane_y(canvas, 0.0, road_id, walk_id, road)
  for side in (-1, 1):  # buildings along both sides
    z = -5.0
    while z < 90:
      length = float(rng.uniform(10, 30))
      depth, tall = float(rng.uniform(8, 15)), float(rng.uniform(8, 30))
      building = canvas.add_surface(Surface(2, _color(rng, (0.55, 0.5, 0.45), 0.2), 2))
      x = side * (road + walk + depth / 2)
      raycast.cast_box(canvas, (x, tall / 2, z + length / 2), (depth / 2, tall / 2, length / 2),
                       0.0, building)
      z += length + float(rng.uniform(0, 4))
  for _ in range(rng.integers(2, 7)):  # cars and trucks
    truck = rng.random() < 0.2
    half = (1.25, 1.6, 4.0) if truck else (0.9, 0.75, 2.1)
    vehicle = canvas.add_surface(Surface(14 if truck else 13,
                                         _color(rng, rng.choice([(0.7, 0.1, 0.1), (0.2, 0.2, 0.6),
                                                                 (0.8, 0.8, 0.8)]), 0.1), 0))
    x = float(rng.uniform(-road + 1.2, road - 1.2))
    raycast.cast_box(canvas, (x, half[1], float(rng.uniform(6, 60))), half,
                     float(rng.uniform(-0.1, 0.1)), vehicle)
  for _ in range(rng.integers(0, 6)):  # people on the sidewalks
    person = canvas.add_surface(Surface(11, _color(rng, (0.5, 0.3, 0.3), 0.3), 0))
    x = float(rng.choice([-1, 1]) * rng.uniform(road + 0.3, road + walk - 0.3))
    raycast.cast_cylinder(canvas, (x, 0.0, float(rng.uniform(4, 40))), 0.25,
                          float(rng.uniform(1.55, 1.9)), person)
  for _ in range(rng.integers(1, 5)):  # poles at the kerb
    pole = canvas.add_surface(Surface(5, _color(rng, (0.4, 0.4, 0.42), 0.05), 0))
    x = float(rng.choice([-1, 1]) * (road + 0.3))
    raycast.cast_cylinder(canvas, (x, 0.0, float(rng.uniform(5, 60))), 0.1,
                          float(rng.uniform(4, 8)), pole)
  for _ in range(rng.integers(0, 5)):  # trees: trunk and crown
    tree = canvas.add_surface(Surface(8, _color(rng, (0.2, 0.45, 0.15), 0.1), 4))
    x, z = float(rng.choice([-1, 1]) * (road + walk * 0.6)), float(rng.uniform(6, 60))
    crown = float(rng.uniform(1.5, 3.0))
    raycast.cast_cylinder(canvas, (x, 0.0, z), 0.2, 3.0, tree)
    raycast.cast_sphere(canvas, (x, 3.0 + crown * 0.8, z), crown, tree)


def render_street(seed: int, index: int, height: int = 128, width: int = 256,
                  return_camera: bool = False) -> dict[str, np.ndarray]:
  """One CityScapes-like sample.

  Returns:
    image `[H, W, 3]` float32 in [0, 1]; label_19 `[H, W]` int8 (Cityscapes train ids,
    `CITYSCAPES_19_CLASSES`, -1 = void); label_7 `[H, W]` int8 (categories, `CITYSCAPES_7_CLASSES`);
    depth `[H, W, 1]` float32 *inverse* depth as the release stores it, (256 * disparity + 1) / 65535
    with disparity = baseline * focal / z at Cityscapes' full resolution; 0 = invalid (sky, holes).
  """
  memory.keep_freed_memory()
  rng = _rng(seed, index, 7)
  road, walk = float(rng.uniform(3.5, 7.0)), float(rng.uniform(2.0, 4.0))
  cam_h = float(rng.uniform(1.2, 1.5))
  origin = np.array([rng.uniform(-road + 1.5, road - 1.5), cam_h, 0.0])
  rotation = raycast.camera_rotation(math.radians(rng.uniform(-8, 8)),
                                     math.radians(rng.uniform(-2, 4)),
                                     math.radians(rng.uniform(-2, 2)))
  canvas = raycast.Canvas(height, width, CITYSCAPES_HFOV, origin, rotation)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    _street_scene(canvas, rng, road, walk)
    sky = canvas.surface < 0
    canvas.surface[sky] = canvas.add_surface(Surface(10, _color(rng, (0.6, 0.75, 0.95), 0.1), 0))
    canvas.t[sky] = 1e4  # far away, for shading; invalid in the depth map
    image = _shade_image(canvas, rng, (0.0, 200.0, 50.0))
    image[sky] = np.array(canvas.surfaces[-1].color, np.float32)
  label_19 = np.array([s.label for s in canvas.surfaces], np.int8)[canvas.surface]
  label_19[_ellipse_mask(label_19.shape, rng, int(rng.integers(0, 2)), 0.08)] = -1
  label_7 = np.where(label_19 >= 0, CITYSCAPES_19_TO_7[np.maximum(label_19, 0)], -1).astype(np.int8)
  scale = np.float32(CITYSCAPES_BASELINE * CITYSCAPES_FOCAL * 256 / 65535)
  with np.errstate(divide="ignore"):
    inverse = scale / canvas.t + np.float32(1 / 65535)
  invalid = sky | _ellipse_mask(inverse.shape, rng,
                                                          int(rng.integers(0, 3)), 0.06)
  inverse[invalid] = 0
  sample = {"image": image, "label_7": label_7, "label_19": label_19,
            "depth": inverse.astype(np.float32)[..., None]}
  if return_camera:
    sample.update(focal=np.float64(canvas.focal), camera_height=np.float64(cam_h),
                  rotation=rotation)
  return sample
