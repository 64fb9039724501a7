"""Every model of the paper by name, each built by keyword from its registry entry: the dense
models (`build_model(name, tasks, ...)`, the `--model` choices) and the Decathlon's WRN MTAN
(`build("wrn_mtan", classes=..., depth=..., widen_factor=...)`); titles and parameter counts."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtan_jax import tasks as tasks_lib
from mtan_jax.models import baselines
from mtan_jax.models import mtan
from mtan_jax.models.backbones import segnet
from mtan_jax.models import wrn


def _is_head(name: str, tasks: tuple[str, ...]) -> bool:
  """A task's prediction head (Split: every other parameter feeds every task)."""
  return name in {f"{t}_head" for t in tasks}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build one architecture of the paper.

  Attributes:
    name: registry name.
    title: the paper's name for it (the report's row label).
    build: the flax module's constructor, called with keywords: a dense model's with tasks,
      filters, dtype and bn_axis_name; a classifier's with its own (the WRN's: classes, depth,
      widen_factor, dtype, bn_axis_name).
    kind: "dense" (per-pixel tasks: NYUv2, CityScapes) or "classification" (the Decathlon).
    backbone: the network the tasks share or each run ("segnet", "wrn").
    base_filters: SegNet stage widths at width multiplier 1 (dense models).
    single_task: True when the architecture takes exactly one task (Single, STAN).
    holds_log_variances: True when the reference model holds the uncertainty weighting's log-variances
      (`logsigma`, one per task). Here they belong to the weighting, not to the network, but they count
      in the reference's #P.
    task_specific: (top-level parameter name, task names) -> whether only one task's loss depends
      on it (its task-specific parameters); the others are shared, and the gradient-level weightings
      combine the task gradients over them.
    representation: True when the model marks what its task-specific parts read of the shared
      network (`layers.SHARED_REPRESENTATION`), every task reading all of it, so that the task
      gradients can be taken there (`--task_gradients=representation`).
  """

  name: str
  title: str
  build: Callable[..., nn.Module]
  kind: str = "dense"
  backbone: str = "segnet"
  base_filters: tuple[int, ...] = segnet.VGG16_FILTERS
  single_task: bool = False
  holds_log_variances: bool = True
  task_specific: Callable[[str, tuple[str, ...]], bool] = _is_head
  representation: bool = False


def _is_after_last_stitch(name: str, tasks: tuple[str, ...]) -> bool:
  """Cross-Stitch as the reference: a task's last decoder stage (after the last cross-stitch unit)
  and its head; every earlier stage feeds every task through the units."""
  return name in {f"{t}_{part}" for t in tasks for part in ("decoder_4", "head")}


def _is_task_branch(name: str, tasks: tuple[str, ...]) -> bool:
  """MTAN: a task's attention masks and head; the SegNet backbone and the attention modules'
  shared f blocks are shared. Dense: a task's own network and head; the shared network is shared."""
  return any(name.startswith(f"{t}_") for t in tasks)


WIDE_FILTERS = (64, 128, 256, 512, 1024)


def _dense(*, tasks, **kwargs):
  # The reference sizes the dead last block of the shared decoder with its segmentation class count.
  seg = [t.channels for t in tasks if t.name == tasks_lib.SEGMENTATION]
  return baselines.DenseSegNet(tasks=tasks, dead_channels=seg[0] if seg else 13, **kwargs)


_SPLIT = functools.partial(baselines.SplitSegNet, convs_per_layer=1)
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("single", "One Task", _SPLIT, single_task=True, holds_log_variances=False),
    ModelSpec("stan", "STAN", mtan.MTAN, single_task=True, holds_log_variances=False),
    ModelSpec("split_standard", "Split, Standard", _SPLIT, representation=True),
    ModelSpec("split_wide", "Split, Wide", _SPLIT, base_filters=WIDE_FILTERS,
              representation=True),
    ModelSpec("split_deep", "Split, Deep",
              functools.partial(baselines.SplitSegNet, convs_per_layer=2), representation=True),
    ModelSpec("dense", "Dense", _dense, task_specific=_is_task_branch, representation=True),
    ModelSpec("cross_stitch", "Cross-Stitch", baselines.CrossStitchSegNet,
              task_specific=_is_after_last_stitch),
    ModelSpec("mtan", "MTAN", mtan.MTAN, task_specific=_is_task_branch, representation=True),
    ModelSpec("wrn_mtan", "MTAN, WRN-28-4", wrn.WideResNetMTAN, kind="classification",
              backbone="wrn", base_filters=(), holds_log_variances=False),
)}
# The dense models: the experiment scripts' --model choices.
MODEL_NAMES = tuple(name for name, spec in MODELS.items() if spec.kind == "dense")
TITLES = {name: spec.title for name, spec in MODELS.items()}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def get_spec(name: str) -> ModelSpec:
  if name not in MODELS:
    raise ValueError(f"model: expected one of {tuple(MODELS)}, found {name!r}")
  return MODELS[name]


