"""The challenge server's results file: every test image's predicted category, in COCO's result
format (`[{"image_id": int, "category_id": int}, ...]`), from the devkit's annotation files.

The devkit (decathlon-1.0/annotations) has, per dataset, `<name>_train.json`, `<name>_val.json`
and `<name>_test_stripped.json` in COCO's layout: "images" ({"id", "file_name":
"data/<name>/<split>/..."}), "categories" ({"id", ...}) and, except for test, "annotations"
({"image_id", "category_id"}). A class index is the class folder of the release it was read from
(found in the training annotations), or without the folders the position of its category in
"categories" (as TFDS' reader takes it); an image is known by its file name without "data/".
"""

from __future__ import annotations

import json
import pathlib
from typing import Mapping, Sequence

from mtan_jax import rundir

PREFIX = "data/"
PREDICTIONS = "test_predictions.json"  # in a run folder: the test predictions and class folders
RESULTS = "results.json"  # in a run folder: the server's file made from them


class ResultsError(ValueError):
  """Predictions that do not fit the annotation files (the file and the images named)."""


def _read(path: pathlib.Path, expected: str = "the devkit's annotation file") -> dict:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError as error:
    raise ResultsError(f"{path}: not found; expected {expected}") from error
  except json.JSONDecodeError as error:
    raise ResultsError(f"{path}: not valid JSON ({error})") from error


def category_ids(annotations_dir, dataset: str,
                 class_folders: Sequence[str] | None = None) -> list[int]:
  """Class index -> category id of `dataset`, from its training annotations.

  With `class_folders` (the release's train folders, by class index), each folder's category is
  that of its training images in the annotations ("data/<dataset>/train/<folder>/..."), so the
  classes the model learnt from the folders map to the server's categories whatever their order;
  a folder without annotated images, or with images of two categories, is an error naming it.
  Without, the categories in the file's order."""
  path = pathlib.Path(annotations_dir) / f"{dataset}_train.json"
  content = _read(path)
  if class_folders is None:
    return [int(c["id"]) for c in content.get("categories", [])]
  files = {int(i["id"]): str(i["file_name"]) for i in content.get("images", [])}
  found: dict[str, set[int]] = {}
  prefix = f"{PREFIX}{dataset}/train/"
  for annotation in content.get("annotations", []):
    name = files.get(int(annotation["image_id"]), "")
    if name.startswith(prefix) and "/" in name[len(prefix):]:
      folder = name[len(prefix):].split("/", 1)[0]
      found.setdefault(folder, set()).add(int(annotation["category_id"]))
  out = []
  for folder in class_folders:
    ids = found.get(folder, set())
    if len(ids) != 1:
      what = "no annotated image" if not ids else f"images of {len(ids)} categories {sorted(ids)}"
      raise ResultsError(f"{path}: expected the images of class folder {prefix}{folder}/ to have "
                         f"one category, found {what}")
    out.append(ids.pop())
  return out


def test_images(annotations_dir, dataset: str) -> dict[str, int]:
  """{file name without "data/" (e.g. "aircraft/test/0001.jpg"): image id} of the test split."""
  path = pathlib.Path(annotations_dir) / f"{dataset}_test_stripped.json"
  images = _read(path).get("images", [])
  return {str(i["file_name"]).removeprefix(PREFIX): int(i["id"]) for i in images}


def results(predictions: Mapping[str, Mapping[str, int]], annotations_dir,
            class_folders: Mapping[str, Sequence[str] | None] | None = None) -> list[dict]:
  """The results of `predictions` ({dataset: {file name without "data/": class index}}): one
  entry per annotated test image of each dataset, in image-id order, class indices mapped to
  categories by `category_ids` (with the dataset's class folders when `class_folders` has them).
  ResultsError names the file and the images when a test image has no prediction, a prediction
  has no test image, or a class index is out of range."""
  out = []
  for dataset, predicted in predictions.items():
    categories = category_ids(annotations_dir, dataset, (class_folders or {}).get(dataset))
    images = test_images(annotations_dir, dataset)
    where = pathlib.Path(annotations_dir) / f"{dataset}_test_stripped.json"
    missing = sorted(set(images) - set(predicted))
    unknown = sorted(set(predicted) - set(images))
    if missing or unknown:
      parts = [f"{len(missing)} test image(s) of {where} without a prediction, e.g. {missing[:3]}"
               if missing else "",
               f"{len(unknown)} prediction(s) for images not in {where}, e.g. {unknown[:3]}"
               if unknown else ""]
      raise ResultsError("; ".join(p for p in parts if p))
    bad = {name: index for name, index in predicted.items()
           if not 0 <= int(index) < len(categories)}
    if bad:
      name, index = next(iter(sorted(bad.items())))
      raise ResultsError(f"{dataset}: class index {index} of {name} is outside the "
                         f"{len(categories)} categories of {dataset}_train.json")
    out += [{"image_id": image_id, "category_id": categories[int(predicted[name])]}
            for name, image_id in sorted(images.items(), key=lambda item: item[1])]
  return out


def write(path, predictions: Mapping[str, Mapping[str, int]], annotations_dir,
          class_folders: Mapping[str, Sequence[str] | None] | None = None) -> int:
  """Writes `results(...)` as JSON into `path` (what the server takes, zipped); returns the count."""
  entries = results(predictions, annotations_dir, class_folders)
  pathlib.Path(path).write_text(json.dumps(entries))
  return len(entries)


def save_predictions(workdir, predictions: Mapping[str, Mapping[str, int]],
                     class_folders: Mapping[str, Sequence[str] | None]) -> None:
  """A run's test predictions and the class folders they index, into `workdir/PREDICTIONS`."""
  content = {"predictions": predictions,
             "class_folders": {k: list(v) for k, v in class_folders.items() if v is not None}}
  rundir.write_text_atomically(pathlib.Path(workdir) / PREDICTIONS, json.dumps(content) + "\n")


def write_run_results(workdir, annotations_dir) -> int:
  """`workdir/RESULTS` from the run's `workdir/PREDICTIONS`; returns the count of test images."""
  path = pathlib.Path(workdir) / PREDICTIONS
  content = _read(path, "the test predictions of a finished run on the release")
  if not isinstance(content, dict) or not isinstance(content.get("predictions"), dict):
    raise ResultsError(f"{path}: expected a run's test predictions ({{\"predictions\": ...}})")
  return write(pathlib.Path(workdir) / RESULTS, content["predictions"], annotations_dir,
               content.get("class_folders", {}))


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
  """`python -m mtan_jax.decathlon.results RUN --annotations_dir=DIR`: the server's results file
  of a finished run on the release (written into the run folder)."""
  import argparse  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(description="The Visual Decathlon server's results.json of a run "
                              "on the release, from its test_predictions.json and the devkit's "
                              "annotation files.")
  p.add_argument("run", help="the run folder")
  p.add_argument("--annotations_dir", required=True,
                 help="the devkit's annotation folder (decathlon-1.0/annotations)")
  args = p.parse_args(argv)
  try:
    count = write_run_results(args.run, args.annotations_dir)
  except ResultsError as error:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(1) from error
  output = pathlib.Path(args.run) / RESULTS
  print(f"{output} ({count} test images)")
  return output


if __name__ == "__main__":
  main()
