"""Import weights trained with the official PyTorch MTAN code (lorenmt/mtan) into the Flax models.

`load_torch_state_dict(model_name, state_dict, tasks)` takes the reference model's `state_dict()` (its
parameter names mapped to arrays: numpy arrays, or anything `np.asarray` reads) and returns Flax
variables. What differs between the two layouts:

- conv kernels: PyTorch OIHW -> Flax HWIO;
- BatchNorm: weight/bias -> params scale/bias, running_mean/var -> batch_stats mean/var
  (num_batches_tracked is not used);
- concatenations: the Flax models concatenate in the reference's channel order (shared then task in
  MTAN, task then shared in Dense), so NCHW input channels map one to one onto NHWC ones;
- the reference's decoder layers are numbered k = 4 - j for decoder stage j here;
- the reference's task i (heads `pred_task{i+1}`, masks `encoder_att[i]`) is `tasks[i]` here; the
  single-task files (single, STAN) name their head `pred_task`;
- `logsigma`, the uncertainty weighting's log-variances, which the reference keeps in the model, comes
  back as the variable collection "log_variance" ({task name: scalar}); Flax's `apply` ignores it.

Reference files: `model_segnet_{single,stan,split,dense,cross,mtan}.py` (split: `--type
standard|wide|deep`). The CityScapes variants are the same classes with `class_nb = 7` and the third
task removed. `load_torch_wrn_state_dict` imports the Visual Decathlon's WRN MTAN
(`visual_decathlon/model_wrn_mtan.py`): task k's masks `encoder_att[k]`, head `linear[k]`.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.traverse_util
import jax.numpy as jnp
import numpy as np

from mtan_jax import tasks as tasks_lib
from mtan_jax.models import registry
from mtan_jax.models.backbones import segnet

# One entry: (flax module path, torch module prefix, "conv" | "linear" | "bn").
Entry = tuple[tuple[str, ...], str, str]

_TORCH_FIELDS = {"conv": ("weight", "bias"), "linear": ("weight", "bias"),
                 "bn": ("weight", "bias", "running_mean", "running_var")}


def _conv_bn_sequence(flax_stage: tuple[str, ...], first_block: int, torch_seq: str,
                      n_convs: int) -> list[Entry]:
  """A torch Sequential of n (conv, BN, ReLU) triples -> Flax `block_{first_block + i}` modules."""
  entries = []
  for i in range(n_convs):
    block = flax_stage + (f"block_{first_block + i}",)
    entries += [(block + ("conv",), f"{torch_seq}.{3 * i}", "conv"),
                (block + ("bn",), f"{torch_seq}.{3 * i + 1}", "bn")]
  return entries


def _segnet_entries(convs_per_layer: int) -> list[Entry]:
  """The shared SegNet of single / STAN / split / MTAN."""
  entries = []
  for side, first, rest in (("encoder", "encoder_block", "conv_block_enc"),
                            ("decoder", "decoder_block", "conv_block_dec")):
    for j in range(5):
      k = j if side == "encoder" else 4 - j  # the reference numbers decoder layers backwards
      torch_layers = [f"{first}.{k}"] + (
          [f"{rest}.{k}"] if k < 2 else [f"{rest}.{k}.0", f"{rest}.{k}.1"])
      for layer, prefix in enumerate(torch_layers):
        entries += _conv_bn_sequence(("backbone", f"{side}_{j}"), layer * convs_per_layer, prefix,
                                     convs_per_layer)
  return entries


def _head_entries(tasks: tuple[tasks_lib.Task, ...], single_task: bool) -> list[Entry]:
  entries = []
  for i, task in enumerate(tasks):
    torch_head = "pred_task" if single_task else f"pred_task{i + 1}"
    entries += [((f"{task.name}_head", "conv_3x3"), f"{torch_head}.0", "conv"),
                ((f"{task.name}_head", "conv_1x1"), f"{torch_head}.1", "conv")]
  return entries


def _mtan_entries(tasks: tuple[tasks_lib.Task, ...]) -> list[Entry]:
  entries = _segnet_entries(1)
  for j in range(5):
    entries += [((f"encoder_att_block_{j}", "conv"), f"encoder_block_att.{j}.0", "conv"),
                ((f"encoder_att_block_{j}", "bn"), f"encoder_block_att.{j}.1", "bn"),
                ((f"decoder_att_block_{j}", "conv"), f"decoder_block_att.{4 - j}.0", "conv"),
                ((f"decoder_att_block_{j}", "bn"), f"decoder_block_att.{4 - j}.1", "bn")]
  for i, task in enumerate(tasks):
    for side, torch_name in (("encoder", "encoder_att"), ("decoder", "decoder_att")):
      for j in range(5):
        k = j if side == "encoder" else 4 - j
        mask = f"{task.name}_{side}_mask_{j}"
        prefix = f"{torch_name}.{i}.{k}"
        entries += [((mask, "conv_g"), f"{prefix}.0", "conv"), ((mask, "bn_g"), f"{prefix}.1", "bn"),
                    ((mask, "conv_h"), f"{prefix}.3", "conv"), ((mask, "bn_h"), f"{prefix}.4", "bn")]
  return entries


def _per_task_segnet_entries(tasks, filters, dense: bool) -> list[Entry]:
  """Dense and cross-stitch: one block per stage, `encoder_block_t.{i}.{k}` / `decoder_block_t`."""
  encoder = segnet.encoder_widths(filters)
  decoder = segnet.decoder_widths(filters)  # every decoder stage's block count is SegNet's
  entries = []
  if dense:
    for k in range(5):
      entries += _conv_bn_sequence((f"shared_encoder_{k}",), 0, f"encoder_block.{k}",
                                   len(encoder[k]))
      entries += _conv_bn_sequence((f"shared_decoder_{k}",), 0, f"decoder_block.{4 - k}",
                                   len(decoder[k]))
  for i, task in enumerate(tasks):
    for k in range(5):
      entries += _conv_bn_sequence((f"{task.name}_encoder_{k}",), 0, f"encoder_block_t.{i}.{k}",
                                   len(encoder[k]))
      entries += _conv_bn_sequence((f"{task.name}_decoder_{k}",), 0,
                                   f"decoder_block_t.{i}.{4 - k}", len(decoder[k]))
  return entries


def reference_entries(model_name: str, tasks: tuple[tasks_lib.Task, ...],
                      filters: tuple[int, ...]) -> list[Entry]:
  """Every conv and BN of model `model_name` as (Flax module path, torch module prefix, kind)."""
  spec = registry.get_spec(model_name)
  if model_name in ("single", "split_standard", "split_wide"):
    entries = _segnet_entries(1)
  elif model_name == "split_deep":
    entries = _segnet_entries(2)
  elif model_name in ("stan", "mtan"):
    entries = _mtan_entries(tasks)
  elif model_name in ("dense", "cross_stitch"):
    entries = _per_task_segnet_entries(tasks, filters, dense=model_name == "dense")
  else:  # a registry entry without an import mapping
    raise ValueError(f"model {model_name!r}: no mapping from the PyTorch reference")
  return entries + _head_entries(tasks, spec.single_task)


def _torch_shape(kind: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The reference's shape of a leaf whose Flax shape is `flax_shape` (conv kernels are HWIO)."""
  if kind == "conv_kernel":
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if kind == "linear_kernel":
    return tuple(flax_shape)[::-1]
  return tuple(flax_shape)


