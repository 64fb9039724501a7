"""Pictures of runs, as the paper argues with them (Figures 3, 4 and 5).

  python -m mtan_jax.plot curves RUN_DIR [RUN_DIR ...]       # a panel per task metric, a line per run
  python -m mtan_jax.plot attention RUN_DIR --image=N        # first-layer attention masks (Figure 5)
  python -m mtan_jax.plot predictions RUN_DIR --images=N,M   # image, ground truth, prediction

Each writes one PNG (`--output`; by default into the run folder, or ./curves.png for several runs)
and prints its path. Images come from the run's test split (`--split`), read as the run read them
(its config.json says which dataset, resolution and release). Training writes `curves.png` into
the run folder at its end.

Colours: segmentation classes from a fixed palette (unlabelled pixels black), depth with viridis
over the ground truth's valid range (invalid pixels black), normals as RGB = (n + 1) / 2 (invalid
pixels black), attention masks in grey from 0 (black) to 1 (white).
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Sequence

import numpy as np

from mtan_jax import metrics as metrics_lib
from mtan_jax import runlog
from mtan_jax import runs as runs_lib
from mtan_jax import tasks as tasks_lib

DPI = 100
CURVE_PANEL = (3.2, 2.4)  # inches per panel: 320 x 240 pixels
IMAGE_PANEL = (2.4, 1.8)  # 240 x 180 pixels (the 4:3 of NYUv2; CityScapes images are letterboxed)
METRIC_TITLES = {"miou": "mIoU", "pixel_accuracy": "pixel accuracy", "abs_error": "abs. error",
                 "rel_error": "rel. error", "angle_mean": "mean angle (deg)",
                 "angle_median": "median angle (deg)", "within_11.25": "within 11.25 deg",
                 "within_22.5": "within 22.5 deg", "within_30": "within 30 deg"}


def _pyplot():
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError as error:  # an install without the plot extra
    raise runs_lib.MissingPackage("figures need matplotlib: pip install 'mtan-jax[plot]' (or "
                                  "matplotlib)") from error
  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, output) -> pathlib.Path:
  output = pathlib.Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(output, dpi=DPI)  # no tight bounding box: the size is the figure's, as documented
  _pyplot().close(fig)
  return output


def _curve_panel(ax, lines: list[tuple[str, list[tuple[int, float]]]], title: str) -> None:
  """One panel of curves: each (label, [(epoch, value), ...]) with points as a line."""
  for label, points in lines:
    if points:
      ax.plot(*zip(*points), label=label)
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("epoch", fontsize=8)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)


def decathlon_curves(run_dir, output) -> pathlib.Path:
  """One PNG of a Visual Decathlon run: loss and top-1 accuracy per epoch, training and
  validation, a line per task (the first task's line stops where it is dropped)."""
  records = runlog.read_records(run_dir)
  if not records:
    raise ValueError(f"{run_dir}: no epoch recorded yet "
                     f"({pathlib.Path(run_dir) / 'metrics.jsonl'})")
  plt = _pyplot()
  fig, axes = plt.subplots(2, 2, squeeze=False, layout="constrained",
                           figsize=(CURVE_PANEL[0] * 2.4, CURVE_PANEL[1] * 2))
  tasks = list(dict.fromkeys(t for rec in records for t in rec.get("train", {})))
  for r, split in enumerate(("train", "validation")):
    for c, metric in enumerate(("loss", "accuracy")):
      _curve_panel(axes[r][c], [(task, [(rec["epoch"], rec[split][task][metric])
                                         for rec in records if task in rec.get(split, {})])
                                for task in tasks],
                   f"{split}: {'top-1 accuracy' if metric == 'accuracy' else metric}")
  axes[0][1].legend(fontsize=6, ncol=2)
  fig.suptitle(f"Visual Decathlon: {run_dir}", fontsize=10)
  return _save(fig, output)


def curves(run_dirs: Sequence, output, split: str = "test") -> pathlib.Path:
  """One PNG: a panel per task metric (rows: tasks, columns: that task's metrics), epochs on x, a
  line per run labelled 'model / weighting'. `split`: "test", "validation" or "train". Runs
  without epochs or with damaged files are skipped with a warning; runs of one dataset only.
  A Visual Decathlon run is drawn by `decathlon_curves` (one such run per figure)."""
  from mtan_jax.decathlon import report as decathlon_report  # pylint: disable=import-outside-toplevel
  decathlon_runs = [d for d in run_dirs if decathlon_report.is_run(d)]
  if decathlon_runs:
    if len(run_dirs) > 1:
      raise ValueError(f"a Visual Decathlon run is drawn alone (its ten tasks fill the panels): "
                       f"plot {decathlon_runs[0]} by itself")
    return decathlon_curves(decathlon_runs[0], output)
  runs = runs_lib.load_runs(run_dirs, split)  # bad or empty runs skipped, each with a warning
  datasets = {}
  for run in runs:
    datasets.setdefault(run.config.dataset, []).append(str(run.path))
  if len(datasets) > 1:
    raise ValueError("runs of different datasets cannot share panels (their tasks and metrics "
                     "differ): " + "; ".join(f"{d}: {', '.join(paths)}"
                                             for d, paths in datasets.items())
                     + "; plot each dataset's runs separately")
  tasks = []
  for run in runs:
    tasks += [t.name for t in run.tasks if t.name not in tasks]
  rows = [(task, metrics_lib.TASK_METRICS[task]) for task in tasks]
  columns = max(len(metrics) for _, metrics in rows)
  plt = _pyplot()
  fig, axes = plt.subplots(len(rows), columns, squeeze=False, layout="constrained",
                           figsize=(CURVE_PANEL[0] * columns, CURVE_PANEL[1] * len(rows)))
  labels = [run.label for run in runs]
  if len(set(labels)) < len(labels):  # the same model and weighting: tell the runs apart by folder
    labels = [f"{label} ({run.path.name})" for label, run in zip(labels, runs)]
  for r, (task, metrics) in enumerate(rows):
    for c in range(columns):
      ax = axes[r][c]
      if c >= len(metrics):
        ax.axis("off")
        continue
      _curve_panel(ax, [(label, [(rec["epoch"], rec[split][task][metrics[c]])
                                 for rec in run.records if task in rec.get(split, {})
                                 and rec[split][task].get(metrics[c]) is not None])
                        for run, label in zip(runs, labels)],
                   f"{task}: {METRIC_TITLES[metrics[c]]}")
  axes[0][0].legend(fontsize=7)
  fig.suptitle(f"{split} metrics per epoch", fontsize=10)
  return _save(fig, output)


# --- Images: targets and predictions as pictures ---------------------------------------------

def segmentation_colours(classes: int) -> np.ndarray:
  """[classes, 3] RGB in [0, 1]: tab20's colours (distinct for up to 20 classes)."""
  plt = _pyplot()
  return np.asarray(plt.get_cmap("tab20").colors)[np.arange(classes) % 20]


def colour_segmentation(labels: np.ndarray, classes: int) -> np.ndarray:
  """[H, W] labels (-1 unlabelled) -> [H, W, 3] RGB."""
  rgb = segmentation_colours(classes)[np.clip(labels, 0, classes - 1)]
  return np.where((labels < 0)[..., None], 0.0, rgb)


def colour_depth(depth: np.ndarray, valid_range: tuple[float, float]) -> np.ndarray:
  """[H, W, 1] depth (0 invalid) -> [H, W, 3] viridis over `valid_range`."""
  low, high = valid_range
  scaled = np.clip((depth[..., 0] - low) / max(high - low, 1e-12), 0, 1)
  rgb = _pyplot().get_cmap("viridis")(scaled)[..., :3]
  return np.where((depth[..., 0] == 0)[..., None], 0.0, rgb)


def colour_normals(normal: np.ndarray) -> np.ndarray:
  """[H, W, 3] unit normals (0 invalid) -> RGB (n + 1) / 2."""
  invalid = np.all(normal == 0, axis=-1, keepdims=True)
  return np.where(invalid, 0.0, np.clip((normal + 1) / 2, 0, 1))


def _picture(task: tasks_lib.Task, values: np.ndarray, target: np.ndarray) -> np.ndarray:
  """A task's target or prediction as RGB; depth shares the target's valid range."""
  if task.name == tasks_lib.SEGMENTATION:
    labels = values if values.ndim == 2 else np.argmax(values, axis=-1)
    return colour_segmentation(labels, task.channels)
  if task.name == tasks_lib.DEPTH:
    valid = target[target > 0]
    valid_range = (float(valid.min()), float(valid.max())) if valid.size else (0.0, 1.0)
    return colour_depth(values, valid_range)
  return colour_normals(values)


def _load_examples(run: runs_lib.Run, indices: Sequence[int], split: str) -> list[dict]:
  import dataclasses  # pylint: disable=import-outside-toplevel
  from mtan_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  data = dataclasses.replace(run.config.data, dataset=run.config.dataset)
  source = pipeline.open_split(data, split, run.tasks)
  for i in indices:
    if not 0 <= i < len(source):
      raise ValueError(f"image {i}: the {split} split of {run.path} has {len(source)} images "
                       f"(0..{len(source) - 1})")
  return [source[i] for i in indices]


def _show(ax, picture, title):
  ax.imshow(picture, interpolation="nearest", vmin=0, vmax=1, cmap="gray")
  ax.set_title(title, fontsize=8)
  ax.axis("off")


def predictions(run_dir, image_indices: Sequence[int], output, split: str = "test") -> pathlib.Path:
  """One row per image: the image, then ground truth and prediction for each task (Figure 4)."""
  run = runs_lib.load_run(run_dir)
  model, variables = runs_lib.restore_model(run)
  examples = _load_examples(run, image_indices, split)
  images = np.stack([e["image"] for e in examples])
  outputs = {k: np.asarray(v) for k, v in model.apply(variables, images, train=False).items()}
  tasks = run.tasks
  plt = _pyplot()
  columns = 1 + 2 * len(tasks)
  fig, axes = plt.subplots(len(examples), columns, squeeze=False, layout="constrained",
                           figsize=(IMAGE_PANEL[0] * columns, IMAGE_PANEL[1] * len(examples)))
  for r, (index, example) in enumerate(zip(image_indices, examples)):
    _show(axes[r][0], np.clip(example["image"], 0, 1), f"{split} image {index}")
    for t, task in enumerate(tasks):
      target = example[task.name]
      _show(axes[r][1 + 2 * t], _picture(task, target, target), f"{task.name}: ground truth")
      _show(axes[r][2 + 2 * t], _picture(task, outputs[task.name][r], target),
            f"{task.name}: prediction")
  fig.suptitle(f"{run.label}: {run.path.name}", fontsize=10)
  return _save(fig, output)


def attention(run_dir, image_index: int, output, channels: Sequence[int] = (0, 1, 2),
              split: str = "test") -> pathlib.Path:
  """One row per task: the image, ground truth, prediction, then the task's first-layer encoder
  attention mask, as the mean over its channels and as a few single channels (Figure 5)."""
  run = runs_lib.load_run(run_dir)
  if run.config.model not in ("mtan", "stan"):
    raise ValueError(f"attention: {run.path} trained {run.config.model!r}, which has no attention "
                     f"masks (mtan or stan have)")
  model, variables = runs_lib.restore_model(run)
  (example,) = _load_examples(run, [image_index], split)
  outputs, state = model.apply(variables, example["image"][None], train=False,
                               mutable=["intermediates"])
  masks = state["intermediates"]
  tasks = run.tasks
  first = {t.name: np.asarray(masks[f"{t.name}_encoder_mask_0"]["mask"][0][0]) for t in tasks}
  width = next(iter(first.values())).shape[-1]
  for c in channels:
    if not 0 <= c < width:
      raise ValueError(f"channel {c}: the first-layer masks have {width} channels (0..{width - 1})")
  plt = _pyplot()
  columns = 4 + len(channels)
  fig, axes = plt.subplots(len(tasks), columns, squeeze=False, layout="constrained",
                           figsize=(IMAGE_PANEL[0] * columns, IMAGE_PANEL[1] * len(tasks)))
  for r, task in enumerate(tasks):
    target = example[task.name]
    _show(axes[r][0], np.clip(example["image"], 0, 1), f"{split} image {image_index}")
    _show(axes[r][1], _picture(task, target, target), f"{task.name}: ground truth")
    _show(axes[r][2], _picture(task, np.asarray(outputs[task.name][0]), target),
          f"{task.name}: prediction")
    _show(axes[r][3], first[task.name].mean(-1), "mask: mean over channels")
    for k, c in enumerate(channels):
      _show(axes[r][4 + k], first[task.name][..., c], f"mask: channel {c}")
  fig.suptitle(f"{run.label}: first-layer attention masks", fontsize=10)
  return _save(fig, output)


def _indices(text: str) -> list[int]:
  try:
    return [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated image numbers such as 0,5, found "
                                     f"{text!r}")


def main(argv: list[str] | None = None) -> pathlib.Path:
  parser = argparse.ArgumentParser(prog="python -m mtan_jax.plot", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  p = commands.add_parser("curves", help="metric curves of one or more runs")
  p.add_argument("run_dirs", nargs="+")
  p.add_argument("--split", default="test", choices=("test", "validation", "train"))
  p.add_argument("--output", default=None)
  p = commands.add_parser("attention", help="first-layer attention masks for one image")
  p.add_argument("run_dir")
  p.add_argument("--image", type=int, required=True)
  p.add_argument("--channels", type=_indices, default=[0, 1, 2])
  p.add_argument("--split", default="test", choices=("test", "validation", "train"))
  p.add_argument("--output", default=None)
  p = commands.add_parser("predictions", help="ground truth and predictions for a few images")
  p.add_argument("run_dir")
  p.add_argument("--images", type=_indices, required=True)
  p.add_argument("--split", default="test", choices=("test", "validation", "train"))
  p.add_argument("--output", default=None)
  args = parser.parse_args(argv)
  if args.command == "curves":
    default = (pathlib.Path(args.run_dirs[0]) / "curves.png" if len(args.run_dirs) == 1
               else pathlib.Path("curves.png"))
    path = curves(args.run_dirs, args.output or default, args.split)
  elif args.command == "attention":
    path = attention(args.run_dir, args.image, args.output or pathlib.Path(args.run_dir) /
                     f"attention_{args.split}_{args.image}.png", args.channels, args.split)
  else:
    name = "_".join(str(i) for i in args.images)
    path = predictions(args.run_dir, args.images, args.output or pathlib.Path(args.run_dir) /
                       f"predictions_{args.split}_{name}.png", args.split)
  print(path)
  return path


def command() -> None:
  """The console script: errors a user can cause in one line, exit status 1."""
  runs_lib.run_command(main)


if __name__ == "__main__":
  command()
