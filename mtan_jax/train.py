"""Training and evaluation of a run, top to bottom: `run(config)`.

Phases: devices and hosts; the run folder (config, resume checks); data; model, weighting and
optimizer; state (fresh or restored); the epoch loop (train steps, end of epoch, evaluation, logs,
checkpoint); the summary (mean of the last 10 epochs, as the paper reports).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import pathlib
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtan_jax import checkpoint as checkpoint_lib
from mtan_jax import config as config_lib
from mtan_jax import datasets as datasets_lib
from mtan_jax import metrics as metrics_lib
from mtan_jax import rundir
from mtan_jax import runlog
from mtan_jax import tasks as tasks_lib
from mtan_jax import train_step as step_lib
from mtan_jax import weighting as weighting_lib
from mtan_jax.config import TrainConfig
from mtan_jax.data import pipeline
from mtan_jax.models import abstract_variables
from mtan_jax.models import build_model
from mtan_jax.models import shared_parameter_names

class RunError(RuntimeError):
  """A run that cannot start or continue as asked (e.g. a mismatched resume)."""


class RunInterrupted(RuntimeError):
  """SIGTERM or SIGINT stopped the run after saving its exact position; `--resume` continues it."""

  def __init__(self, message: str, signal_number: int):
    super().__init__(message)
    self.signal_number = signal_number


class StopOnSignal:
  """While active, SIGTERM and SIGINT (preemption, Ctrl-C) only set `self.signal_number`: the loop
  finishes the step in flight, saves and stops. Outside the main thread it does nothing."""

  def __init__(self):
    self.signal_number: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signal_number, frame):
    del frame
    self.signal_number = self.signal_number or signal_number

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


OUT_OF_MEMORY = "RESOURCE_EXHAUSTED"  # how XLA's allocators report a failed allocation


def device_memory_limit(device) -> int | None:
  """Bytes a device can allocate (GPU, TPU), or None where it does not say (CPU)."""
  stats = device.memory_stats()
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def memory_advice(config: TrainConfig, batch_flag: str, batch: int, devices: int) -> str:
  """What to change when a step does not fit the device's memory."""
  tips = [f"a smaller --{batch_flag} (now {batch}: {batch // devices} per device)"]
  if not config.remat and batch_flag == "batch_size":
    tips.append("--remat (recomputes all but convolution outputs: about half the memory)")
  if config.dtype == "float32":
    tips.append("--dtype=bfloat16 (bfloat16 compute, float32 parameters: about half the "
                "activation memory)")
  return "try " + " or ".join(tips)


def _bytes(count: int) -> str:
  return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def explain_out_of_memory(error: Exception, what: str, advice: str) -> RunError | None:
  """A RunError saying what to change for XLA's out-of-memory `error`; None for other errors."""
  if not isinstance(error, jax.errors.JaxRuntimeError) or OUT_OF_MEMORY not in str(error):
    return None
  first_line = str(error).strip().splitlines()[0]
  return RunError(f"out of device memory in {what} ({first_line}); {advice}")


class MemoryCheckedStep:
  """A pmapped step compiled at its first call, refusing to run when XLA's memory analysis of the
  compiled program (arguments + outputs + temporaries, per device) exceeds what the device can
  allocate, with `advice` instead of an allocator trace at the first step.

  An allocation failure while compiling or running is turned into advice by `run`'s handler of
  `explain_out_of_memory`, around the whole loop. In a multi-process run the step is called as it is
  (a program lowered from one process's local arguments cannot be called with them)."""

  def __init__(self, step, what: str, advice: str, device):
    self.step, self.what, self.advice, self.device = step, what, advice, device
    self.compiled = None if jax.process_count() == 1 else step

  def __call__(self, *args):
    if self.compiled is None:
      compiled = self.step.lower(*args).compile()
      limit = device_memory_limit(self.device)
      usage = compiled.memory_analysis()
      if limit is not None and usage is not None:
        needed = (usage.argument_size_in_bytes + usage.output_size_in_bytes
                  + usage.temp_size_in_bytes - usage.alias_size_in_bytes)
        if needed > limit:
          raise RunError(f"the {self.what} needs {_bytes(needed)} per device, more than the "
                         f"{_bytes(limit)} a {self.device.device_kind} can allocate; {self.advice}")
      self.compiled = compiled
    return self.compiled(*args)


