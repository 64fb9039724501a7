"""Device plumbing shared by the trainers: where a run executes, replicated state, the pmapped-step
factory, how a step that is not finite leaves the state as it was, and what to say when a step does not fit the device's memory.

Every step is written for one device with collectives over the named axis `AXIS` and mapped with
`jax.pmap` over the local devices (over every process's devices in a multi-host run).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

AXIS = "batch"
OUT_OF_MEMORY = "RESOURCE_EXHAUSTED"  # how XLA's allocators report a failed allocation


class RunError(RuntimeError):
  """A run that cannot start or continue as asked (a refused resume, a step that does not fit the
  device, steps that stopped being finite); the message says what to change."""


def replicate(tree: Any, local_devices, pmap_devices=None) -> Any:
  """One copy of `tree` per local device, laid out as `jax.pmap(..., axis_name=AXIS)` lays out its
  outputs, so that feeding either to a pmapped step hits the same compiled program (a different
  layout, e.g. from `flax.jax_utils.replicate`, costs a second compilation).

  `pmap_devices` as given to the steps' pmap: None for every device of every process.
  """
  stacked = jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x), (len(local_devices),) + np.shape(x)), tree)
  return jax.pmap(lambda x: x, axis_name=AXIS, devices=pmap_devices)(stacked)


def unreplicate(tree: Any) -> Any:
  """A replicated pytree (the steps' outputs, one copy per device) as numpy, read from one
  addressable shard (indexing `x[0]` would gather every device's copy first)."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite (integer leaves, e.g. counts, pass)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def keep_where(finite: jax.Array, new: Any, old: Any) -> Any:
  """`new` where `finite` (a scalar bool, the same on every device) holds, else `old`, leaf by
  leaf: how a step that is not finite leaves the state as it was."""
  return jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)


@dataclasses.dataclass
class Place:
  """Where a run executes: its local devices (`pmap_devices` None: all of every process) and
  whether this is the process that writes logs and says things."""

  devices: list
  pmap_devices: list | None
  is_main: bool

  @classmethod
  def of(cls, count: int = 0) -> "Place":
    """The first `count` local devices (0: every device of every process); a subset is for a
    single-process run only."""
    devices = jax.local_devices()
    pmap_devices = None
    if count > 0:
      if count > len(devices) or jax.process_count() > 1:
        raise RunError(f"devices: {count} asked for; {len(devices)} local device(s) found in "
                       f"{jax.process_count()} process(es) (a subset is for one process only)")
      devices = pmap_devices = devices[:count]
    return cls(devices, pmap_devices, jax.process_index() == 0)

  @property
  def global_count(self) -> int:
    return len(self.devices) * jax.process_count()

  def say(self, *args) -> None:
    if self.is_main:
      print(*args, flush=True)

  def replicate(self, tree):
    return replicate(tree, self.devices, self.pmap_devices)

  def pmap(self, fn: Callable, **kwargs):
    """`fn` (a per-device step over `AXIS`) mapped over this place's devices."""
    return jax.pmap(fn, axis_name=AXIS, devices=self.pmap_devices, **kwargs)

  def checked(self, fn: Callable, what: str, advice: str, **kwargs) -> "MemoryCheckedStep":
    """`pmap(fn)` refusing to run when its compiled program does not fit a device (see
    `MemoryCheckedStep`), saying `advice`."""
    return MemoryCheckedStep(self.pmap(fn, **kwargs), what, advice, self.devices[0])


def device_memory_limit(device) -> int | None:
  """Bytes a device can allocate (GPU, TPU), or None where it does not say (CPU)."""
  stats = device.memory_stats()
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def memory_advice(batch_flag: str, batch: int, devices: int, *, remat: bool | None = None,
                  dtype: str | None = None) -> str:
  """What to change when a step does not fit the device's memory: a smaller batch, and where the
  run has them and they are off, --remat (a train step's) and bfloat16 compute."""
  tips = [f"a smaller --{batch_flag} (now {batch}: {batch // devices} per device)"]
  if remat is False:
    tips.append("--remat (recomputes all but convolution outputs: about half the memory)")
  if dtype == "float32":
    tips.append("--dtype=bfloat16 (bfloat16 compute, float32 parameters: about half the "
                "activation memory)")
  return "try " + " or ".join(tips)


def describe_bytes(count: int) -> str:
  return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def explain_out_of_memory(error: Exception, what: str, advice: str) -> RunError | None:
  """A RunError saying what to change for XLA's out-of-memory `error`; None for other errors."""
  if not isinstance(error, jax.errors.JaxRuntimeError) or OUT_OF_MEMORY not in str(error):
    return None
  first_line = str(error).strip().splitlines()[0]
  return RunError(f"out of device memory in {what} ({first_line}); {advice}")


@contextlib.contextmanager
def out_of_memory_explained(running: Callable[[], tuple[str, str]]) -> Iterator[None]:
  """Turns XLA's out-of-memory error inside the block into a RunError naming what was running and
  what to change (`running()` -> (what, advice), asked when the error comes)."""
  try:
    yield
  except jax.errors.JaxRuntimeError as error:
    explained = explain_out_of_memory(error, *running())
    if explained is None:
      raise
    raise explained from error


class MemoryCheckedStep:
  """A pmapped step compiled at its first call, refusing to run when XLA's memory analysis of the
  compiled program (arguments + outputs + temporaries, per device) exceeds what the device can
  allocate, with `advice` instead of an allocator trace at the first step.

  An allocation failure while compiling or running is turned into advice by the trainer's handler
  of `explain_out_of_memory`. In a multi-process run the step is called as it is (a program lowered
  from one process's local arguments cannot be called with them)."""

  def __init__(self, step, what: str, advice: str, device):
    self.step, self.what, self.advice, self.device = step, what, advice, device
    self._compiled: dict[Any, Any] = {}  # by the arguments' shapes (a partial last batch differs)

  def __call__(self, *args):
    if jax.process_count() > 1:
      return self.step(*args)
    leaves, structure = jax.tree_util.tree_flatten(args)
    key = (structure, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves))
    if key not in self._compiled:
      compiled = self.step.lower(*args).compile()
      limit = device_memory_limit(self.device)
      usage = compiled.memory_analysis()
      if limit is not None and usage is not None:
        needed = (usage.argument_size_in_bytes + usage.output_size_in_bytes
                  + usage.temp_size_in_bytes - usage.alias_size_in_bytes)
        if needed > limit:
          raise RunError(f"the {self.what} needs {describe_bytes(needed)} per device, more than "
                         f"the {describe_bytes(limit)} a {self.device.device_kind} can allocate; "
                         f"{self.advice}")
      self._compiled[key] = compiled
    return self._compiled[key](*args)
