"""The paper's results tables (Tables 1 and 3), regenerated from run folders.

  python -m mtan_jax.report RUN_DIR [RUN_DIR ...]            # a Markdown table per dataset
  python -m mtan_jax.report runs/* --paper                    # with the paper's numbers beside
  python -m mtan_jax.report runs/* --output=results.md

Every run contributes the mean of its last 10 epochs on the test split (`--split`), as the paper
reports. Runs that differ only in their seed (or folder) form one row: mean ± sample standard
deviation over the seeds, their count in the "runs" column. Single-task runs (models the registry
marks single-task) form one row per model, each task's columns from the runs trained on that task,
as the paper's "One Task" and "STAN" rows; the "One Task" row is the baseline of Δm (every metric
weighted equally, positive is better; `metrics.delta_m`). #P is the parameter count relative to one
single-task SegNet (one network per task for the single-task rows). The best value of each column
among the runs is bold. Units as in the paper: mIoU, pixel accuracy and the angle thresholds in
percent.

`--paper` adds, under each row, the paper's numbers for the same architecture and weighting (from
mtan_jax/paper_results.md, the paper's tables), with Δm against the paper's own One Task row; and,
under MTAN rows trained with a multi-task method (`--weighting=nash_mtl`, ...), that method's
published numbers on MTAN-SegNet (Nash-MTL / FAMO protocol), with Δm against the STL row of the
same protocol, as those papers compute it (sign flipped: here higher is better).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import sys
from typing import Any, Sequence

import numpy as np

from mtan_jax import metrics as metrics_lib
from mtan_jax import runlog
from mtan_jax import runs as runs_lib
from mtan_jax import schema
from mtan_jax import task_kinds
from mtan_jax import tasks as tasks_lib
from mtan_jax.models import registry

PAPER_FILE = pathlib.Path(__file__).with_name("paper_results.md")
# The dense models' row labels, in the registry's order (its entries own their titles).
ARCHITECTURES = {name: registry.TITLES[name] for name in registry.MODEL_NAMES}


# Each metric's unit and header, as its task kind declares them.
PERCENT = {name for name, m in task_kinds.METRICS.items() if m.percent}
HEADERS = {name: m.header for name, m in task_kinds.METRICS.items()}
# Runs whose defining fields (the config schema's) differ only in these are repeats of one
# configuration: one row, mean ± std.
REPEATS_DIFFER_IN = {"seed"}


@dataclasses.dataclass
class Row:
  """One line of a table: what was trained, and the metrics {task: {metric: value}}."""

  model: str
  weighting: str | None  # None for single-task rows
  params: float | None  # #P
  runs: int
  means: dict[str, dict[str, float]]
  stds: dict[str, dict[str, float]]
  paper: bool = False
  delta: float | None = None
  temperature: float = 2.0  # DWA's, for the weighting's label
  setting: str = ""  # how its runs differ from other rows of the same label, e.g. "dtype=bfloat16"
  source: str = ""  # a published row's method and paper ("" for the MTAN paper's)
  published_delta: float | None = None  # the Δm its paper printed (their sign: lower is better)
  approximate: bool = False  # rounded in its source

  @property
  def key(self) -> tuple[str, str | None]:
    return self.model, self.weighting


def weighting_label(weighting: str | None, temperature: float = 2.0) -> str:
  if weighting is None:
    return "n.a."
  return {"equal": "Equal", "uncertainty": "Uncertainty"}.get(
      weighting, f"DWA, T={temperature:g}" if weighting == "dwa" else weighting)


# --- The paper's tables ------------------------------------------------------------------------

_PAPER_ARCHITECTURES = {v: k for k, v in ARCHITECTURES.items()}
_PAPER_WEIGHTINGS = {"n.a.": None, "Equal": "equal", "Uncertainty": "uncertainty",
                     "DWA, T=2": "dwa"}
_PAPER_SECTIONS = {"CityScapes": tasks_lib.CITYSCAPES, "NYUv2": tasks_lib.NYUV2}


def _value_rows(path, heading: re.Pattern, header: str):
  """(line number, dataset, cells) of every row of values in the sections of `path` whose heading
  `heading` matches with a dataset's name (its group 1); header rows (first cell `header`) and
  rules are skipped."""
  dataset = None
  for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
    if line.startswith("## "):
      match = heading.match(line)
      dataset = _PAPER_SECTIONS.get(match.group(1)) if match else None
      continue
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if (dataset is None or not line.startswith("|") or cells[0] == header
        or re.fullmatch(r"[-: ]+", cells[0])):  # not a row of values: header or rule
      continue
    yield number, dataset, cells


def _metric_names(dataset: str) -> list[tuple[str, str]]:
  """(task, metric) of a dataset's table columns, in order."""
  return [(t.name, m) for t in tasks_lib.dataset_tasks(dataset)
          for m in metrics_lib.TASK_METRICS[t.name]]


