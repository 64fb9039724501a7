"""The challenge server's results file: every test image's predicted category, in COCO's result
format (`[{"image_id": int, "category_id": int}, ...]`), from the devkit's annotation files.

The devkit (decathlon-1.0/annotations) has, per dataset, `<name>_train.json`, `<name>_val.json`
and `<name>_test_stripped.json` in COCO's layout: "images" ({"id", "file_name":
"data/<name>/<split>/..."}), "categories" ({"id", ...}) and, except for test, "annotations"
({"image_id", "category_id"}). A class index is the position of its category in "categories"
(as the devkit's readers and TFDS take it); an image is known by its file name without "data/".
"""

from __future__ import annotations

import json
import pathlib
from typing import Mapping

PREFIX = "data/"


class ResultsError(ValueError):
  """Predictions that do not fit the annotation files (the file and the images named)."""


def _read(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError as error:
    raise ResultsError(f"{path}: not found; expected the devkit's annotation file") from error
  except json.JSONDecodeError as error:
    raise ResultsError(f"{path}: not valid JSON ({error})") from error


def category_ids(annotations_dir, dataset: str) -> list[int]:
  """The category ids of `dataset` in its training annotations' order: class index -> id."""
  path = pathlib.Path(annotations_dir) / f"{dataset}_train.json"
  return [int(c["id"]) for c in _read(path).get("categories", [])]


def test_images(annotations_dir, dataset: str) -> dict[str, int]:
  """{file name without "data/" (e.g. "aircraft/test/0001.jpg"): image id} of the test split."""
  path = pathlib.Path(annotations_dir) / f"{dataset}_test_stripped.json"
  images = _read(path).get("images", [])
  return {str(i["file_name"]).removeprefix(PREFIX): int(i["id"]) for i in images}


def results(predictions: Mapping[str, Mapping[str, int]], annotations_dir) -> list[dict]:
  """The results of `predictions` ({dataset: {file name without "data/": class index}}): one
  entry per annotated test image of each dataset, in image-id order. ResultsError names the file
  and the images when a test image has no prediction, a prediction has no test image, or a class
  index is out of range."""
  out = []
  for dataset, predicted in predictions.items():
    categories = category_ids(annotations_dir, dataset)
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


def write(path, predictions: Mapping[str, Mapping[str, int]], annotations_dir) -> int:
  """Writes `results(...)` as JSON into `path` (what the server takes, zipped); returns the count."""
  entries = results(predictions, annotations_dir)
  pathlib.Path(path).write_text(json.dumps(entries))
  return len(entries)
