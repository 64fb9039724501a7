"""CityScapes from the official files: pairing, label ids to train ids and categories, disparity to
the release's inverse depth, resizing; checked against tables written out here."""


import chex
import numpy as np
import pytest
from PIL import Image

from mtan_jax.data import cityscapes
from mtan_jax.data.release import ReleaseError

# cityscapesScripts' labels.py, written out: name: (id, trainId or None when ignored, category).
LABELS = {
    "unlabeled": (0, None, "void"), "ego vehicle": (1, None, "void"),
    "rectification border": (2, None, "void"), "out of roi": (3, None, "void"),
    "static": (4, None, "void"), "dynamic": (5, None, "void"), "ground": (6, None, "void"),
    "road": (7, 0, "flat"), "sidewalk": (8, 1, "flat"), "parking": (9, None, "flat"),
    "rail track": (10, None, "flat"), "building": (11, 2, "construction"),
    "wall": (12, 3, "construction"), "fence": (13, 4, "construction"),
    "guard rail": (14, None, "construction"), "bridge": (15, None, "construction"),
    "tunnel": (16, None, "construction"), "pole": (17, 5, "object"),
    "polegroup": (18, None, "object"), "traffic light": (19, 6, "object"),
    "traffic sign": (20, 7, "object"), "vegetation": (21, 8, "nature"),
    "terrain": (22, 9, "nature"), "sky": (23, 10, "sky"), "person": (24, 11, "human"),
    "rider": (25, 12, "human"), "car": (26, 13, "vehicle"), "truck": (27, 14, "vehicle"),
    "bus": (28, 15, "vehicle"), "caravan": (29, None, "vehicle"), "trailer": (30, None, "vehicle"),
    "train": (31, 16, "vehicle"), "motorcycle": (32, 17, "vehicle"),
    "bicycle": (33, 18, "vehicle"),
}
CATEGORIES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")


def expected_ids(label_ids):
  """Independent mapping: (19 train ids, 7 categories), -1 for ignored labels."""
  by_id = {i: (t, c) for i, t, c in LABELS.values()}
  train = np.vectorize(lambda i: -1 if by_id[i][0] is None else by_id[i][0])(label_ids)
  category = np.vectorize(lambda i: -1 if by_id[i][0] is None else CATEGORIES.index(by_id[i][1]))(
      label_ids)
  return train, category


