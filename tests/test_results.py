"""Plots and the results table, on tiny runs made here (32x32, 2 epochs of 1 step): a two-task Split,
single-task networks for both tasks (two seeds for segmentation) and a segmentation STAN."""

import json
import struct

import numpy as np
import pytest

from mtan_jax import flags
from mtan_jax.dense import cli
from mtan_jax import plot
from mtan_jax import report
from mtan_jax import tasks as tasks_lib
from mtan_jax.dense import train
from mtan_jax.dense.config import TrainConfig
from mtan_jax.data.pipeline import DataConfig

TWO_TASKS = ("segmentation", "depth")


def png_size(path):
  """(width, height) from the PNG header."""
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")

  def make(name, model, tasks, seed=0):
    train.run(TrainConfig(model=model, tasks=tasks, weighting="equal", epochs=2, batch_size=2,
                          lr=1e-3, devices=1, width_mult=1 / 16, seed=seed,
                          workdir=str(root / name), progress=False, workers=1, steps_per_epoch=1,
                          data=DataConfig(tfds_dir=str(root / "tfds"), resolution=(32, 32),
                                          synthetic_size=(4, 2))))
    flags.draw_curves(root / name)  # as the experiment scripts do after training
    return root / name

  return {"split": make("split", "split_standard", TWO_TASKS),
          "seg0": make("seg0", "single", ("segmentation",)),
          "seg1": make("seg1", "single", ("segmentation",), seed=1),
          "dep": make("dep", "single", ("depth",)),
          "stan": make("stan", "stan", ("segmentation",))}


def records(path):
  return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_draws_its_curves_and_the_command_draws_several_runs(runs, tmp_path, capsys):
  # The end of training drew each run's curves: a panel per task metric (1 task x 2 metrics).
  assert png_size(runs["seg0"] / "curves.png") == (2 * 320, 1 * 240)
  assert png_size(runs["split"] / "curves.png") == (2 * 320, 2 * 240)
  output = tmp_path / "all.png"
  plot.main(["curves", str(runs["split"]), str(runs["seg0"]), str(runs["seg1"]),
             f"--output={output}"])
  assert png_size(output) == (2 * 320, 2 * 240)
  assert capsys.readouterr().out.strip() == str(output)
  with pytest.raises(ValueError, match="no 'validation' metrics"):
    plot.curves([runs["seg0"]], tmp_path / "v.png", split="validation")


@pytest.mark.slow
def test_attention_and_predictions_figures(runs, tmp_path):
  path = plot.main(["attention", str(runs["stan"]), "--image=1", "--channels=0,3"])
  assert path == runs["stan"] / "attention_test_1.png"
  assert png_size(path) == ((4 + 2) * 240, 1 * 180)  # a row per task
  path = plot.main(["predictions", str(runs["split"]), "--images=0,1",
                    f"--output={tmp_path / 'p.png'}"])
  assert png_size(path) == ((1 + 2 * 2) * 240, 2 * 180)  # image + (truth, prediction) per task
  with pytest.raises(ValueError, match="has no attention masks"):
    plot.attention(runs["seg0"], 0, tmp_path / "a.png")
  with pytest.raises(ValueError, match="image 2: the test split .* has 2 images"):
    plot.predictions(runs["split"], [2], tmp_path / "b.png")


def test_colours_of_targets():
  labels = np.array([[-1, 0], [12, 3]])
  rgb = plot.colour_segmentation(labels, 13)
  palette = plot.segmentation_colours(13)
  np.testing.assert_array_equal(rgb[0, 0], 0)
  np.testing.assert_allclose(rgb[1, 0], palette[12])
  assert len({tuple(c) for c in palette}) == 13  # distinct colours
  normals = plot.colour_normals(np.array([[[0, 0, 1], [0, 0, 0]]], np.float32))
  np.testing.assert_allclose(normals, [[[0.5, 0.5, 1], [0, 0, 0]]])
  depth = plot.colour_depth(np.array([[[0.0], [2.0], [6.0]]]), (2.0, 6.0))
  viridis = plot._pyplot().get_cmap("viridis")  # pylint: disable=protected-access
  np.testing.assert_allclose(depth[0], [[0, 0, 0], viridis(0.0)[:3], viridis(1.0)[:3]])


