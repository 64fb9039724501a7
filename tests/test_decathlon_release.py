"""The Decathlon release on disk: its layout checked with the folder or file named, its images
built once (Pillow, uint8, whole) and read back as they were, the reference's crops and flips,
the class folders mapped to the server's categories, and a run over a small release that writes
the server's results file."""

import dataclasses
import json
import os

import chex
import numpy as np
import pytest
from PIL import Image

from mtan_jax import decathlon
from mtan_jax.data.release import ReleaseError
from mtan_jax.decathlon import build
from mtan_jax.decathlon import data as data_lib
from mtan_jax.decathlon import release
from mtan_jax.decathlon import results as results_lib

# Class folders not in the order of their categories (see `annotations`).
FOLDERS = ("0001", "0002")


def write_dataset(root, name, *, train=3, val=1, test=3, seed=0):
  """A dataset in the release's layout: two class folders, images 72 pixels high and 72-90 wide
  (class 1 brighter than class 0, so a run can learn it), JPEG and PNG."""
  rng = np.random.default_rng([seed, decathlon.NAMES.index(name)])
  for split, count in (("train", train), ("val", val)):
    for label, folder in enumerate(FOLDERS):
      path = root / name / split / folder
      path.mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 100, (72, 72 + 6 * i, 3)) + 150 * label
        Image.fromarray(pixels.astype(np.uint8)).save(path / f"{split}{label}{i}.png")
  path = root / name / "test" / "all"
  path.mkdir(parents=True)
  for i in range(test):
    Image.fromarray(rng.integers(0, 255, (80, 72, 3)).astype(np.uint8)).save(path / f"{i:03d}.png")


@pytest.fixture
def small_release(tmp_path):
  root = tmp_path / "decathlon-1.0-data"
  for name in ("imagenet12", "svhn"):
    write_dataset(root, name)
  return root


def test_the_layout_is_read_as_torchvisions_image_folder(small_release):
  files = release.list_files(small_release, "svhn", classes=2)
  assert files.classes == FOLDERS and files.listing.counts == {"train": 6, "val": 2, "test": 3}
  assert files.examples["train"][:4] == (("svhn/train/0001/train00.png", 0),
                                        ("svhn/train/0001/train01.png", 0),
                                        ("svhn/train/0001/train02.png", 0),
                                        ("svhn/train/0002/train10.png", 1))
  assert files.examples["test"][0] == ("svhn/test/all/000.png", -1)
  assert set(files.listing.files) >= {"train/0001/train00.png", "test/all/002.png"}


def test_a_release_that_does_not_fit_is_named(small_release, tmp_path):
  with pytest.raises(ReleaseError, match="release folder .*nowhere does not exist"):
    release.list_files(tmp_path / "nowhere", "svhn", classes=2)
  with pytest.raises(ReleaseError, match="dataset folder .*/dtd is missing"):
    release.list_files(small_release, "dtd", classes=2)
  with pytest.raises(ValueError, match="expected one of .*found 'mnist'"):
    release.list_files(small_release, "mnist")
  with pytest.raises(ReleaseError, match=r"svhn/train: expected 10 class folders \(svhn has 10 "
                     r"classes\), found 2"):
    release.list_files(small_release, "svhn")
  (small_release / "svhn" / "val" / "0003").mkdir()
  with pytest.raises(ReleaseError, match=r"svhn/val: class folder\(s\) \['0003'\] are not among "
                     r"the 2 class folders of .*svhn/train"):
    release.list_files(small_release, "svhn", classes=2)
  for image in (small_release / "imagenet12" / "train" / "0002").iterdir():
    image.unlink()
  with pytest.raises(ReleaseError, match="imagenet12/train/0002: expected images of class '0002'"):
    release.list_files(small_release, "imagenet12", classes=2)
  for image in (small_release / "svhn" / "test" / "all").iterdir():
    image.unlink()
  (small_release / "svhn" / "val" / "0003").rmdir()
  with pytest.raises(ReleaseError, match="svhn/test: expected images"):
    release.list_files(small_release, "svhn", classes=2)


