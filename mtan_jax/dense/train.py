"""The dense tasks' trainer (NYUv2, CityScapes), top to bottom: `run(config)`.

Phases: the run folder (`harness.Session`: start check, lock, resume checks); devices; data; model,
weighting and optimizer; state (fresh or restored); the epoch loop (train steps, end of epoch,
evaluation, logs, checkpoint); the summary (mean of the last 10 epochs, as the paper reports).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import time
from typing import Any, NamedTuple

import jax

from mtan_jax import checkpoint as checkpoint_lib
from mtan_jax.dense import config as config_lib
from mtan_jax import datasets as datasets_lib
from mtan_jax import harness
from mtan_jax import metrics as metrics_lib
from mtan_jax import parallel
from mtan_jax import runlog
from mtan_jax import tasks as tasks_lib
from mtan_jax.dense import train_step as step_lib
from mtan_jax import weighting as weighting_lib
from mtan_jax.dense.config import TrainConfig
from mtan_jax.data import pipeline
from mtan_jax.models import abstract_variables
from mtan_jax.models import build_model
from mtan_jax.models import shared_parameter_names

RunError = parallel.RunError
RunInterrupted = harness.RunInterrupted


def memory_advice(config: TrainConfig, batch_flag: str, batch: int, devices: int) -> str:
  """What to change when one of this run's steps does not fit the device's memory."""
  train = batch_flag == "batch_size"
  return parallel.memory_advice(batch_flag, batch, devices,
                                remat=config.remat if train else None, dtype=config.dtype)


PROGRESS_EVERY = 20  # steps between reads of the devices' loss and skip counts


def _train_and_add(state, totals, batch, *, tasks, **step_args):
  """The train step, its metric sums and skip counts added to the epoch's `totals` on the device
  (a skipped step adds only to the skip counts). Returns (state, totals, {"loss", "weights"})."""
  metric_totals, skip_counts = totals
  state, outputs = step_lib.train_step(state, batch, tasks=tasks, **step_args)
  metric_totals = metrics_lib.add_to_totals(metric_totals, outputs["sums"],
                                            outputs["task_losses"], ~outputs["skipped"])
  skip_counts = step_lib.count_skips(skip_counts, outputs["skipped"], outputs["task_losses"])
  return state, (metric_totals, skip_counts), {"loss": outputs["loss"],
                                               "weights": outputs["weights"]}


def _evaluate_and_add(state, totals, batch, **step_args):
  """The evaluation step, its sums and task losses added to `totals` on the device."""
  outputs = step_lib.eval_step(state, batch, **step_args)
  return metrics_lib.add_to_totals(totals, outputs["sums"], outputs["task_losses"])


def run(config: TrainConfig) -> dict[str, Any]:
  """Trains and evaluates as `config` says; returns {"records", "summary", "state"}.

  Nothing is written before the config and the data source check out; the run folder is then
  owned by this run (`harness.Session`) until it returns or fails."""
  config.validate()
  harness.Session.check_start(config)
  pipeline.locate(config.data)  # a missing or changed release stops the run here
  session = harness.Session(config, differences=config_lib.differences,
                            changes=config_lib.changes_on_resume)
  with session:
    place = parallel.Place.of(config.devices)
    tasks = tasks_lib.dataset_tasks(config.dataset, config.tasks, config.data.num_classes)
    with contextlib.ExitStack() as loaders:
      data = _open_data(config, tasks, place, loaders)
      parts = build_parts(config, tasks, data.steps_per_epoch)
      checkpoints = session.checkpointer()
      state, position = session.restore(checkpoints, lambda: parts.initial_state(config),
                                        _describe)
      state = place.replicate(state)
      steps = _compile(config, tasks, place, parts, data.steps_per_epoch)
      loop = _Loop(config, tasks, place, data, steps, session, checkpoints,
                   session.log(int(step_lib.unreplicate(state.epoch))))
      state = loop.train(state, position)
    return _summarise(session, place, state)


@dataclasses.dataclass
class _Data:
  train: pipeline.Loader
  evaluation: dict[str, pipeline.Loader]
  steps_per_epoch: int


@dataclasses.dataclass
class _Steps:
  """The compiled programs of a run and what they need."""

  train: parallel.MemoryCheckedStep
  evaluate: parallel.MemoryCheckedStep
  close_epoch: Any
  halve_steps: int


def _open_data(config: TrainConfig, tasks, place: parallel.Place,
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


def _compile(config: TrainConfig, tasks, place: parallel.Place, parts: Parts,
             steps_per_epoch: int) -> _Steps:
  """The pmapped train, evaluation and end-of-epoch programs (compiled at their first call)."""
  eval_batch = config.eval_batch_size or config.batch_size
  train = place.checked(functools.partial(
      _train_and_add, model=parts.model, weighting=parts.weighting, optimizer=parts.optimizer,
      tasks=tasks, sync_batch_stats=config.bn_statistics == "device", remat=config.remat,
      shared=parts.shared, clip_grad_norm=config.clip_grad_norm),
      "train step", memory_advice(config, "batch_size", config.batch_size, place.global_count),
      donate_argnums=(0, 1))
  evaluate = place.checked(
      functools.partial(_evaluate_and_add, model=parts.model, tasks=tasks), "evaluation step",
      memory_advice(config, "eval_batch_size", eval_batch, place.global_count),
      donate_argnums=(1,))
  close_epoch = place.pmap(functools.partial(step_lib.end_epoch, weighting=parts.weighting),
                           donate_argnums=(0,))
  return _Steps(train, evaluate, close_epoch, config.lr_halve_epoch * steps_per_epoch)


@dataclasses.dataclass
class _Loop:
  """The epoch loop of one run and what it works with."""

  config: TrainConfig
  tasks: tuple
  place: parallel.Place
  data: _Data
  steps: _Steps
  session: harness.Session
  checkpoints: checkpoint_lib.Checkpointer
  log: runlog.RunLog

  def train(self, state, position: dict[str, Any]):
    """The epochs: train, evaluate, log, checkpoint; stops at a signal after saving where it is.
    Returns the final (replicated) state."""
    config, data, steps = self.config, self.data, self.steps
    start_epoch = int(step_lib.unreplicate(state.epoch))
    start_step = position.get("step_in_epoch", 0)
    self.place.say(
        f"{config.model} on {config.dataset} ({', '.join(t.name for t in self.tasks)}), "
        f"{config.weighting} weighting, {data.steps_per_epoch} steps per epoch, global batch "
        f"{config.batch_size} on {self.place.global_count} device(s), epochs "
        f"{start_epoch}..{config.epochs}")
    running, epoch = steps.train, start_epoch  # the program an allocation failure is blamed on
    blame = lambda: (f"the {running.what} of epoch {epoch}", running.advice)  # noqa: E731
    with harness.StopOnSignal() as stop, parallel.out_of_memory_explained(blame):
      for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        lr = config.lr * (0.5 if 0 < steps.halve_steps <= int(step_lib.unreplicate(state.step))
                          else 1.0)
        running = steps.train
        state, record, done = self._train_epoch(state, epoch, start_step, position, stop)
        if done < data.steps_per_epoch:  # a signal came in the middle of the epoch
          self.session.interrupt(stop, self.checkpoints, state,
                                 {"epoch": epoch, "step_in_epoch": done, **record},
                                 f"in epoch {epoch} after step {done} of {data.steps_per_epoch}")
        start_step = 0
        state = steps.close_epoch(state)
        record = {"epoch": epoch, "lr": lr, **record}
        changes = self.session.pop_changes()
        if changes:  # said once, in the first epoch this process logs
          record["config_changes"] = changes
        running = steps.evaluate
        for split, loader in data.evaluation.items():
          record[split] = self._evaluate(state, loader)
        record["seconds"] = time.perf_counter() - started
        self.log.epoch(record)
        self.place.say(runlog.format_epoch(record))
        position = {"epoch": epoch + 1, "step_in_epoch": 0}
        self.session.save(self.checkpoints, state, position)
        if stop.signal_number is not None and epoch + 1 < config.epochs:
          self.session.interrupt(stop, self.checkpoints, state, None, f"after epoch {epoch}")
    return state

  def _train_epoch(self, state, epoch: int, start_step: int, position: dict[str, Any],
                   stop: harness.StopOnSignal):
    """The training steps of `epoch` from `start_step`, until its end or a signal. Returns (state,
    {"weights", "train", "skipped_steps"?} or, after a signal, {"train_metrics"}, steps done)."""
    config, tasks, data = self.config, self.tasks, self.data
    train_metrics = metrics_lib.Accumulator(tasks, config.metrics)
    if start_step and "train_metrics" in position:  # the interrupted epoch's sums so far
      train_metrics.load_json(position["train_metrics"])
    skips = harness.SkipCounter(f"epoch {epoch}", config.max_skipped_steps,
                                _describe(position) if position else None)
    # The epoch's metric sums and skip counts stay on the devices, read every PROGRESS_EVERY steps
    # (the progress bar's loss, the stop rule for skipped steps) and at the end.
    totals = self.place.replicate((metrics_lib.new_totals(tasks, config.metrics),
                                   step_lib.new_skip_counts(tasks)))
    done = start_step
    with harness.progress_bar(data.steps_per_epoch - start_step, f"epoch {epoch}",
                              self.place.is_main and config.progress) as progress:
      for batch in itertools.islice(data.train.epoch(epoch, start_step),
                                    data.steps_per_epoch - start_step):
        state, totals, last = self.steps.train(state, totals, batch)
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
      record["skipped_steps"] = skips.record()
      self.place.say(f"epoch {epoch}: skipped {skips.describe()}")
    return state, record, done

  def _evaluate(self, state, loader: pipeline.Loader) -> dict[str, dict[str, float]]:
    """One split's metrics, its sums added on the devices and read once."""
    totals = self.place.replicate(metrics_lib.new_totals(self.tasks, self.config.metrics))
    for batch in loader.epoch(0):
      totals = self.steps.evaluate(state, totals, batch)
    accumulator = metrics_lib.Accumulator(self.tasks, self.config.metrics)
    accumulator.add_totals(step_lib.unreplicate(totals))
    return accumulator.result()


def _summarise(session: harness.Session, place: parallel.Place, state) -> dict[str, Any]:
  """The mean of the last 10 epochs (as the paper reports) into summary.json; the result."""
  records = runlog.read_records(session.workdir)
  summary = runlog.last_epochs_mean(records)
  if summary:
    count = min(runlog.LAST_EPOCHS, len(records))
    session.write_summary({"last_epochs": count, "test": summary})
    place.say(runlog.format_summary(summary, count))
  return {"records": records, "summary": summary, "state": step_lib.unreplicate(state)}


def _describe(position: dict[str, Any]) -> str:
  """Where a checkpoint stands, from its JSON record."""
  if position.get("step_in_epoch", 0):
    return f"checkpoint in epoch {position['epoch']} after step {position['step_in_epoch']}"
  return f"checkpoint after epoch {position['epoch'] - 1}"