def test_the_paper_tables_are_read_in_this_librarys_units():
  rows = report.paper_rows()
  assert [len(rows["nyuv2"]), len(rows["cityscapes"])] == [17, 17]
  by_key = {r.key: r for r in rows["nyuv2"]}
  assert by_key[("dense", "dwa")].means["depth"]["abs_error"] == 0.6059
  assert by_key[("dense", "dwa")].params == 4.95  # carried down from the row above
  assert by_key[("mtan", "equal")].means["normal"]["within_30"] == pytest.approx(0.5748)
  assert by_key[("single", None)].means["segmentation"]["miou"] == pytest.approx(0.1510)
  city = {r.key: r for r in rows["cityscapes"]}
  assert city[("cross_stitch", "uncertainty")].means["segmentation"]["miou"] == pytest.approx(
      0.5031)
  assert city[("cross_stitch", "uncertainty")].params == 2.0  # "~2"


def test_parameter_ratios_are_the_papers_hash_p():
  nyu = tasks_lib.dataset_tasks("nyuv2")
  assert report.parameter_ratio("mtan", nyu, 1.0) == pytest.approx(44_229_076 / 24_981_069)
  assert report.parameter_ratio("single", nyu, 1.0) == pytest.approx(74_941_777 / 24_981_069)


@pytest.mark.slow
def test_the_report_table_holds_the_runs_numbers(runs):
  text = report.main([str(p) for p in runs.values()] + ["--paper"])
  lines = text.splitlines()
  assert lines[0] == "## nyuv2 (test split, mean of the last 10 epochs)"
  header = [c.strip() for c in lines[2].strip("|").split("|")]
  assert header == ["#P", "Architecture", "Weighting", "runs", "segmentation mIoU ↑",
                    "segmentation Pix Acc ↑", "depth Abs Err ↓", "depth Rel Err ↓", "Δm % ↑"]
  rows = [[c.strip().strip("*") for c in line.strip("|").split("|")] for line in lines[4:]
          if line.startswith("|")]  # the table, not the note under it
  assert [r[1:3] for r in rows] == [["One Task", "n.a."], ["↳ paper", "n.a."], ["STAN", "n.a."],
                                    ["↳ paper", "n.a."], ["Split, Standard", "Equal"]]
  one_task, paper_one_task, stan, paper_stan, split = rows
  # Independently: the mean of a run's two epochs; over seeds, their mean and sample std.
  last = lambda run, task, metric: np.mean(  # noqa: E731
      [r["test"][task][metric] for r in records(runs[run])])
  miou = [last(k, "segmentation", "miou") for k in ("seg0", "seg1")]
  assert one_task[4] == f"{100 * np.mean(miou):.2f} ± {100 * np.std(miou, ddof=1):.2f}"
  assert one_task[6] == f"{last('dep', 'depth', 'abs_error'):.4f}"  # one run: no ±
  assert one_task[3] == "1" and split[3] == "1"  # the fewest runs behind a task's columns
  assert stan[6] == "—"  # no depth STAN was given
  baseline = {("segmentation", "miou"): np.mean(miou),
              ("segmentation", "pixel_accuracy"): np.mean(
                  [last(k, "segmentation", "pixel_accuracy") for k in ("seg0", "seg1")]),
              ("depth", "abs_error"): last("dep", "depth", "abs_error"),
              ("depth", "rel_error"): last("dep", "depth", "rel_error")}
  signs = {"miou": 1, "pixel_accuracy": 1, "abs_error": -1, "rel_error": -1}
  delta = 100 * np.mean([signs[m] * (last("split", t, m) - base) / base
                         for (t, m), base in baseline.items()])
  assert split[-1] == f"{delta:+.2f}" and one_task[-1] == "+0.00"
  # The best value of a column is bold: lower depth error wins.
  best_abs = min(last("split", "depth", "abs_error"), baseline[("depth", "abs_error")])
  assert len([line for line in lines if f"**{best_abs:.4f}" in line]) == 1
  # The paper's rows follow ours, its Δm against its own One Task over the same two tasks.
  assert paper_one_task[0] == "3.00" and paper_one_task[4:8] == ["15.10", "51.54", "0.7508",
                                                                 "0.3266"]
  assert paper_stan[0] == "4.56" and paper_stan[4:8] == ["15.73", "52.89", "0.6935", "0.2891"]
  paper_delta = 100 * np.mean([(15.73 - 15.10) / 15.10, (52.89 - 51.54) / 51.54,
                               -(0.6935 - 0.7508) / 0.7508, -(0.2891 - 0.3266) / 0.3266])
  assert paper_stan[-1] == f"{paper_delta:+.2f}"