PROGRESS_EVERY = 20  # steps between reads of the devices' loss and skip counts


def _train_and_add(state, totals, batch, *, tasks, **step_args):
  """The train step, its metric sums and skip counts added to the epoch's `totals` on the device
  (a skipped step adds only to the skip counts). Returns (state, totals, {"loss", "weights"})."""
  metric_totals, skip_counts = totals
  state, outputs = step_lib.train_step(state, batch, tasks=tasks, **step_args)
  metric_totals = metrics_lib.add_to_totals(metric_totals, outputs["sums"],
                                            outputs["task_losses"], ~outputs["skipped"])
  skip_counts = count_skips(skip_counts, outputs["skipped"], outputs["task_losses"])
  return state, (metric_totals, skip_counts), {"loss": outputs["loss"],
                                               "weights": outputs["weights"]}


def _evaluate_and_add(state, totals, batch, **step_args):
  """The evaluation step, its sums and task losses added to `totals` on the device."""
  outputs = step_lib.eval_step(state, batch, **step_args)
  return metrics_lib.add_to_totals(totals, outputs["sums"], outputs["task_losses"])


def new_skip_counts(tasks) -> dict[str, Any]:
  """Skipped steps of an epoch, counted on the device: total, the current and the longest run of
  consecutive ones, and per task the skipped steps whose loss was not finite."""
  zero = np.zeros((), np.int32)
  return {"total": zero, "consecutive": zero, "longest": zero,
          "by_task": {t.name: zero for t in tasks}}


def count_skips(counts: dict[str, Any], skipped, task_losses) -> dict[str, Any]:
  """`counts` after one step (`skipped`: whether it was; `task_losses`: its losses)."""
  skipped = skipped.astype(jnp.int32)
  consecutive = (counts["consecutive"] + 1) * skipped
  return {"total": counts["total"] + skipped, "consecutive": consecutive,
          "longest": jnp.maximum(counts["longest"], consecutive),
          "by_task": {t: n + skipped * (~jnp.isfinite(task_losses[t])).astype(jnp.int32)
                      for t, n in counts["by_task"].items()}}


def run(config: TrainConfig) -> dict[str, Any]:
  """Trains and evaluates as `config` says; returns {"records", "summary", "state"}.

  Nothing is written before the config and the data source check out; the run folder is then
  owned by this run (a lock, see `rundir`) until it returns or fails."""
  config.validate()
  problem = rundir.start_problem(config.workdir, config.resume, config.overwrite)
  if config.resume and config.overwrite:
    raise RunError(problem)
  pipeline.locate(config.data)  # a missing or changed release stops the run here
  if problem:  # before creating the folder
    raise RunError(problem)
  if config.multihost:
    jax.distributed.initialize()
  with contextlib.ExitStack() as held:
    if jax.process_index() == 0:  # multi-host runs lock from process 0
      held.enter_context(rundir.RunFolderLock(config.workdir))
    return _run(config)


def _claim_run_folder(config: TrainConfig, workdir: pathlib.Path,
                      is_main: bool) -> dict[str, list[Any]]:
  """`rundir.claim` with this config's comparison (earlier versions of config.json read); returns
  the fields that changed on the resume and may ({path: [was, now]})."""
  after_clear = None
  if config.multihost and config.overwrite:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    after_clear = lambda: multihost_utils.sync_global_devices(  # noqa: E731
        "mtan_jax: run folder cleared")
  return rundir.claim(
      workdir, resume=config.resume, overwrite=config.overwrite, error=RunError, is_main=is_main,
      differences=lambda saved: config_lib.differences(saved, config, "config.json"),
      changes=lambda saved: config_lib.changes_on_resume(saved, config, "config.json"),
      after_clear=after_clear)


@dataclasses.dataclass
class _Place:
  """Where a run executes: its devices (`pmap_devices` None: all of every process) and whether
  this is the process that writes logs and says things."""

  devices: list
  pmap_devices: list | None
  is_main: bool

  @property
  def global_count(self) -> int:
    return len(self.devices) * jax.process_count()

  def say(self, *args) -> None:
    if self.is_main:
      print(*args, flush=True)

  def replicate(self, tree):
    return step_lib.replicate(tree, self.devices, self.pmap_devices)