def _listing(title: str, items: list[str], limit: int = 25) -> str:
  shown = items[:limit] + ([f"... and {len(items) - limit} more"] if len(items) > limit else [])
  return f"{title} ({len(items)}):\n  " + "\n  ".join(shown)


def load_torch_state_dict(model_name: str, state_dict: Mapping[str, Any],
                          tasks: tuple[tasks_lib.Task, ...], *, width_mult: float = 1.0,
                          filters: tuple[int, ...] | None = None) -> dict[str, Any]:
  """Turns a state dict of the official PyTorch model into Flax variables.

  Args:
    model_name: a registry name (`mtan_jax.models.MODEL_NAMES`).
    state_dict: the reference model's `state_dict()`, parameter names -> arrays (numpy, or torch CPU
      tensors: anything `np.asarray` accepts).
    tasks: the tasks, in the reference's task order (NYUv2: segmentation, depth, normal).
    width_mult, filters: as `build_model`, for reference models built with other stage widths.

  Returns:
    `{"params": ..., "batch_stats": ...}` for `build_model(model_name, tasks, ...).apply`, plus
    `"log_variance": {task name: float32 scalar}` when the reference model holds `logsigma`.

  Raises:
    ValueError: listing every missing entry, every unexpected entry and every entry of the wrong shape
      (expected and found, in the reference's layout), when the state dict does not fit the model.
  """
  tasks = tuple(tasks)
  model = registry.build_model(model_name, tasks, width_mult=width_mult, filters=filters)
  spec = registry.get_spec(model_name)
  abstract = registry.abstract_variables(model)
  target = _targets(abstract, reference_entries(model_name, tasks, model.filters))
  flat_params = flax.traverse_util.flatten_dict(abstract["params"])
  if model_name == "cross_stitch":
    for side, torch_name in (("encoder", "cs_unit_encoder"), ("decoder", "cs_unit_decoder")):
      path = (f"cross_stitch_{side}",)
      target[torch_name] = ("params", path, "copy", flat_params[path].shape)
  if spec.holds_log_variances:
    target["logsigma"] = ("log_variance", (), "copy", (len(tasks),))
  description = (f"model {model_name!r} with tasks {[t.name for t in tasks]} and filters "
                 f"{model.filters}")
  variables = _fill(abstract, target, state_dict, description)
  if spec.holds_log_variances:
    log_variance = variables.pop("log_variance")
    variables["log_variance"] = {t.name: log_variance[i] for i, t in enumerate(tasks)}
  return variables