def test_runs_are_grouped_by_what_they_measure():
  """Seeds and dataset folders do not split a row; another learning rate or width does."""
  from mtan_jax.runs import Run  # pylint: disable=import-outside-toplevel

  def run(model, tasks, miou, seed=0, lr=1e-4, width=1 / 16, data_dir="/a"):
    config = TrainConfig(model=model, tasks=tasks, seed=seed, lr=lr, width_mult=width,
                         data=DataConfig(tfds_dir=data_dir))
    metrics = {t: {"miou": miou} if t == "segmentation" else {"abs_error": 0.5} for t in tasks}
    return Run(None, config, [{"epoch": 0, "test": metrics}])

  rows = report.rows_from_runs([
      run("split_standard", TWO_TASKS, 0.2), run("split_standard", TWO_TASKS, 0.4, seed=1,
                                                 data_dir="/b"),
      run("split_standard", TWO_TASKS, 0.9, lr=1e-3),
      run("single", ("segmentation",), 0.1), run("single", ("depth",), 0.0, seed=3),
      run("single", ("segmentation",), 0.3, width=1 / 8)])
  summary = sorted((r.model, r.runs, round(r.means["segmentation"]["miou"], 6),
                    "depth" in r.means) for r in rows if "segmentation" in r.means)
  assert summary == [("single", 1, 0.1, True), ("single", 1, 0.3, False),
                     ("split_standard", 1, 0.9, True), ("split_standard", 2, 0.3, True)]
  # Rows that would read the same say what sets them apart, in a column of their own.
  settings = sorted((r.model, r.setting) for r in rows)
  assert settings == [("single", "width_mult=0.0625"), ("single", "width_mult=0.125"),
                      ("split_standard", "lr=0.0001"), ("split_standard", "lr=0.001")]
  text = report.table(rows, [("segmentation", "miou")])
  assert text.splitlines()[0].startswith("| #P | Architecture | Weighting | Setting | runs |")
  assert "| Equal | lr=0.001 | 1 |" in text


@pytest.mark.slow
def test_a_bad_run_among_many_is_skipped_with_a_warning(runs, tmp_path, capsys):
  import shutil
  empty = tmp_path / "empty"  # a run folder without epochs (started, nothing logged yet)
  empty.mkdir()
  shutil.copy(runs["split"] / "config.json", empty / "config.json")
  cut = tmp_path / "cut"  # killed while writing its last line: that line is ignored
  shutil.copytree(runs["split"], cut)
  lines = (cut / "metrics.jsonl").read_text().splitlines()
  (cut / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:40])
  broken = tmp_path / "broken"  # a damaged line before the last: named with its line number
  shutil.copytree(runs["split"], broken)
  (broken / "metrics.jsonl").write_text(lines[0][:40] + "\n" + lines[1] + "\n")
  not_a_run = tmp_path / "notes"
  not_a_run.mkdir()
  capsys.readouterr()
  text = report.report([runs["split"], empty, cut, broken, not_a_run])
  warnings = capsys.readouterr().err.strip().splitlines()
  assert len(warnings) == 3, warnings
  assert warnings[0] == (f"warning: skipping {empty}: no epoch recorded yet "
                         f"({empty / 'metrics.jsonl'})")
  assert warnings[1].startswith(f"warning: skipping {broken}: {broken / 'metrics.jsonl'}, line 1:")
  assert warnings[2].startswith(f"warning: skipping {not_a_run}: {not_a_run / 'config.json'}: "
                                f"not found")
  # The split run and its cut copy (1 epoch) form one row of 2 runs; both have fewer than 10.
  assert "| Split, Standard | Equal |" in text and "| 2 |" in text
  assert (f"Fewer than 10 epochs (still running, or stopped early; the mean is over those): "
          f"{runs['split']} (2), {cut} (1).") in text
  with pytest.raises(ValueError, match="no run to show"):
    report.report([empty])
  plot.curves([runs["split"], empty], tmp_path / "c.png")  # the empty one skipped
  assert png_size(tmp_path / "c.png") == (2 * 320, 2 * 240)