@dataclasses.dataclass
class _Data:
  train: pipeline.Loader
  evaluation: dict[str, pipeline.Loader]
  steps_per_epoch: int


@dataclasses.dataclass
class _Steps:
  """The compiled programs of a run and what they need."""

  train: MemoryCheckedStep
  evaluate: MemoryCheckedStep
  close_epoch: Any
  halve_steps: int


def _run(config: TrainConfig) -> dict[str, Any]:
  """`run` once the run folder is owned: a few phases, top to bottom."""
  place = _devices(config)
  workdir = pathlib.Path(config.workdir)
  changes = _claim_run_folder(config, workdir, place.is_main)
  tasks = tasks_lib.dataset_tasks(config.dataset, config.tasks, config.data.num_classes)
  with contextlib.ExitStack() as resources:
    data = _open_data(config, tasks, place, resources)
    parts = build_parts(config, tasks, data.steps_per_epoch)
    checkpoints = resources.enter_context(_checkpoints_closed(
        checkpoint_lib.Checkpointer(workdir / "checkpoints", config.keep_checkpoints)))
    state, position = _initial_state(config, workdir, place, checkpoints, changes, parts)
    steps = _compile(config, tasks, place, parts, data.steps_per_epoch)
    log = resources.enter_context(contextlib.closing(runlog.RunLog(
        workdir, enabled=place.is_main, first_epoch=int(step_lib.unreplicate(state.epoch)))))
    state = _train(config, tasks, place, data, steps, checkpoints, log, state, position, changes)
  return _summarise(workdir, place, state)


def _devices(config: TrainConfig) -> _Place:
  devices = jax.local_devices()
  pmap_devices = None
  if config.devices > 0:
    if config.devices > len(devices) or jax.process_count() > 1:
      raise RunError(f"devices: {config.devices} asked for; {len(devices)} local device(s) found"
                     f" in {jax.process_count()} process(es) (a subset is for one process only)")
    devices = pmap_devices = devices[:config.devices]
  return _Place(devices, pmap_devices, jax.process_index() == 0)


def _open_data(config: TrainConfig, tasks, place: _Place,
               resources: contextlib.ExitStack) -> _Data:
  """The loaders (built first if needed), closed with `resources`."""
  loader_args = dict(local_devices=len(place.devices), seed=config.seed, workers=config.workers,
                     process_index=jax.process_index(), process_count=jax.process_count(),
                     depth_power=datasets_lib.get(config.dataset).depth_power)
  progress = place.is_main and config.progress  # also the dataset build's bar

  def split(name: str) -> pipeline.TaskSource:
    return pipeline.open_split(config.data, name, tasks, progress=progress)

  train = resources.enter_context(pipeline.Loader(
      split("train"), global_batch_size=config.batch_size, shuffle=True,
      augment=config.data.augment, drop_remainder=True, **loader_args))
  evaluation = {name: resources.enter_context(pipeline.Loader(
      split(name), global_batch_size=config.eval_batch_size or config.batch_size, **loader_args))
      for name in ["test"] + (["validation"] if config.data.validation_fraction > 0 else [])}
  steps = len(train) if config.steps_per_epoch <= 0 else min(config.steps_per_epoch, len(train))
  return _Data(train, evaluation, steps)


class Parts(NamedTuple):
  """What a run trains: the model, the weighting, the optimizer, and the top-level names of the
  model's parameters shared by the tasks (`models.shared_parameter_names`)."""

  model: Any
  weighting: weighting_lib.Weighting
  optimizer: Any
  shared: frozenset[str]

  def initial_state(self, config: TrainConfig) -> step_lib.TrainState:
    return step_lib.create_train_state(self.model, self.weighting, self.optimizer,
                                       config.resolution, config.seed, self.shared)


def build_parts(config: TrainConfig, tasks, steps_per_epoch: int) -> Parts:
  """The run's `Parts` as the config says."""
  model = build_model(config.model, tasks, width_mult=config.width_mult, dtype=config.dtype,
                      bn_axis_name=step_lib.AXIS if config.bn_statistics == "global" else None)
  weighting = weighting_lib.build(config.weighting, tasks, **config.weighting_options)
  optimizer = step_lib.make_optimizer(config.lr, config.lr_halve_epoch * steps_per_epoch)
  shared = shared_parameter_names(config.model, abstract_variables(model)["params"], tasks)
  return Parts(model, weighting, optimizer, shared)