def _means(names: list[tuple[str, str]], cells: list[str]) -> dict[str, dict[str, float]]:
  """{task: {metric: value}} of a row's metric cells, in this library's units (fractions)."""
  means: dict[str, dict[str, float]] = {}
  for (task, metric), cell in zip(names, cells):
    means.setdefault(task, {})[metric] = float(cell) / (100 if metric in PERCENT else 1)
  return means


def paper_rows(path=PAPER_FILE) -> dict[str, list[Row]]:
  """{dataset: rows} of the paper's tables, values in this library's units (fractions)."""
  out: dict[str, list[Row]] = {}
  params, model = None, None
  for number, dataset, cells in _value_rows(path, re.compile(r"^## (\w+)"), "#P"):
    if len(cells) < 4:
      continue
    params = float(cells[0].lstrip("~")) if cells[0] else params
    model = _PAPER_ARCHITECTURES[cells[1]] if cells[1] else model
    if cells[2] not in _PAPER_WEIGHTINGS:
      raise ValueError(f"{path}:{number}: weighting {cells[2]!r} not one of "
                       f"{sorted(_PAPER_WEIGHTINGS)}")
    names = _metric_names(dataset)
    if len(cells) - 3 != len(names):
      raise ValueError(f"{path}:{number}: expected {len(names)} metrics, found {len(cells) - 3}")
    out.setdefault(dataset, []).append(Row(model, _PAPER_WEIGHTINGS[cells[2]], params, 0,
                                           _means(names, cells[3:]), {}, paper=True))
  return out


def method_rows(path=PAPER_FILE) -> dict[str, list[Row]]:
  """{dataset: rows} of the published multi-task methods on MTAN-SegNet (paper_results.md's
  "Methods" sections): each row's model "mtan" and our weighting's name ("single" for the STL row,
  the baseline of their Δm), its source, and the published Δm (`published_delta`, their sign:
  lower is better). Rows of Δm only (CityScapes) have no metrics."""
  out: dict[str, list[Row]] = {}
  for number, dataset, cells in _value_rows(path, re.compile(r"^## Methods (\w+)"), "Method"):
    method, weighting, source, values = cells[0], cells[1], cells[2], cells[3:]
    names = _metric_names(dataset)
    if len(values) not in (1, len(names) + 1):
      raise ValueError(f"{path}:{number}: expected Δm alone or {len(names)} metrics and Δm, found "
                       f"{len(values)} values")
    if weighting != "n.a." and weighting not in weighting_names():
      raise ValueError(f"{path}:{number}: weighting {weighting!r} is not a scheme of this library")
    published = values[-1].lstrip("≈")
    single = weighting == "n.a."
    out.setdefault(dataset, []).append(Row(
        "single" if single else "mtan", None if single else weighting, None, 0,
        _means(names, values[:-1]), {}, paper=True, source=f"{method}, {source}",
        published_delta=float(published) if published else None,
        approximate=values[-1].startswith("≈") or source == "rounded"))
  return out


def weighting_names() -> tuple[str, ...]:
  from mtan_jax import weighting as weighting_lib  # pylint: disable=import-outside-toplevel
  return weighting_lib.NAMES


# --- Rows from runs ----------------------------------------------------------------------------

def _identity(run: runs_lib.Run) -> dict[str, Any]:
  """What a run measures, flat ({"lr": ..., "data.resolution": ...}): the fields that define it
  (`schema.identity`) but its seed; single-task runs without their task (one row joins them)."""
  ignore = REPEATS_DIFFER_IN | ({"tasks"} if runs_lib.single_task(run.config.model) else set())
  return {k: v for k, v in schema.identity(run.config).items() if k not in ignore}


def _settings(rows: list[Row], identities: list[dict[str, Any]]) -> None:
  """Names what tells apart rows that would read the same (the same architecture and weighting
  labels): the config fields whose values differ among them, e.g. "dtype=bfloat16, lr=0.001"."""
  by_label: dict[tuple[str, str], list[int]] = {}
  for i, row in enumerate(rows):
    label = (ARCHITECTURES.get(row.model, row.model), weighting_label(row.weighting,
                                                                      row.temperature))
    by_label.setdefault(label, []).append(i)
  for members in by_label.values():
    if len(members) < 2:
      continue
    keys = sorted(k for k in set().union(*(identities[i] for i in members))
                  if len({repr(identities[i].get(k)) for i in members}) > 1)
    for i in members:
      rows[i].setting = ", ".join(f"{k}={identities[i].get(k)}" for k in keys)


