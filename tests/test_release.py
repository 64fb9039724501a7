"""TFDS builders of the NYUv2 / CityScapes releases, built from small folders in the exact layout."""

import json
import pathlib

import chex
import numpy as np
import pytest

from mtan_jax.data import builders
from mtan_jax.data.release import ReleaseError

NYU_SHAPES = {"image": (288, 384, 3), "label": (288, 384), "depth": (288, 384, 1),
              "normal": (288, 384, 3)}
CITY_SHAPES = {"image": (128, 256, 3), "label_7": (128, 256), "label_19": (128, 256),
               "depth": (128, 256, 1)}


def write_release(root: pathlib.Path, shapes, counts={"train": 3, "val": 2}, seed=0):
  """A release folder as published: float arrays, labels as float-typed integers with -1."""
  rng = np.random.default_rng(seed)
  for split, count in counts.items():
    for field, shape in shapes.items():
      (root / split / field).mkdir(parents=True, exist_ok=True)
      for i in range(count):
        if field == "image":
          a = rng.uniform(0, 1, shape)
        elif field.startswith("label"):
          classes = 19 if field == "label_19" else 7 if field == "label_7" else 13
          a = rng.integers(-1, classes, shape).astype(np.float64)
        elif field == "depth":
          a = rng.uniform(0.5, 8, shape) * (rng.uniform(size=shape) > 0.1)
        else:
          v = rng.normal(size=shape)
          a = v / np.linalg.norm(v, axis=-1, keepdims=True)
        np.save(root / split / field / f"{i}.npy", a.astype(np.float32 if field != "label"
                                                            else np.float64))
  return root


def nyu_builder(release, data_dir):
  return builders.builder("nyuv2", release_dir=str(release), data_dir=str(data_dir))


def test_nyuv2_release_builds_and_reads_back(tmp_path):
  release = write_release(tmp_path / "nyuv2", NYU_SHAPES)
  b = nyu_builder(release, tmp_path / "tfds")
  b.download_and_prepare()
  sources = b.as_data_source()
  assert {k: len(v) for k, v in sources.items()} == {"train": 3, "test": 2}
  for split, folder in (("train", "train"), ("test", "val")):
    for record in sources[split]:
      i = int(record["index"])
      chex.assert_shape([record[f] for f in NYU_SHAPES], list(NYU_SHAPES.values()))
      chex.assert_type([record["image"], record["label"], record["depth"], record["normal"]],
                       [np.float32, np.int8, np.float32, np.float32])
      for field in NYU_SHAPES:
        expected = np.load(release / folder / field / f"{i}.npy")
        np.testing.assert_array_equal(record[field], expected.astype(record[field].dtype))
  assert np.any(sources["train"][0]["label"] == -1)



def test_a_build_larger_than_tfds_memory_buffer_needs_no_tensorflow(tmp_path, monkeypatch):
  """TFDS spills a split of more than 1 GB (the full NYUv2 release: 2.5 GB) into temporary files that
  it opens with TensorFlow; a 1-byte buffer makes every example spill here. The build succeeds
  without TensorFlow and reads back the release's values."""
  from tensorflow_datasets.core import shuffle
  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1)
  release = write_release(tmp_path / "nyuv2", NYU_SHAPES)
  b = builders.prepare("nyuv2", release_dir=str(release), data_dir=str(tmp_path / "tfds"))
  sources = b.as_data_source()
  for split, folder, count in (("train", "train", 3), ("test", "val", 2)):
    assert sorted(int(r["index"]) for r in sources[split]) == list(range(count))
    for record in sources[split]:
      for field in NYU_SHAPES:
        expected = np.load(release / folder / field / f"{int(record['index'])}.npy")
        np.testing.assert_array_equal(record[field], expected.astype(record[field].dtype))
  assert shuffle.tf is not builders._FilesWithoutTensorFlow  # put back after the build

def test_cityscapes_release_builds_both_label_sets(tmp_path):
  release = write_release(tmp_path / "city", CITY_SHAPES, {"train": 2, "val": 1})
  b = builders.prepare("cityscapes", release_dir=str(release), data_dir=str(tmp_path / "tfds"),
                       resolution=(128, 256))
  record = b.as_data_source()["test"][0]
  chex.assert_shape([record[f] for f in CITY_SHAPES], list(CITY_SHAPES.values()))
  np.testing.assert_array_equal(record["label_19"],
                                np.load(release / "val" / "label_19" / "0.npy").astype(np.int8))


def test_release_resolution_must_be_published(tmp_path):
  with pytest.raises(ValueError, match="256x512"):
    builders.builder("cityscapes", release_dir=str(tmp_path), resolution=(64, 128))