@contextlib.contextmanager
def _checkpoints_closed(checkpoints: checkpoint_lib.Checkpointer):
  """Closes the checkpointer (waiting for the last save) however the run ends; a failed last save
  is the run's error, unless another one is already on its way out."""
  try:
    yield checkpoints
  except BaseException:
    try:
      checkpoints.close()
    except checkpoint_lib.CheckpointError:
      pass
    raise
  checkpoints.close()


def _initial_state(config: TrainConfig, workdir: pathlib.Path, place: _Place,
                   checkpoints: checkpoint_lib.Checkpointer, changes: dict[str, list[Any]],
                   parts: Parts):
  """(replicated state, position record): fresh, or the newest intact checkpoint's (damaged ones
  are said and moved aside). Writes config.json for a new run."""
  like = jax.eval_shape(lambda: parts.initial_state(config))
  restored = checkpoints.restore_intact(
      like, place.say, check_record=functools.partial(_check_checkpoint, config=config),
      move_damaged=place.is_main)
  if place.is_main and not (workdir / "config.json").exists():  # the run's first config, kept
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
  if restored is None:
    state, position = parts.initial_state(config), {}
  else:
    _, state, position = restored
    place.say(f"Resuming {workdir}: {_describe(position)}."
              + "".join(f" {k}: {was!r} -> {now!r} (recorded in metrics.jsonl)."
                        for k, (was, now) in changes.items()))
  return place.replicate(state), position


def _compile(config: TrainConfig, tasks, place: _Place, parts: Parts,
             steps_per_epoch: int) -> _Steps:
  """The pmapped train, evaluation and end-of-epoch programs (compiled at their first call)."""
  eval_batch = config.eval_batch_size or config.batch_size
  train = MemoryCheckedStep(jax.pmap(functools.partial(
      _train_and_add, model=parts.model, weighting=parts.weighting, optimizer=parts.optimizer,
      tasks=tasks, sync_batch_stats=config.bn_statistics == "device", remat=config.remat,
      shared=parts.shared, clip_grad_norm=config.clip_grad_norm),
      axis_name=step_lib.AXIS, devices=place.pmap_devices, donate_argnums=(0, 1)),
      "train step", memory_advice(config, "batch_size", config.batch_size, place.global_count),
      place.devices[0])
  evaluate = MemoryCheckedStep(
      jax.pmap(functools.partial(_evaluate_and_add, model=parts.model, tasks=tasks),
               axis_name=step_lib.AXIS, devices=place.pmap_devices, donate_argnums=(1,)),
      "evaluation step", memory_advice(config, "eval_batch_size", eval_batch, place.global_count),
      place.devices[0])
  close_epoch = jax.pmap(functools.partial(step_lib.end_epoch, weighting=parts.weighting),
                         axis_name=step_lib.AXIS, devices=place.pmap_devices, donate_argnums=(0,))
  return _Steps(train, evaluate, close_epoch, config.lr_halve_epoch * steps_per_epoch)