@pytest.mark.slow
def test_curves_refuse_runs_of_different_datasets_on_one_panel(runs, tmp_path):
  import shutil
  city = tmp_path / "city"
  shutil.copytree(runs["dep"], city)
  config = json.loads((city / "config.json").read_text())
  config["data"]["dataset"] = "cityscapes"
  (city / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="runs of different datasets cannot share panels"):
    plot.curves([runs["dep"], city], tmp_path / "c.png")


def test_published_method_rows_give_the_delta_m_their_papers_print():
  """The methods' published NYUv2 rows (MTAN-SegNet), with this library's Δm against their STL
  row: the negative of the Δm each paper printed (their sign), to the rounding of the table."""
  rows = report.method_rows()
  nyu, city = rows["nyuv2"], rows["cityscapes"]
  assert [r.source.split(",")[0] for r in nyu][:3] == ["STL", "LS", "DWA"] and len(nyu) == 12
  assert {r.weighting for r in nyu if r.model == "mtan"} == {
      "equal", "dwa", "uncertainty", "mgda", "pcgrad", "cagrad", "imtl", "nash_mtl", "famo",
      "fairgrad", "aligned_mtl"}
  by_weighting = {r.weighting: r for r in nyu}
  assert by_weighting["nash_mtl"].means["depth"]["abs_error"] == 0.5261
  assert by_weighting["nash_mtl"].means["normal"]["within_30"] == pytest.approx(0.6815)
  report.add_delta_m(nyu)
  for row in nyu[1:]:
    tolerance = 0.5 if row.approximate else 0.02
    assert row.delta == pytest.approx(-row.published_delta, abs=tolerance), row.source
  assert len(city) == 10 and all(not r.means for r in city)
  assert {r.weighting: r.published_delta for r in city}["famo"] == 8.13


def write_run(folder, model, weighting, tasks, metrics):
  """A run folder as training leaves it, with one epoch of `metrics` ({task: {metric: value}})."""
  folder.mkdir(parents=True)
  config = TrainConfig(model=model, weighting=weighting, tasks=tasks)
  (folder / "config.json").write_text(json.dumps(config.to_dict()))
  (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "test": metrics}) + "\n")
  return folder


def test_the_report_sets_a_methods_published_row_under_ours(tmp_path):
  """An MTAN run with --weighting=nash_mtl gets the Nash-MTL paper's row under it, its Δm against
  that paper's STL row (the NYUv2 metrics of this run's tasks)."""
  nash = {"segmentation": {"miou": 0.40, "pixel_accuracy": 0.66},
          "depth": {"abs_error": 0.53, "rel_error": 0.22}}
  run = write_run(tmp_path / "nash", "mtan", "nash_mtl", TWO_TASKS, nash)
  lines = report.main([str(run), "--paper"]).splitlines()
  rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines
          if line.startswith("| ")][1:]
  assert [r[1:3] for r in rows] == [["MTAN", "nash_mtl"], ["↳ Nash-MTL, Navon 2022", "nash_mtl"]]
  stl = (38.30, 63.76, 0.6754, 0.2780)
  theirs = (40.13, 65.93, 0.5261, 0.2171)
  expected = 100 * np.mean([(theirs[0] - stl[0]) / stl[0], (theirs[1] - stl[1]) / stl[1],
                            -(theirs[2] - stl[2]) / stl[2], -(theirs[3] - stl[3]) / stl[3]])
  assert rows[1][4:8] == ["40.13", "65.93", "0.5261", "0.2171"]
  assert rows[1][-1] == f"{expected:+.2f}"