def _wrn_entries(classes: tuple[int, ...], depth: int) -> list[Entry]:
  """The Decathlon WRN MTAN (visual_decathlon/model_wrn_mtan.py's WideResNet)."""
  blocks = (depth - 4) // 6
  entries: list[Entry] = [(("conv1",), "conv1", "conv"), (("bn1",), "bn1", "bn")]
  for i in (1, 2, 3):
    for b in range(blocks):
      flax_block, torch_block = f"layer{i}_{b}", f"layer{i}.{b}"
      entries += [((flax_block, name), f"{torch_block}.{name}", kind)
                  for name, kind in (("bn1", "bn"), ("conv1", "conv"), ("bn2", "bn"),
                                     ("conv2", "conv"))]
      if b == 0:  # every group starts with a stride and (after the stem) a change of width
        entries.append(((flax_block, "shortcut"), f"{torch_block}.shortcut.0", "conv"))
  for j in range(4):
    entries += [((f"encoder_block_att_{j}", "conv"), f"encoder_block_att.{j}.0", "conv"),
                ((f"encoder_block_att_{j}", "bn"), f"encoder_block_att.{j}.1", "bn")]
  for k in range(len(classes)):
    for j in range(4):
      mask, torch_mask = f"task{k}_mask_{j}", f"encoder_att.{k}.{j}"
      entries += [((mask, name), f"{torch_mask}.{index}", kind)
                  for name, index, kind in (("conv_g", 0, "conv"), ("bn_g", 1, "bn"),
                                            ("conv_h", 3, "conv"), ("bn_h", 4, "bn"))]
    entries.append(((f"task{k}_head",), f"linear.{k}.0", "linear"))
  return entries


def load_torch_wrn_state_dict(state_dict: Mapping[str, Any], classes: tuple[int, ...],
                              *, depth: int = 28, widen_factor: int = 4) -> dict[str, Any]:
  """`load_torch_state_dict` for the Visual Decathlon's WRN MTAN (`models.wrn.WideResNetMTAN`):
  the state dict of the reference's `WideResNet(depth, widen_factor, num_classes=classes)` ->
  `{"params", "batch_stats"}`. Linear weights `[out, in]` become kernels `[in, out]`. Raises
  ValueError listing what is missing, unexpected or of the wrong shape."""
  import jax  # pylint: disable=import-outside-toplevel

  from mtan_jax.models import wrn  # pylint: disable=import-outside-toplevel
  model = wrn.WideResNetMTAN(tuple(classes), depth, widen_factor)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1, 72, 72, 3), jnp.float32))
  description = f"the WRN-{depth}-{widen_factor} MTAN with classes {tuple(classes)}"
  return _fill(abstract, _targets(abstract, _wrn_entries(tuple(classes), depth)), state_dict,
               description)


