"""Prints every model's parameter count and its ratio to one single-task SegNet (the paper's #P).

  python -m mtan_jax.params --dataset=nyuv2          # a table
  python -m mtan_jax.params --dataset=cityscapes --json
  python -m mtan_jax.params --dataset=decathlon      # the Decathlon WRN-28-4 MTAN, by part

Counts come from `jax.eval_shape` (no compute) and follow the reference's convention: every
trainable parameter, the uncertainty log-variances included where the reference model holds them,
BatchNorm running statistics excluded. The ratio's denominator is the single-task SegNet of the
dataset's first task (segmentation), as the reference scripts' "REL".
"""

from __future__ import annotations

import argparse
import json
import sys

from mtan_jax import tasks as tasks_lib
from mtan_jax.models import registry


def parameter_table(dataset: str, num_classes: int | None = None,
                    width_mult: float = 1.0) -> dict[str, int]:
  """{row name: parameter count} for every model of the registry on `dataset`'s tasks.

  Single-task models get one row per task and a row for one network per task together
  ("One Task", "STAN" in the paper's tables).
  """
  tasks = tasks_lib.dataset_tasks(dataset, num_classes=num_classes)
  rows: dict[str, int] = {}
  for name in registry.MODEL_NAMES:
    spec = registry.get_spec(name)
    if spec.single_task:
      per_task = {t.name: registry.count_parameters(name, (t,), width_mult=width_mult)
                  for t in tasks}
      for task_name, count in per_task.items():
        rows[f"{name} ({task_name})"] = count
      rows[f"{name} (x{len(tasks)}, one per task)"] = sum(per_task.values())
    else:
      rows[name] = registry.count_parameters(name, tasks, width_mult=width_mult)
  return rows


def format_table(rows: dict[str, int], reference: int, dataset: str) -> str:
  """A readable table with counts and ratios to `reference` (one single-task SegNet)."""
  width = max(len(name) for name in rows)
  lines = [f"Parameters on {dataset} (#P = count / {reference:,}, one single-task SegNet)",
           f"{'model':<{width}}  {'parameters':>13}  {'#P':>6}",
           f"{'-' * width}  {'-' * 13}  {'-' * 6}"]
  for name, count in rows.items():
    lines.append(f"{name:<{width}}  {count:>13,}  {count / reference:>6.3f}")
  return "\n".join(lines)


def decathlon_table() -> dict[str, int]:
  """{part: parameter count} of the Visual Decathlon's WRN-28-4 MTAN (shapes only, no compute)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from mtan_jax import decathlon  # pylint: disable=import-outside-toplevel
  from mtan_jax.models import wrn  # pylint: disable=import-outside-toplevel
  model = wrn.WideResNetMTAN(decathlon.CLASSES)
  image = jax.ShapeDtypeStruct((1, decathlon.IMAGE_SIZE, decathlon.IMAGE_SIZE, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)
  return wrn.parameter_groups(variables["params"])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=(*tasks_lib.DATASETS, "decathlon"),
                      default=tasks_lib.NYUV2)
  parser.add_argument("--num_classes", type=int, default=None,
                      help="segmentation classes (default: 13 for NYUv2, 7 for CityScapes)")
  parser.add_argument("--width_mult", type=float, default=1.0, help="stage-width multiplier")
  parser.add_argument("--json", action="store_true", help='print {"model name": count, ...}')
  args = parser.parse_args(argv)
  if args.dataset == "decathlon":
    rows = decathlon_table()
    width = max(len(name) for name in rows)
    print(json.dumps(rows, indent=1) if args.json else "\n".join(
        ["Parameters of the Visual Decathlon WRN-28-4 MTAN (ten tasks)"]
        + [f"{name:<{width}}  {count:>11,}" for name, count in rows.items()]))
    return 0
  rows = parameter_table(args.dataset, args.num_classes, args.width_mult)
  if args.json:
    print(json.dumps(rows, indent=1))
  else:
    first = next(iter(rows))  # single (segmentation): the reference's REL denominator
    print(format_table(rows, rows[first], args.dataset))
  return 0


def command() -> None:
  """The console script."""
  sys.exit(main())


if __name__ == "__main__":
  command()
