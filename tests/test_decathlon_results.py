"""The challenge's results file from a hand-made fixture of the devkit's annotation files, and
the report's Decathlon table."""

import json

import pytest

from mtan_jax import decathlon
from mtan_jax import report
from mtan_jax.decathlon import report as decathlon_report
from mtan_jax.decathlon import results as results_lib


def annotations(tmp_path):
  """Two datasets in the devkit's COCO layout; aircraft's categories not in id order."""
  folder = tmp_path / "annotations"
  folder.mkdir()
  files = {
      "aircraft_train.json": {
          "images": [{"id": 1, "file_name": "data/aircraft/train/0001/a.jpg"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 10002}],
          "categories": [{"id": 10002, "name": "A320"}, {"id": 10001, "name": "747"},
                         {"id": 10003, "name": "DC-3"}]},
      "aircraft_test_stripped.json": {
          "images": [{"id": 300007, "file_name": "data/aircraft/test/0000007.jpg"},
                     {"id": 300002, "file_name": "data/aircraft/test/0000002.jpg"}],
          "categories": [{"id": 10002}, {"id": 10001}, {"id": 10003}]},
      "svhn_train.json": {"images": [], "annotations": [],
                          "categories": [{"id": 70000 + i} for i in range(10)]},
      "svhn_test_stripped.json": {
          "images": [{"id": 700001, "file_name": "data/svhn/test/1.png"}], "categories": []}}
  for name, content in files.items():
    (folder / name).write_text(json.dumps(content))
  return folder


def test_predictions_become_the_servers_results(tmp_path):
  folder = annotations(tmp_path)
  predictions = {"aircraft": {"aircraft/test/0000007.jpg": 2, "aircraft/test/0000002.jpg": 0},
                 "svhn": {"svhn/test/1.png": 9}}
  assert results_lib.results(predictions, folder) == [
      {"image_id": 300002, "category_id": 10002},  # index 0: the first category listed
      {"image_id": 300007, "category_id": 10003},
      {"image_id": 700001, "category_id": 70009}]
  assert results_lib.write(tmp_path / "results.json", predictions, folder) == 3
  assert json.loads((tmp_path / "results.json").read_text())[0] == {"image_id": 300002,
                                                                    "category_id": 10002}


def test_predictions_that_do_not_fit_are_refused_naming_the_images(tmp_path):
  folder = annotations(tmp_path)
  with pytest.raises(results_lib.ResultsError,
                     match=r"1 test image\(s\) of .*aircraft_test_stripped.json without a "
                     r"prediction, e.g. \['aircraft/test/0000002.jpg'\]; 1 prediction\(s\) for "
                     r"images not in .*, e.g. \['aircraft/test/9.jpg'\]"):
    results_lib.results({"aircraft": {"aircraft/test/0000007.jpg": 1,
                                      "aircraft/test/9.jpg": 1}}, folder)
  with pytest.raises(results_lib.ResultsError, match="class index 10 of svhn/test/1.png is "
                     "outside the 10 categories"):
    results_lib.results({"svhn": {"svhn/test/1.png": 10}}, folder)
  with pytest.raises(results_lib.ResultsError, match="dtd_train.json: not found"):
    results_lib.results({"dtd": {}}, folder)


def test_the_report_sets_runs_beside_the_papers_rows(tmp_path, capsys):
  rows = {model: (accuracy, mean, score) for model, accuracy, mean, score
          in decathlon_report.paper_rows()}
  assert set(rows) == {"Scratch", "Finetune", "MTAN"}
  assert rows["MTAN"][0]["imagenet12"] == 63.90 and rows["MTAN"][2] == 2941
  # The printed mean is the mean of the ten accuracies (to the table's rounding).
  for accuracy, mean, _ in rows.values():
    assert abs(sum(accuracy.values()) / 10 - mean) < 0.011
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"depth": 10, "widen_factor": 2}))
  test = {name: {"loss": 0.5, "accuracy": 0.5 + i / 100} for i, name in enumerate(decathlon.NAMES)}
  (run / "summary.json").write_text(json.dumps({"test": test, "mean_accuracy": 0.545}))
  training = tmp_path / "training"
  training.mkdir()
  (training / "config.json").write_text(json.dumps({"depth": 10, "widen_factor": 2}))
  text = report.report([str(run), str(training)], paper=True)
  lines = text.splitlines()
  assert lines[0] == "## Visual Decathlon (test top-1 %)"
  assert lines[4].split(" | ")[1:3] == ["50.00", "51.00"] and lines[4].endswith(
      "| 54.50 | - (stand-in) |")
  assert lines[-1].startswith("| MTAN (paper) | 63.90 |") and lines[-1].endswith("| 77.25 | 2941 |")
  assert f"warning: skipping {training}: no readable summary.json" in capsys.readouterr().err


def test_a_decathlon_runs_curves_are_drawn_alone(tmp_path):
  pytest.importorskip("matplotlib")
  from mtan_jax import plot
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"depth": 10, "widen_factor": 2}))
  lines = [{"epoch": e, "lr": 0.1, "train": {n: {"loss": 1.0 / (e + 1), "accuracy": 0.1 * e}
                                            for n in decathlon.NAMES[e:]},
            "validation": {n: {"loss": 1.0, "accuracy": 0.5} for n in decathlon.NAMES[e:]}}
           for e in range(3)]
  (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  output = plot.curves([str(run)], tmp_path / "curves.png")
  assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="drawn alone"):
    plot.curves([str(run), str(tmp_path / "other")], tmp_path / "both.png")