def test_images_get_a_shorter_side_of_72_and_the_references_crops(tmp_path):
  Image.fromarray(np.zeros((100, 150), np.uint8)).save(tmp_path / "grey.png")
  image = release.load_image(tmp_path / "grey.png")
  chex.assert_shape(image, (72, 108, 3))  # int(72 * 150 / 100); grey becomes RGB
  assert release.resized_size(300, 90) == (240, 72) and release.resized_size(72, 81) == (72, 81)
  kept = np.random.default_rng(0).integers(0, 255, (81, 72, 3)).astype(np.uint8)
  Image.fromarray(kept).save(tmp_path / "kept.png")
  np.testing.assert_array_equal(release.load_image(tmp_path / "kept.png"), kept)  # no resize
  (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(ReleaseError, match="broken.jpg: not a readable image"):
    release.load_image(tmp_path / "broken.jpg")
  # torchvision's CenterCrop: int(round((L - 72) / 2)), Python's rounding (half to even).
  assert [release.crop_offset(n, 72, None) for n in (72, 73, 74, 75, 77)] == [0, 0, 1, 2, 2]
  rng = np.random.default_rng(0)
  assert {release.crop_offset(75, 72, rng) for _ in range(200)} == {0, 1, 2, 3}
  chex.assert_shape(release.crop(kept, 72, None), (72, 72, 3))
  np.testing.assert_array_equal(release.crop(kept, 72, None), kept[4:76])


def test_a_dataset_is_built_once_and_read_back_as_its_files(small_release, tmp_path):
  said = []
  built = build.prepare("svhn", small_release, data_dir=str(tmp_path / "tfds"), classes=2,
                        say=said.append, progress=False)
  assert len(said) == 1 and said[0].startswith("Building the Decathlon dataset svhn of ")
  assert built.classes == FOLDERS
  assert {k: len(v) for k, v in built.sources.items()} == {"train": 6, "val": 2, "test": 3}
  for split in ("train", "test"):
    for record in (built.sources[split][i] for i in range(len(built.sources[split]))):
      name = built.files[split][record["index"]]
      expected = np.asarray(Image.open(small_release / name).convert("RGB"))
      np.testing.assert_array_equal(record["image"], expected)
      assert record["label"] == (-1 if split == "test" else FOLDERS.index(name.split("/")[2]))
  again = build.prepare("svhn", small_release, data_dir=str(tmp_path / "tfds"), classes=2,
                        say=said.append, progress=False)
  assert len(said) == 1 and again.folder == built.folder  # not built twice
  changed = small_release / "svhn" / "val" / "0001" / "val00.png"
  Image.fromarray(np.zeros((72, 72, 3), np.uint8)).save(changed)
  os.utime(changed, ns=(1, 1))
  build.prepare("svhn", small_release, data_dir=str(tmp_path / "tfds"), classes=2,
                say=said.append, progress=False)
  assert "out of date" in said[1] and "val/0001/val00.png: changed" in said[1]
  (small_release / "imagenet12" / "train" / "0001" / "train01.png").write_bytes(b"damaged")
  with pytest.raises(ReleaseError, match="train01.png: not a readable image"):
    build.prepare("imagenet12", small_release, data_dir=str(tmp_path / "tfds"), classes=2,
                  say=said.append, progress=False)
  assert not list((tmp_path / "tfds").glob("mtan_decathlon/imagenet12_*/1.0.0"))  # nothing kept


def test_release_batches_are_the_references_crops_flips_and_normalisation(small_release,
                                                                           tmp_path):
  imagenet, svhn = data_lib.release_tasks(small_release, data_dir=str(tmp_path / "tfds"),
                                          classes=(2, 2), datasets=("imagenet12", "svhn"),
                                          say=lambda _: None, progress=False)
  assert svhn.image_size == 72 and svhn.class_folders == FOLDERS and not svhn.task.flip
  test = list(data_lib.batches(svhn, "test", 4, 2, train=False))
  chex.assert_shape(test[0]["image"], (2, 2, 72, 72, 3))
  assert [int(v) for b in test for v in b["valid"].reshape(-1)] == [1, 1, 1, 0]
  first = test[0]["index"].reshape(-1)[0]
  decoded = np.asarray(Image.open(small_release / svhn.names["test"][first]).convert("RGB"))
  expected = (decoded[4:76] / 255.0 - np.array(svhn.task.mean)) / np.array(svhn.task.std)
  np.testing.assert_allclose(test[0]["image"][0, 0], expected, atol=1e-5)  # the centre 72x80
  # svhn trains on centre crops, unflipped; imagenet12 on random crops, flipped half the time.
  train = [b for e in range(4) for b in data_lib.batches(svhn, "train", 6, 1, train=True,
                                                          epoch=e)]
  centre = {data_lib.normalise(release.crop(np.asarray(Image.open(small_release / n)), 72, None),
                               svhn.task).tobytes() for n in svhn.names["train"]}
  assert all(im.tobytes() in centre for b in train for im in b["image"].reshape(-1, 72, 72, 3))
  seen = set()
  for e in range(8):
    for b in data_lib.batches(imagenet, "train", 6, 1, train=True, epoch=e):
      for im, index in zip(b["image"].reshape(-1, 72, 72, 3), b["index"].reshape(-1)):
        name = imagenet.names["train"][index]
        original = data_lib.normalise(np.asarray(Image.open(small_release / name)), imagenet.task)
        width = original.shape[1]
        offsets = [x for x in range(width - 71) if np.allclose(original[:, x:x + 72], im)]
        mirrored = [x for x in range(width - 71)
                    if np.allclose(original[:, x:x + 72][:, ::-1], im)]
        assert offsets or mirrored
        if width > 78:
          seen.add(("offset", (offsets or mirrored)[0]))
        seen.add(("flip", bool(mirrored) and not offsets))
  assert {("flip", True), ("flip", False)} <= seen
  assert len({s for s in seen if s[0] == "offset"}) > 3  # crops from many places


def test_class_folders_map_to_the_servers_categories_through_the_training_annotations(tmp_path):
  folder = tmp_path / "annotations"
  folder.mkdir()
  train = {"images": [{"id": 1, "file_name": "data/svhn/train/0001/a.png"},
                      {"id": 2, "file_name": "data/svhn/train/0002/b.png"},
                      {"id": 3, "file_name": "data/svhn/train/0002/c.png"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 502},
                           {"id": 2, "image_id": 2, "category_id": 501},
                           {"id": 3, "image_id": 3, "category_id": 501}],
           "categories": [{"id": 501}, {"id": 502}]}
  (folder / "svhn_train.json").write_text(json.dumps(train))
  (folder / "svhn_test_stripped.json").write_text(json.dumps(
      {"images": [{"id": 9, "file_name": "data/svhn/test/all/000.png"}], "categories": []}))
  assert results_lib.category_ids(folder, "svhn", FOLDERS) == [502, 501]
  assert results_lib.category_ids(folder, "svhn") == [501, 502]  # without folders: file order
  assert results_lib.results({"svhn": {"svhn/test/all/000.png": 0}}, folder,
                             {"svhn": FOLDERS}) == [{"image_id": 9, "category_id": 502}]
  train["annotations"][2]["category_id"] = 502
  (folder / "svhn_train.json").write_text(json.dumps(train))
  with pytest.raises(results_lib.ResultsError, match=r"class folder data/svhn/train/0002/ to "
                     r"have one category, found images of 2 categories \[501, 502\]"):
    results_lib.category_ids(folder, "svhn", FOLDERS)
  with pytest.raises(results_lib.ResultsError, match="0003/ to have one category, found no "
                     "annotated image"):
    results_lib.category_ids(folder, "svhn", ("0001", "0003"))


@pytest.mark.slow
def test_a_run_on_the_release_writes_the_servers_results(small_release, tmp_path, capsys):
  from mtan_jax.decathlon import train as train_lib
  from mtan_jax.decathlon.config import DecathlonConfig
  annotations = tmp_path / "annotations"
  annotations.mkdir()
  for name in ("imagenet12", "svhn"):
    names = sorted(str(p.relative_to(small_release)) for p in
                   (small_release / name / "train").rglob("*.png"))
    (annotations / f"{name}_train.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"data/{n}"} for i, n in enumerate(names)],
        "annotations": [{"id": i, "image_id": i, "category_id": 8000 + int(n.split("/")[2])}
                        for i, n in enumerate(names)], "categories": []}))
    tests = sorted(str(p.relative_to(small_release)) for p in
                   (small_release / name / "test").rglob("*.png"))
    (annotations / f"{name}_test_stripped.json").write_text(json.dumps({
        "images": [{"id": 100 * (name == "svhn") + i, "file_name": f"data/{n}"}
                   for i, n in enumerate(tests)]}))
  tasks = data_lib.release_tasks(small_release, data_dir=str(tmp_path / "tfds"), classes=(2, 2),
                                 datasets=("imagenet12", "svhn"), say=lambda _: None,
                                 progress=False)
  config = DecathlonConfig(depth=10, widen_factor=1, epochs=1, batch_size=4, devices=1,
                           progress=False, settle="none", workdir=str(tmp_path / "run"),
                           annotations_dir=str(annotations), drop_first_task_epoch=0)
  with pytest.raises(train_lib.RunError, match=r"--batch_size 8: the training split of "
                     r"imagenet12 \(6\), svhn \(6\) examples is smaller than one batch"):
    train_lib.run(dataclasses.replace(config, batch_size=8, keep_partial_batch=False), tasks)
  summary = train_lib.run(config, tasks)
  assert summary["test"] == {} and summary["accuracy_split"] == "validation"
  assert set(summary["validation"]) == {"imagenet12", "svhn"}
  saved = json.loads((tmp_path / "run" / "test_predictions.json").read_text())
  predictions = saved["predictions"]
  assert sorted(predictions["svhn"]) == ["svhn/test/all/000.png", "svhn/test/all/001.png",
                                         "svhn/test/all/002.png"]
  assert saved["class_folders"] == {"imagenet12": list(FOLDERS), "svhn": list(FOLDERS)}
  entries = json.loads((tmp_path / "run" / "results.json").read_text())
  assert [e["image_id"] for e in entries] == [0, 1, 2, 100, 101, 102]
  assert all(e["category_id"] in (8001, 8002) for e in entries)
  by_id = {e["image_id"]: e["category_id"] for e in entries}
  assert by_id[101] == 8001 + predictions["svhn"]["svhn/test/all/001.png"]
  # Annotations that do not fit: the run completes, says how to make the file later, and the
  # command makes it from the run folder once they are right.
  (tmp_path / "run" / "results.json").unlink()
  (annotations / "svhn_train.json").rename(annotations / "moved.json")
  capsys.readouterr()
  train_lib.run(dataclasses.replace(config, resume=True), tasks)
  said = capsys.readouterr().out.splitlines()
  assert any("warning: no results.json: " in s and "svhn_train.json: not found" in s
             and "python -m mtan_jax.decathlon.results" in s for s in said)
  assert (tmp_path / "run" / "summary.json").exists()
  assert not (tmp_path / "run" / "results.json").exists()
  (annotations / "moved.json").rename(annotations / "svhn_train.json")
  output = results_lib.main([str(tmp_path / "run"), f"--annotations_dir={annotations}"])
  assert json.loads(output.read_text()) == entries
  with pytest.raises(SystemExit):
    results_lib.main([str(tmp_path), f"--annotations_dir={annotations}"])  # not a run folder