def _mean_std(results: list[dict[str, dict[str, float]]]):
  means, stds = {}, {}
  for task in results[0]:
    means[task], stds[task] = {}, {}
    for metric in results[0][task]:
      values = [r[task][metric] for r in results if r[task].get(metric) is not None]
      means[task][metric] = float(np.mean(values)) if values else float("nan")
      stds[task][metric] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
  return means, stds


def parameter_ratio(model: str, tasks, width_mult: float) -> float:
  from mtan_jax.models import registry  # pylint: disable=import-outside-toplevel
  reference = registry.count_parameters("single", tasks[:1], width_mult=width_mult)
  if runs_lib.single_task(model):
    return sum(registry.count_parameters(model, (t,), width_mult=width_mult)
               for t in tasks) / reference
  return registry.count_parameters(model, tuple(tasks), width_mult=width_mult) / reference


def rows_from_runs(runs: Sequence[runs_lib.Run], split: str = "test") -> list[Row]:
  """Rows of one dataset's runs: repeats averaged, single-task runs joined per model."""
  results = []
  for run in runs:
    result = runlog.last_epochs_mean(run.records, split)
    if not result:
      raise ValueError(f"{run.path / 'metrics.jsonl'}: no {split!r} metrics recorded")
    results.append(result)
  groups: dict[str, list[int]] = {}
  identity_of: dict[str, dict[str, Any]] = {}
  for i, run in enumerate(runs):
    identity = _identity(run)
    key = repr(sorted(identity.items()))
    groups.setdefault(key, []).append(i)
    identity_of[key] = identity
  dataset_tasks = tasks_lib.dataset_tasks(runs[0].config.dataset, None,
                                          runs[0].config.data.num_classes)
  rows, identities = [], []
  for key, members in groups.items():
    first = runs[members[0]]
    identities.append(identity_of[key])
    if runs_lib.single_task(first.config.model):
      means, stds, counts = {}, {}, []
      for task in dataset_tasks:
        chosen = [results[i] for i in members if runs[i].tasks[0].name == task.name]
        if chosen:
          m, s = _mean_std(chosen)
          means[task.name], stds[task.name] = m[task.name], s[task.name]
          counts.append(len(chosen))
      covered = tuple(t for t in dataset_tasks if t.name in means)
      rows.append(Row(first.config.model, None, parameter_ratio(
          first.config.model, covered, first.config.width_mult), min(counts), means, stds))
    else:
      means, stds = _mean_std([results[i] for i in members])
      rows.append(Row(first.config.model, first.config.weighting, parameter_ratio(
          first.config.model, first.tasks, first.config.width_mult), len(members), means, stds,
          temperature=first.config.weighting_options.get("temperature", 2.0)))
  _settings(rows, identities)
  order = list(ARCHITECTURES)
  weightings = [None, "equal", "uncertainty", "dwa"]
  rows.sort(key=lambda r: (order.index(r.model), weightings.index(r.weighting)
                           if r.weighting in weightings else len(weightings)))
  return rows


def add_delta_m(rows: list[Row], tasks: set[str] | None = None) -> None:
  """Δm of every row against the "single" row among them (left None when there is none), over
  the tasks both have (and only `tasks`, when given)."""
  baseline = next((r for r in rows if r.model == "single"), None)
  if baseline is None:
    return
  for row in rows:
    shared = {t: baseline.means[t] for t in baseline.means
              if t in row.means and (tasks is None or t in tasks)}
    if shared:
      row.delta = metrics_lib.delta_m(row.means, shared)


# --- The table ---------------------------------------------------------------------------------

def _format(metric: str, value: float) -> str:
  if value is None or not np.isfinite(value):
    return "—"
  if metric in PERCENT:
    return f"{100 * value:.2f}"
  return f"{value:.{task_kinds.METRICS[metric].digits}f}"