def _train(config: TrainConfig, tasks, place: _Place, data: _Data, steps: _Steps,
           checkpoints: checkpoint_lib.Checkpointer, log: runlog.RunLog, state,
           position: dict[str, Any], changes: dict[str, list[Any]]):
  """The epoch loop: train, evaluate, log, checkpoint; stops at a signal after saving where it
  is. Returns the final (replicated) state."""
  start_epoch, start_step = int(step_lib.unreplicate(state.epoch)), position.get("step_in_epoch", 0)
  place.say(f"{config.model} on {config.dataset} ({', '.join(t.name for t in tasks)}), "
            f"{config.weighting} weighting, {data.steps_per_epoch} steps per epoch, global batch "
            f"{config.batch_size} on {place.global_count} device(s), epochs "
            f"{start_epoch}..{config.epochs}")
  running, epoch = steps.train, start_epoch  # the program an allocation failure is blamed on
  with StopOnSignal() as stop:
    try:
      for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        lr = config.lr * (0.5 if 0 < steps.halve_steps <= int(step_lib.unreplicate(state.step)) else 1.0)
        running = steps.train
        state, record, done = _train_epoch(config, tasks, place, data, steps, state, epoch,
                                           start_step, position, stop)
        if done < data.steps_per_epoch:  # a signal came in the middle of the epoch
          _stop(stop, checkpoints, state, {"epoch": epoch, "step_in_epoch": done,
                                           "config": config.to_dict(), **record},
                f"in epoch {epoch} after step {done} of {data.steps_per_epoch}")
        start_step = 0
        state = steps.close_epoch(state)
        record = {"epoch": epoch, "lr": lr, **record}
        if changes:  # said once, in the first epoch this process logs
          record["config_changes"], changes = changes, {}
        running = steps.evaluate
        for split, loader in data.evaluation.items():
          record[split] = _evaluate(config, tasks, place, steps, state, loader)
        record["seconds"] = time.perf_counter() - started
        log.epoch(record)
        place.say(runlog.format_epoch(record))
        position = {"epoch": epoch + 1, "step_in_epoch": 0, "config": config.to_dict()}
        checkpoints.save(int(step_lib.unreplicate(state.step)), step_lib.unreplicate(state), position)
        if stop.signal_number is not None and epoch + 1 < config.epochs:
          _stop(stop, checkpoints, None, None, f"after epoch {epoch}")
    except jax.errors.JaxRuntimeError as error:  # an allocation failed (compiling or running)
      explained = explain_out_of_memory(error, f"the {running.what} of epoch {epoch}",
                                        running.advice)
      if explained is None:
        raise
      raise explained from error
  return state


def _train_epoch(config: TrainConfig, tasks, place: _Place, data: _Data, steps: _Steps, state,
                 epoch: int, start_step: int, position: dict[str, Any], stop: "StopOnSignal"):
  """The training steps of `epoch` from `start_step`, until its end or a signal. Returns (state,
  {"weights", "train", "skipped_steps"?} or, after a signal, {"train_metrics"}, steps done)."""
  train_metrics = metrics_lib.Accumulator(tasks, config.metrics)
  if start_step and "train_metrics" in position:  # the interrupted epoch's sums so far
    train_metrics.load_json(position["train_metrics"])
  skips = SkipCounter(epoch, config.max_skipped_steps, _describe(position) if position else None)
  progress = _progress(data.steps_per_epoch - start_step, f"epoch {epoch}",
                       place.is_main and config.progress)
  # The epoch's metric sums and skip counts stay on the devices, read every PROGRESS_EVERY steps
  # (the progress bar's loss, the stop rule for skipped steps) and at the end.
  totals = place.replicate((metrics_lib.new_totals(tasks, config.metrics),
                            new_skip_counts(tasks)))
  done = start_step
  with contextlib.closing(progress):
    for batch in itertools.islice(data.train.epoch(epoch, start_step),
                                  data.steps_per_epoch - start_step):
      state, totals, last = steps.train(state, totals, batch)
      done += 1
      if (done - start_step) % PROGRESS_EVERY == 0:
        skips.update(step_lib.unreplicate(totals[1]))
        progress.update(PROGRESS_EVERY)
        progress.set_postfix(loss=f"{float(step_lib.unreplicate(last['loss'])):.4f}")
      if stop.signal_number is not None and done < data.steps_per_epoch:
        break
  skips.update(step_lib.unreplicate(totals[1]))
  train_metrics.add_totals(step_lib.unreplicate(totals[0]))
  if done < data.steps_per_epoch:
    return state, {"train_metrics": train_metrics.to_json()}, done
  if skips.total == data.steps_per_epoch:
    raise RunError(f"every training step of epoch {epoch} had a non-finite loss, gradient or "
                   f"update ({skips.describe()}); nothing was saved from it")
  last = step_lib.unreplicate(last)
  record = {"weights": {t.name: float(last["weights"][t.name]) for t in tasks},
            "train": train_metrics.result()}
  if skips.total:
    record["skipped_steps"] = {"count": skips.total, "non_finite_tasks": skips.by_task}
    place.say(f"epoch {epoch}: skipped {skips.describe()}")
  return state, record, done


