"""The Decathlon table of `mtan-report`: each run's test top-1 accuracy per dataset, their mean
and (for the real datasets) the challenge's score, with the paper's rows beside (`--paper`). The
release's test labels are the challenge server's: a run on it shows its validation accuracy and
score, marked so (its test score comes from the server, from results.json)."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Sequence

from mtan_jax import decathlon

PAPER_FILE = pathlib.Path(__file__).resolve().parent.parent / "paper_results.md"
HEADING = "## Visual Decathlon"


def is_run(path) -> bool:
  """Whether folder `path` holds a Decathlon run (its config.json is a DecathlonConfig's)."""
  config = pathlib.Path(path) / "config.json"
  try:
    return "widen_factor" in json.loads(config.read_text())
  except (OSError, ValueError):
    return False


def paper_rows(path=PAPER_FILE) -> list[tuple[str, dict[str, float], float, float]]:
  """(model, {dataset: top-1 %}, mean, score) of paper_results.md's Decathlon section."""
  rows, inside, columns = [], False, None
  for line in pathlib.Path(path).read_text().splitlines():
    if line.startswith("## "):
      inside = line.startswith(HEADING)
      continue
    if not inside or not line.startswith("|"):
      continue
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if cells[0] == "Model":
      columns = cells[1:-2]
      if sorted(columns) != sorted(decathlon.NAMES):
        raise ValueError(f"{path}: the Decathlon table's columns {columns} are not the ten datasets")
    elif columns and not re.fullmatch(r"[-: ]+", cells[0]):
      values = [float(c) for c in cells[1:]]
      rows.append((cells[0], dict(zip(columns, values[:-2])), values[-2], values[-1]))
  return rows


def table(run_dirs: Sequence, paper: bool = False, warn=print) -> str:
  """The Markdown table of the Decathlon runs in `run_dirs` (each needs its summary.json; one
  without is skipped with a warning naming it)."""
  header = ["run"] + list(decathlon.NAMES) + ["mean", "score"]
  lines = ["## Visual Decathlon (test top-1 %)", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  count = 0
  for path in run_dirs:
    summary_file = pathlib.Path(path) / "summary.json"
    try:
      summary = json.loads(summary_file.read_text())
    except (OSError, ValueError) as error:
      warn(f"warning: skipping {path}: no readable summary.json (still training?) ({error})")
      continue
    split = summary.get("accuracy_split", "test")
    accuracy = summary.get(split, {})
    cells = [f"{100 * accuracy[n]['accuracy']:.2f}" if n in accuracy else "-"
             for n in decathlon.NAMES]
    score = f"{summary['score']:.0f}" if "score" in summary else "- (stand-in)"
    mean = f"{100 * summary['mean_accuracy']:.2f}" if "mean_accuracy" in summary else "-"
    label = f"{path} (validation)" if split == "validation" else str(path)
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} | {score} |")
    count += 1
  if paper:
    for model, accuracy, mean, score in paper_rows():
      lines.append(f"| {model} (paper) | "
                   + " | ".join(f"{accuracy[n]:.2f}" for n in decathlon.NAMES)
                   + f" | {mean:.2f} | {score:.0f} |")
  if not count and not paper:
    raise ValueError("no Decathlon run with a summary.json to show")
  return "\n".join(lines)