def table(rows: list[Row], columns: list[tuple[str, str]]) -> str:
  """Markdown: #P, architecture, weighting, runs, the metrics, Δm; the best of our rows in bold."""
  ours = [r for r in rows if not r.paper]
  best = {}
  for task, metric in columns:
    values = [r.means[task][metric] for r in ours if task in r.means
              and np.isfinite(r.means[task].get(metric, np.nan))]
    if values:
      best[(task, metric)] = max(values) if metrics_lib.HIGHER_IS_BETTER[metric] else min(values)
  deltas = [r.delta for r in ours if r.delta is not None]
  with_delta = any(r.delta is not None for r in rows)
  arrow = lambda metric: "↑" if metrics_lib.HIGHER_IS_BETTER[metric] else "↓"  # noqa: E731
  with_setting = any(r.setting for r in rows)
  header = (["#P", "Architecture", "Weighting"] + (["Setting"] if with_setting else []) + ["runs"]
            + [f"{task} {HEADERS[metric]} {arrow(metric)}" for task, metric in columns])
  header += ["Δm % ↑"] if with_delta else []
  lead = ["---:", "---", "---"] + (["---"] if with_setting else []) + ["---:"]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(lead + ["---:"] * (len(header) - len(lead))) + "|"]
  for row in rows:
    cells = [f"{row.params:.2f}" if row.params is not None else "",
             (f"↳ {row.source or 'paper'}" if row.paper
              else ARCHITECTURES.get(row.model, row.model)),
             weighting_label(row.weighting, row.temperature)]
    cells += [row.setting] if with_setting else []
    cells += ["" if row.paper else str(row.runs)]
    for task, metric in columns:
      value = row.means.get(task, {}).get(metric)
      text = _format(metric, value)
      std = row.stds.get(task, {}).get(metric)
      if std is not None and np.isfinite(std):
        text += f" ± {_format(metric, std)}"
      if not row.paper and value is not None and best.get((task, metric)) == value:
        text = f"**{text}**"
      cells.append(text)
    if with_delta:
      text = "—" if row.delta is None else f"{row.delta:+.2f}"
      if not row.paper and row.delta is not None and row.delta == max(deltas):
        text = f"**{text}**"
      cells.append(text)
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def report(run_dirs: Sequence, split: str = "test", paper: bool = False) -> str:
  """The Markdown report of `run_dirs`: a table per dataset. Bad or empty runs are skipped, each
  with a warning; a run with fewer epochs than the mean takes (still running) is noted."""
  from mtan_jax.decathlon import report as decathlon_report  # pylint: disable=import-outside-toplevel
  decathlon_runs = [d for d in run_dirs if decathlon_report.is_run(d)]
  run_dirs = [d for d in run_dirs if d not in decathlon_runs]
  decathlon_part = ([decathlon_report.table(
      decathlon_runs, paper, lambda text: print(text, file=sys.stderr, flush=True))]
      if decathlon_runs else [])
  if not run_dirs:
    return "\n\n".join(decathlon_part) + "\n"
  runs = runs_lib.load_runs(run_dirs, split)
  by_dataset: dict[str, list[runs_lib.Run]] = {}
  for run in runs:
    by_dataset.setdefault(run.config.dataset, []).append(run)
  published = paper_rows() if paper else {}
  methods = method_rows() if paper else {}
  parts = []
  for dataset, members in by_dataset.items():
    rows = rows_from_runs(members, split)
    add_delta_m(rows)
    present = {t for r in rows for t in r.means}
    if paper:
      reference = published.get(dataset, [])
      add_delta_m(reference, present)  # over the tasks of these runs, as theirs
      others = methods.get(dataset, [])
      add_delta_m(others, present)  # against their own STL row
      for row in others:
        if not row.means and row.published_delta is not None:  # Δm alone: in our sign
          row.delta = -row.published_delta
      merged = []
      for row in rows:
        merged.append(row)
        merged += [p for p in reference if p.key == row.key]
        merged += [p for p in others if p.key == row.key and p.model != "single"]  # STL: base
      rows = merged
    columns = [(t.name, m) for t in tasks_lib.dataset_tasks(dataset, None,
                                                            members[0].config.data.num_classes)
               if t.name in present for m in metrics_lib.TASK_METRICS[t.name]]
    short = [f"{run.path} ({count})" for run in members
             if (count := sum(split in r for r in run.records)) < runlog.LAST_EPOCHS]
    note = (f"\n\nFewer than {runlog.LAST_EPOCHS} epochs (still running, or stopped early; the "
            f"mean is over those): {', '.join(short)}." if short else "")
    parts.append(f"## {dataset} ({split} split, mean of the last {runlog.LAST_EPOCHS} epochs)\n\n"
                 + table(rows, columns) + note)
  return "\n\n".join(parts + decathlon_part) + "\n"


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(prog="python -m mtan_jax.report",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("run_dirs", nargs="+")
  parser.add_argument("--split", default="test", choices=("test", "validation", "train"))
  parser.add_argument("--paper", action="store_true", help="the paper's numbers beside")
  parser.add_argument("--output", default=None, help="also write the Markdown to this file")
  args = parser.parse_args(argv)
  text = report(args.run_dirs, args.split, args.paper)
  print(text, end="")
  if args.output:
    pathlib.Path(args.output).write_text(text)
  return text


def command() -> None:
  """The console script: errors a user can cause in one line, exit status 1."""
  runs_lib.run_command(main)


if __name__ == "__main__":
  command()