def _evaluate(config: TrainConfig, tasks, place: _Place, steps: _Steps, state,
              loader: pipeline.Loader) -> dict[str, dict[str, float]]:
  """One split's metrics, its sums added on the devices and read once."""
  totals = place.replicate(metrics_lib.new_totals(tasks, config.metrics))
  for batch in loader.epoch(0):
    totals = steps.evaluate(state, totals, batch)
  accumulator = metrics_lib.Accumulator(tasks, config.metrics)
  accumulator.add_totals(step_lib.unreplicate(totals))
  return accumulator.result()


def _stop(stop: "StopOnSignal", checkpoints: checkpoint_lib.Checkpointer, state,
          position: dict[str, Any] | None, where: str) -> None:
  """The one way a signal ends a run: save `state` at `position` (None: the epoch's checkpoint is
  already on its way), wait for the save, and raise RunInterrupted saying how to continue."""
  if state is not None:
    checkpoints.save(int(step_lib.unreplicate(state.step)), step_lib.unreplicate(state), position)
  checkpoints.wait()
  name = signal.Signals(stop.signal_number).name
  raise RunInterrupted(f"{name}: stopped {where}; the exact position is saved in "
                       f"{checkpoints.directory}. Continue with the same command and --resume "
                       f"(--workdir={checkpoints.directory.parent}).", stop.signal_number)


def _summarise(workdir: pathlib.Path, place: _Place, state) -> dict[str, Any]:
  """The mean of the last 10 epochs (as the paper reports) into summary.json; the result."""
  records = runlog.read_records(workdir)
  summary = runlog.last_epochs_mean(records)
  if place.is_main and summary:
    count = min(runlog.LAST_EPOCHS, len(records))
    (workdir / "summary.json").write_text(json.dumps(
        {"last_epochs": count, "test": runlog.json_safe(summary)}, indent=1))
    place.say(runlog.format_summary(summary, count))
  return {"records": records, "summary": summary, "state": step_lib.unreplicate(state)}


def _check_checkpoint(record: dict[str, Any], config: TrainConfig) -> None:
  """Refuses to resume from a checkpoint made with another run-defining configuration."""
  differences = config_lib.differences(record["config"], config, "checkpoint")
  if differences:
    raise RunError("cannot resume: the checkpoint was made with another configuration:\n  "
                   + "\n  ".join(differences))


def _describe(position: dict[str, Any]) -> str:
  """Where a checkpoint stands, from its JSON record."""
  if position.get("step_in_epoch", 0):
    return f"checkpoint in epoch {position['epoch']} after step {position['step_in_epoch']}"
  return f"checkpoint after epoch {position['epoch'] - 1}"


class SkipCounter:
  """Reads the device's counts of skipped training steps (`count_skips`); stops the run once
  `limit` consecutive ones were counted (checked every PROGRESS_EVERY steps and at the end of the
  epoch), naming the tasks and the epoch."""

  def __init__(self, epoch: int, limit: int, last_checkpoint: str | None):
    self.epoch, self.limit, self.last_checkpoint = epoch, limit, last_checkpoint
    self.total, self.longest = 0, 0
    self.by_task: dict[str, int] = {}

  def describe(self) -> str:
    tasks = (", ".join(f"{task} {count}x" for task, count in self.by_task.items())
             or "gradients or updates")
    return f"{self.total} step(s), non-finite: {tasks}"

  def update(self, counts: dict[str, Any]) -> None:
    """Takes the epoch's counts so far (host numpy)."""
    self.total, self.longest = int(counts["total"]), int(counts["longest"])
    self.by_task = {t: int(n) for t, n in counts["by_task"].items() if int(n)}
    if self.longest >= self.limit:
      kept = (f"the {self.last_checkpoint} stays the latest"
              if self.last_checkpoint is not None else "no checkpoint was written")
      raise RunError(f"{self.limit} consecutive training steps of epoch {self.epoch} had a "
                     f"non-finite loss, gradient or update ({self.describe()}); stopping: {kept}")


class _NoProgress:
  def update(self, n):
    pass

  def set_postfix(self, **kwargs):
    pass

  def close(self):
    pass


def _progress(total: int, description: str, enabled: bool):
  if not enabled:
    return _NoProgress()
  import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm.tqdm(total=total, desc=description, leave=False, file=sys.stderr,
                   dynamic_ncols=True)