def damage(kind):
  """Each bad input a release can have, as (function that damages a release, expected message parts)."""
  def missing_root(root):
    return root / "nowhere"

  def missing_split(root):
    import shutil
    shutil.rmtree(root / "val")
    return root

  def missing_file(root):
    (root / "train" / "depth" / "1.npy").unlink()
    return root

  def wrong_shape(root):
    np.save(root / "train" / "normal" / "2.npy", np.zeros((288, 384), np.float32))
    return root

  def wrong_dtype(root):
    np.save(root / "val" / "image" / "1.npy", np.zeros((288, 384, 3), np.uint8))
    return root

  def label_out_of_range(root):
    label = np.load(root / "train" / "label" / "1.npy")
    label[5, 7] = 13
    np.save(root / "train" / "label" / "1.npy", label)
    return root

  def label_not_integer(root):
    label = np.load(root / "train" / "label" / "2.npy")
    label[0, 0] = 2.5
    np.save(root / "train" / "label" / "2.npy", label)
    return root

  def nan_depth(root):
    depth = np.load(root / "train" / "depth" / "2.npy")
    depth[10, 10, 0] = np.nan
    np.save(root / "train" / "depth" / "2.npy", depth)
    return root

  def inf_normal(root):
    normal = np.load(root / "val" / "normal" / "0.npy")
    normal[3, 3, 1] = np.inf
    np.save(root / "val" / "normal" / "0.npy", normal)
    return root

  def truncated(root):
    path = root / "train" / "image" / "0.npy"
    path.write_bytes(path.read_bytes()[:1000])
    return root

  return {
      "missing_root": (missing_root, ["nowhere", "does not exist", "{train,val}/{image,label,depth,normal}"]),
      "missing_split": (missing_split, ["val", "is missing", "{train,val}"]),
      "missing_file": (missing_file, ["train/depth", "missing 1 file", "1.npy"]),
      "wrong_shape": (wrong_shape, ["train/normal/2.npy", "'normal'", "expected shape (288, 384, 3)",
                                    "found (288, 384)"]),
      "wrong_dtype": (wrong_dtype, ["val/image/1.npy", "'image'", "expected a float dtype",
                                    "found uint8"]),
      "label_out_of_range": (label_out_of_range, ["train/label/1.npy", "'label'",
                                                  "{-1, 0..12}", "found [13.0]"]),
      "label_not_integer": (label_not_integer, ["train/label/2.npy", "{-1, 0..12}", "2.5"]),
      "nan_depth": (nan_depth, ["train/depth/2.npy", "'depth'", "finite", "1 NaN or inf"]),
      "inf_normal": (inf_normal, ["val/normal/0.npy", "'normal'", "finite"]),
      "truncated": (truncated, ["train/image/0.npy"]),
  }[kind]


@pytest.mark.parametrize("kind", ["missing_root", "missing_split", "missing_file", "wrong_shape",
                                  "wrong_dtype", "label_out_of_range", "label_not_integer",
                                  "nan_depth", "inf_normal", "truncated"])
def test_bad_release_gives_a_clear_error_and_leaves_nothing_built(tmp_path, kind):
  release = write_release(tmp_path / "nyuv2", NYU_SHAPES)
  broken, parts = damage(kind)
  root = broken(release)
  data_dir = tmp_path / "tfds"
  b = nyu_builder(root, data_dir)
  with pytest.raises(ReleaseError) as error:
    b.download_and_prepare()
  for part in parts:
    assert part in str(error.value), str(error.value)
  # Nothing a later run would take as a complete dataset.
  assert not nyu_builder(root, data_dir).is_prepared()
  assert not list(data_dir.glob("**/dataset_info.json"))


def test_a_failed_build_is_rebuilt_from_scratch_once_fixed(tmp_path):
  release = write_release(tmp_path / "nyuv2", NYU_SHAPES)
  good = np.load(release / "train" / "depth" / "2.npy")
  damage("nan_depth")[0](release)
  with pytest.raises(ReleaseError):
    nyu_builder(release, tmp_path / "tfds").download_and_prepare()
  np.save(release / "train" / "depth" / "2.npy", good)
  b = nyu_builder(release, tmp_path / "tfds")
  b.download_and_prepare()
  assert len(b.as_data_source()["train"]) == 3


# --- The release folder named is the data read: checked every run, one build per folder ---------

def first_image(source, index=0):
  """The image of the record built from example `index` of a split's source."""
  return next(r["image"] for r in source if int(r["index"]) == index)