def write_frame(root, split, city, frame, seed, size=(64, 128)):
  """One frame in the official layout: a uniform colour, label ids and disparity codes constant
  over 2x2 blocks (so a nearest 2x downscale is the block values, however it samples)."""
  rng = np.random.default_rng(seed)
  height, width = size
  key = f"{city}_000000_{frame:06d}"
  colour = rng.integers(0, 256, 3, dtype=np.uint8)
  blocks_ids = rng.choice([v[0] for v in LABELS.values()], (height // 2, width // 2))
  blocks_disparity = rng.integers(0, 32258, (height // 2, width // 2)) * (
      rng.uniform(size=(height // 2, width // 2)) > 0.2)
  up = lambda a: np.repeat(np.repeat(a, 2, 0), 2, 1)  # noqa: E731
  for kind, name, array in (  # RGB, 8-bit and 16-bit grayscale PNGs, as the official files
      ("leftImg8bit", f"{key}_leftImg8bit.png", np.broadcast_to(colour, (height, width, 3))),
      ("gtFine", f"{key}_gtFine_labelIds.png", up(blocks_ids).astype(np.uint8)),
      ("disparity", f"{key}_disparity.png", up(blocks_disparity).astype(np.uint16))):
    folder = root / kind / split / city
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(folder / name)
  return colour, blocks_ids, blocks_disparity


@pytest.fixture
def official(tmp_path):
  frames = {}
  for split, cities in (("train", ("aachen", "bochum")), ("val", ("lindau",))):
    for c, city in enumerate(cities):
      for frame in range(2):
        seed = 100 * c + frame + (7 if split == "val" else 0)
        frames[(split, city, frame)] = write_frame(tmp_path, split, city, frame, seed)
  return tmp_path, frames


def test_frames_are_paired_and_converted_as_the_release_holds_them(official):
  root, frames = official
  assert cityscapes.is_official_layout(root) and not cityscapes.is_official_layout(root / "gtFine")
  examples = cityscapes.pair_files(root, "train")
  assert [e.image.name for e in examples] == [  # by city, then name
      "aachen_000000_000000_leftImg8bit.png", "aachen_000000_000001_leftImg8bit.png",
      "bochum_000000_000000_leftImg8bit.png", "bochum_000000_000001_leftImg8bit.png"]
  for example in examples + cityscapes.pair_files(root, "val"):
    split, city = example.image.parts[-3], example.image.parts[-2]
    frame = int(example.image.name.split("_")[2])
    colour, ids, disparity = frames[(split, city, frame)]
    loaded = cityscapes.load(example, 32, 64)
    chex.assert_shape([loaded["image"], loaded["label_19"], loaded["label_7"], loaded["depth"]],
                      [(32, 64, 3), (32, 64), (32, 64), (32, 64, 1)])
    np.testing.assert_allclose(loaded["image"], np.broadcast_to(colour / 255.0, (32, 64, 3)),
                               atol=1e-6)
    train, category = expected_ids(ids)
    np.testing.assert_array_equal(loaded["label_19"], train)
    np.testing.assert_array_equal(loaded["label_7"], category)
    np.testing.assert_allclose(loaded["depth"][..., 0], disparity / 65535.0, rtol=1e-7)
    assert loaded["depth"].dtype == np.float32 and loaded["label_19"].dtype == np.int8


def test_bad_official_files_are_named(official):
  root, _ = official
  missing = root / "disparity" / "train" / "bochum" / "bochum_000000_000001_disparity.png"
  missing.unlink()
  with pytest.raises(ReleaseError, match=f"bochum_000000_000001_leftImg8bit.png: its disparity "
                                         f"file {missing} is missing"):
    cityscapes.pair_files(root, "train")
  (example,) = [e for e in cityscapes.pair_files(root, "val")
                if e.image.name.endswith("000000_leftImg8bit.png")]
  Image.fromarray(np.zeros((32, 128), np.uint8)).save(example.labels)  # wrong size
  with pytest.raises(ReleaseError, match=f"{example.labels}: expected the size of .*128x64, "
                                         f"found 128x32"):
    cityscapes.load(example, 32, 64)
  Image.fromarray(np.full((64, 128), 40, np.uint8)).save(example.labels)  # not a label id
  with pytest.raises(ReleaseError, match=r"labelIds.png: expected CityScapes label ids 0..33, "
                                         r"found \[40\] at 2048 pixel\(s\)"):
    cityscapes.load(example, 32, 64)
  with pytest.raises(ReleaseError, match="folder .*leftImg8bit/test is missing"):
    cityscapes.pair_files(root, "test")


def test_the_official_layout_is_recognised_built_and_read_as_the_release(official, capsys):
  from mtan_jax import tasks as tasks_lib  # pylint: disable=import-outside-toplevel
  from mtan_jax.data import builders, pipeline  # pylint: disable=import-outside-toplevel
  root, frames = official
  data = pipeline.DataConfig(dataset="cityscapes", release_dir=str(root),
                             tfds_dir=str(root.parent / "tfds"), resolution=(128, 256),
                             num_classes=19)
  source = pipeline.locate(data)
  assert source.status == "not built" and "mtan_cityscapes_official" in source.builder.data_dir
  assert source.listing.counts == {"train": 4, "val": 2} and len(source.listing.files) == 18
  tasks = tasks_lib.dataset_tasks("cityscapes", num_classes=19)
  test = pipeline.open_split(data, "test", tasks, progress=False)
  assert "Building the cityscapes release" in capsys.readouterr().out
  up = lambda a: np.repeat(np.repeat(a, 4, 0), 4, 1)  # noqa: E731  (64x128 blocks of 2 -> 128x256)
  for i in range(len(test)):
    index = int(test.source[int(test.positions[i])]["index"])
    example = cityscapes.pair_files(root, "val")[index]
    colour, ids, disparity = frames[("val", "lindau", int(example.image.name.split("_")[2]))]
    got = test[i]
    np.testing.assert_array_equal(got["segmentation"], expected_ids(up(ids))[0])
    np.testing.assert_allclose(got["depth"][..., 0], up(disparity) / 65535.0, rtol=1e-7)
    np.testing.assert_allclose(got["image"], np.broadcast_to(colour / 255.0, (128, 256, 3)),
                               atol=1e-6)
  assert pipeline.locate(data).status == "up to date"
  empty = root.parent / "neither"
  empty.mkdir()
  with pytest.raises(ReleaseError, match="holds neither layout: expected the MTAN release .* or "
                                         "the official files"):
    builders.builder("cityscapes", release_dir=str(empty))


@pytest.mark.slow
def test_the_experiment_script_trains_on_the_official_files(official, tmp_path_factory):
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from tests.test_train import ROOT, XLA_CACHE  # pylint: disable=import-outside-toplevel
  root, _ = official
  workdir = tmp_path_factory.mktemp("run") / "run"
  result = subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "cityscapes.py"), f"--data_dir={root}",
       f"--tfds_dir={root.parent / 'tfds'}", "--resolution=128x256", "--model=split_standard",
       "--width_mult=0.0625", "--batch_size=2", "--epochs=1", "--steps_per_epoch=2",
       f"--workdir={workdir}", "--progress=false", "--workers=2", "--devices=1",
       f"--compilation_cache={XLA_CACHE}"],
      env={**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest"},
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith(f"Training on the cityscapes release {root} (4 train + 2 val")
  (record,) = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert set(record["test"]) == {"segmentation", "depth"}
  assert all(v is None or np.isfinite(v) for v in record["train"]["depth"].values())


def test_frames_are_loaded_in_threads_in_order_and_the_first_bad_one_is_reported():
  """Item 0 waits until item 2 is done and frame 7 until frame 12 has failed, so the threads finish
  out of order for certain: the results still come in order, and frame 7's error is the one told."""
  import threading

  from mtan_jax.data import builders

  done = {i: threading.Event() for i in range(20)}
  finished = []

  def square(i, waits_for):
    try:
      if i in waits_for:
        assert done[waits_for[i]].wait(timeout=30), f"item {waits_for[i]} never ran beside {i}"
      if i in (7, 12):
        raise ReleaseError(f"frame {i}")
      return i * i
    finally:
      finished.append(i)
      done[i].set()

  results = builders._in_threads(lambda i: square(i, {0: 2}), range(7), workers=3)
  assert list(results) == [i * i for i in range(7)]
  assert finished.index(2) < finished.index(0)  # computed ahead, handed out in order
  results = builders._in_threads(lambda i: square(i, {7: 12}), range(20), workers=3)
  assert [next(results) for _ in range(7)] == [i * i for i in range(7)]
  with pytest.raises(ReleaseError, match="frame 7"):
    next(results)