def build(name: str, **kwargs) -> nn.Module:
  """Model `name` built from its entry with the keywords its constructor takes (for a dense model,
  `build_model` checks them and scales the widths)."""
  return get_spec(name).build(**kwargs)


def scaled_filters(name: str, width_mult: float = 1.0,
                   filters: tuple[int, ...] | None = None) -> tuple[int, ...]:
  """The stage widths of model `name`: explicit `filters`, or its base widths times `width_mult`."""
  if filters is not None:
    filters = tuple(int(f) for f in filters)
    if len(filters) != 5 or min(filters) < 1:
      raise ValueError(f"filters: expected five positive stage widths, found {filters}")
    return filters
  if width_mult <= 0:
    raise ValueError(f"width_mult: expected a positive number, found {width_mult}")
  return tuple(max(1, int(round(f * width_mult))) for f in get_spec(name).base_filters)


def build_model(name: str, tasks: tuple[tasks_lib.Task, ...], *, width_mult: float = 1.0,
                filters: tuple[int, ...] | None = None, dtype: Any = jnp.float32,
                bn_axis_name: str | None = None) -> nn.Module:
  """Builds model `name` for `tasks`.

  Args:
    name: one of `MODEL_NAMES`.
    tasks: the tasks (one for "single" and "stan").
    width_mult: multiplies every stage width (e.g. 1/16 for tests); ignored when `filters` is given.
    filters: explicit five stage widths.
    dtype: compute dtype, jnp.float32 (default) or jnp.bfloat16 (or their names); parameters stay
      float32 and outputs are float32.
    bn_axis_name: device axis over which BatchNorm averages batch statistics (global-batch BN under
      pmap), or None for per-device statistics.

  Returns:
    A flax module: `module.init(rng, images)` and `module.apply(variables, images, train=...)`,
    images `[B, H, W, 3]` with H and W divisible by 32; outputs `{task name: [B, H, W, channels]}`.
  """
  spec = get_spec(name)
  if spec.kind != "dense":
    raise ValueError(f"model {name!r} is a {spec.kind} model: expected one of {MODEL_NAMES} "
                     f"(build it with registry.build)")
  tasks = tuple(tasks)
  if not tasks or not all(isinstance(t, tasks_lib.Task) for t in tasks):
    raise ValueError(f"tasks: expected a non-empty tuple of mtan_jax.tasks.Task, found {tasks!r}")
  if len({t.name for t in tasks}) != len(tasks):
    raise ValueError(f"tasks: expected distinct task names, found {[t.name for t in tasks]}")
  if spec.single_task and len(tasks) != 1:
    raise ValueError(f"model {name!r} is single-task: expected one task, found "
                     f"{[t.name for t in tasks]} (build one model per task)")
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"dtype: expected one of {tuple(DTYPES)}, found {dtype!r}")
    dtype = DTYPES[dtype]
  return spec.build(tasks=tasks, filters=scaled_filters(name, width_mult, filters), dtype=dtype,
                    bn_axis_name=bn_axis_name)


def shared_parameter_names(name: str, params, tasks: tuple[tasks_lib.Task, ...]) -> frozenset[str]:
  """The top-level names of `params` (model `name`'s) shared by the tasks (`ModelSpec.task_specific`)."""
  task_names = tuple(t.name for t in tasks)
  return frozenset(k for k in params if not get_spec(name).task_specific(k, task_names))


def abstract_variables(model: nn.Module, height: int = 64, width: int = 64) -> Any:
  """The model's variables as `jax.ShapeDtypeStruct`s, from `jax.eval_shape` (no compute)."""
  images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)


def count_parameters(name: str, tasks: tuple[tasks_lib.Task, ...], *, width_mult: float = 1.0,
                     filters: tuple[int, ...] | None = None) -> int:
  """Trainable parameters of model `name` as the reference counts them.

  Every parameter of the network, plus one uncertainty log-variance per task where the reference model
  holds them; BatchNorm running statistics excluded. Computed with `jax.eval_shape`, no compute.
  """
  model = build_model(name, tasks, width_mult=width_mult, filters=filters)
  params = abstract_variables(model)["params"]
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))
  return count + (len(tasks) if get_spec(name).holds_log_variances else 0)