def test_a_build_records_its_folder_and_two_folders_live_side_by_side(tmp_path):
  a = write_release(tmp_path / "A", NYU_SHAPES, seed=0)
  b = write_release(tmp_path / "B", NYU_SHAPES, seed=1)
  said = []
  for release in (a, b, a):  # in turn: each read sees its own folder's values
    built = builders.prepare("nyuv2", release_dir=str(release), data_dir=str(tmp_path / "tfds"),
                             say=said.append, progress=False)
    np.testing.assert_array_equal(first_image(built.as_data_source()["train"]),
                                  np.load(release / "train" / "image" / "0.npy"))
    np.testing.assert_array_equal(first_image(built.as_data_source()["test"], 1),
                                  np.load(release / "val" / "image" / "1.npy"))
  # Two builds, one per folder; the third use found A's built.
  assert len(said) == 2 and all(s.startswith("Building the nyuv2 release ") for s in said)
  assert f"release {a.resolve()} (3 train + 2 val examples) into " in said[0]
  assert builders.locate("nyuv2", release_dir=str(a), data_dir=str(tmp_path / "tfds")).status == (
      "up to date")
  record = json.loads((pathlib.Path(built.data_dir) / builders.PROVENANCE).read_text())
  assert record["release_dir"] == str(a.resolve()) and len(record["files"]) == 20


def test_a_missing_folder_after_a_build_of_another_stops_naming_it(tmp_path):
  a = write_release(tmp_path / "A", NYU_SHAPES)
  builders.prepare("nyuv2", release_dir=str(a), data_dir=str(tmp_path / "tfds"), progress=False)
  for missing, parts in ((tmp_path / "nowhere", ["nowhere", "does not exist"]),
                         (a / "train" / "image" / "0.npy", ["0.npy is a file, not a folder"])):
    with pytest.raises(ReleaseError) as error:
      builders.locate("nyuv2", release_dir=str(missing), data_dir=str(tmp_path / "tfds"))
    assert all(p in str(error.value) for p in parts), str(error.value)
  (a / "val" / "depth" / "1.npy").unlink()  # a file of the built folder itself
  with pytest.raises(ReleaseError, match=r"val/depth: missing 1 file\(s\), e.g. \['1.npy'\]"):
    builders.prepare("nyuv2", release_dir=str(a), data_dir=str(tmp_path / "tfds"))


def test_a_file_changed_after_the_build_is_rebuilt_naming_it(tmp_path):
  a = write_release(tmp_path / "A", NYU_SHAPES)
  builders.prepare("nyuv2", release_dir=str(a), data_dir=str(tmp_path / "tfds"), progress=False)
  changed = np.load(a / "train" / "image" / "2.npy")
  changed[:4] = 0.25  # same size: only the modification time tells
  np.save(a / "train" / "image" / "2.npy", changed)
  source = builders.locate("nyuv2", release_dir=str(a), data_dir=str(tmp_path / "tfds"))
  assert source.status == "out of date: 1 file(s) changed since it was built"
  said = []
  built = builders.prepare("nyuv2", release_dir=str(a), data_dir=str(tmp_path / "tfds"),
                           say=said.append, progress=False)
  assert "is out of date, rebuilding it" in said[0]
  assert f"{a.resolve()}/train/image/2.npy: changed (size 1327232 -> 1327232 bytes" in said[0]
  np.testing.assert_array_equal(first_image(built.as_data_source()["train"], 2), changed)


@pytest.mark.parametrize("how", ["dangling_link", "folder"])
def test_a_file_made_unreadable_after_the_build_stops_naming_it(tmp_path, how):
  a = write_release(tmp_path / "A", NYU_SHAPES)
  builders.prepare("nyuv2", release_dir=str(a), data_dir=str(tmp_path / "tfds"), progress=False)
  path = a / "val" / "normal" / "0.npy"
  path.unlink()
  if how == "dangling_link":  # unreadable even to root (permissions do not stop root)
    path.symlink_to(tmp_path / "gone.npy")
  else:
    path.mkdir()
  with pytest.raises(ReleaseError) as error:
    builders.prepare("nyuv2", release_dir=str(a), data_dir=str(tmp_path / "tfds"))
  assert str(error.value).startswith(f"{path}: field 'normal' cannot be read"), str(error.value)


def test_the_build_speaks_in_the_projects_words(tmp_path, capsys):
  a = write_release(tmp_path / "A", NYU_SHAPES)
  builders.prepare("nyuv2", release_dir=str(a), data_dir=str(tmp_path / "tfds"))
  out, err = capsys.readouterr()
  assert out.startswith(f"Building the nyuv2 release {a.resolve()} (3 train + 2 val examples) "
                        f"into {tmp_path / 'tfds'}/mtan_nyuv2/288x384_A_")
  # a progress bar over the examples (its total shown from the start; later states are drawn at
  # most every 0.1 s, so whether "3/3" is ever drawn depends on the machine's speed)
  assert "building train" in err and "0/3" in err
  assert "Downloading and preparing" not in out + err and "Unknown size" not in out + err