def _targets(abstract, entries: list[Entry]) -> dict[str, tuple[str, tuple[str, ...], str, tuple]]:
  """torch key -> (collection, flax leaf path, conversion, expected flax shape), from `entries`
  and the model's abstract variables."""
  flat = {"params": flax.traverse_util.flatten_dict(abstract["params"]),
          "batch_stats": flax.traverse_util.flatten_dict(abstract["batch_stats"])}
  leaves = {"conv": (("params", "kernel", "conv_kernel"), ("params", "bias", "copy")),
            "linear": (("params", "kernel", "linear_kernel"), ("params", "bias", "copy")),
            "bn": (("params", "scale", "copy"), ("params", "bias", "copy"),
                   ("batch_stats", "mean", "copy"), ("batch_stats", "var", "copy"))}
  target = {}
  for flax_path, prefix, kind in entries:
    for torch_field, (collection, leaf, conversion) in zip(_TORCH_FIELDS[kind], leaves[kind]):
      shape = flat[collection][flax_path + (leaf,)].shape
      target[f"{prefix}.{torch_field}"] = (collection, flax_path + (leaf,), conversion, shape)
  return target


def _fill(abstract, target: dict, state_dict: Mapping[str, Any], description: str) -> dict:
  """The variables `target` maps `state_dict` into (see `_targets`; a "log_variance" target comes
  back as an array under that key). Raises ValueError listing every missing, unexpected and
  wrongly shaped entry; AssertionError when `target` misses a leaf of the model (a mapping bug)."""
  flat_params = flax.traverse_util.flatten_dict(abstract["params"])
  flat_stats = flax.traverse_util.flatten_dict(abstract["batch_stats"])
  mapped = {path for collection, path, _, _ in target.values() if collection != "log_variance"}
  unmapped = set(flat_params) | set(flat_stats)
  if mapped != unmapped:  # a bug in the mapping tables above, not in the user's input
    raise AssertionError(f"import mapping of {description} misses {sorted(unmapped - mapped)}")

  given = {key: np.asarray(value) for key, value in state_dict.items()}
  optional = {key.removesuffix(".running_mean") + ".num_batches_tracked"
              for key in target if key.endswith(".running_mean")}
  missing = sorted(set(target) - set(given))
  unexpected = sorted(set(given) - set(target) - optional)
  wrong_shape = []
  for key in sorted(set(target) & set(given)):
    _, _, conversion, shape = target[key]
    expected = _torch_shape(conversion, shape)
    if given[key].shape != expected:
      wrong_shape.append(f"{key}: expected {expected}, found {given[key].shape}")
  if missing or unexpected or wrong_shape:
    parts = [f"state dict does not fit {description}"]
    for title, items in (("missing entries", missing), ("unexpected entries", unexpected),
                         ("entries of the wrong shape", wrong_shape)):
      if items:
        parts.append(_listing(title, items))
    raise ValueError("\n".join(parts))

  collections: dict[str, dict[tuple[str, ...], np.ndarray]] = {"params": {}, "batch_stats": {}}
  variables: dict[str, Any] = {}
  for key, (collection, path, conversion, _) in target.items():
    value = given[key].astype(np.float32)
    if conversion == "conv_kernel":
      value = np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    elif conversion == "linear_kernel":
      value = np.ascontiguousarray(value.T)
    if collection == "log_variance":
      variables["log_variance"] = jnp.asarray(value)
    else:
      collections[collection][path] = jnp.asarray(value)
  for collection, flat in collections.items():
    variables[collection] = flax.traverse_util.unflatten_dict(flat)
  return variables
