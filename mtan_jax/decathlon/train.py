"""Training and evaluating the Decathlon MTAN: each epoch trains every task in turn on its own
training set, one task per step (the reference's model_wrn_mtan.py), under `jax.pmap` with the
global batch split over the devices (and hosts) and BatchNorm statistics over the global batch.

Pure per-device steps (`train_step`, `eval_step`) compiled once per task (the task picks the
branch and the head); the loop (`run`) keeps only the epochs' body: the run folder, checkpoints,
log, resume and signal stop are the shared harness's (`harness.Session`), as for the dense tasks.

PyTorch's SGD, as the reference ran it: a parameter is not updated until a step's backward pass
first reaches it (a task's masks and head until that task's first step: `optim.
skip_until_first_gradient`); from then on the zero gradient it keeps in other tasks' steps still
brings weight decay and momentum.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtan_jax import decathlon
from mtan_jax import harness
from mtan_jax import optim
from mtan_jax import parallel
from mtan_jax import runlog
from mtan_jax.decathlon import data as data_lib
from mtan_jax.decathlon import results as results_lib
from mtan_jax.decathlon import score as score_lib
from mtan_jax.decathlon.config import DecathlonConfig
from mtan_jax.models import registry
from mtan_jax.models import wrn
from mtan_jax.parallel import AXIS, RunError

FIRST_TASK_CHECKPOINT = "checkpoints_first_task"  # the state when the first task was dropped


@flax.struct.dataclass
class State:
  """The train state: steps taken, epochs completed, parameters, BatchNorm statistics, SGD's."""

  step: jax.Array
  epoch: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def make_optimizer(weight_decay: float) -> optax.GradientTransformationExtraArgs:
  """PyTorch's SGD(momentum 0.9, nesterov, weight_decay): the decay added to the gradient before
  the momentum, parameters skipped until they first have a gradient (`update(..., used=)`); the
  learning rate a hyperparameter set each epoch (`opt_state.hyperparams["learning_rate"]`)."""
  def sgd(learning_rate):
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optim.skip_until_first_gradient(),
                       optax.sgd(learning_rate, momentum=0.9, nesterov=True))
  return optax.inject_hyperparams(sgd)(learning_rate=0.1)


def learning_rate(config: DecathlonConfig, epoch: int) -> float:
  """The reference's StepLR: lr halved every `lr_halve_every` epochs; from the drop epoch on, a
  fresh schedule starting at `lr_after_drop`."""
  drop = config.drop_first_task_epoch
  if drop and epoch >= drop:
    return config.lr_after_drop * 0.5 ** ((epoch - drop) // config.lr_halve_every)
  return config.lr * 0.5 ** (epoch // config.lr_halve_every)


def settle_learning_rate(config: DecathlonConfig, task: int) -> float:
  """The learning rate of the settling epoch (`settle="train"`), as the reference's evaluation
  script: the first task at the first schedule's rate at the drop epoch (0.1 x 0.5^6), the others
  at the schedule's rate after the last epoch (0.01 x 0.5^2)."""
  drop = config.drop_first_task_epoch
  if task == 0 and drop:
    return config.lr * 0.5 ** (drop // config.lr_halve_every)
  return learning_rate(config, config.epochs)


def first_task(config: DecathlonConfig, epoch: int) -> int:
  """0, or 1 from the drop epoch on (the first task, ImageNet, is no longer trained)."""
  return 1 if config.drop_first_task_epoch and epoch >= config.drop_first_task_epoch else 0



def create_state(model: wrn.WideResNetMTAN, optimizer, image_size: int, seed: int) -> State:
  """A fresh state: every task's parameters (the model initialised with all branches)."""
  variables = model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))
  return State(step=jnp.int32(0), epoch=jnp.int32(0), params=variables["params"],
               batch_stats=variables["batch_stats"], opt_state=optimizer.init(variables["params"]))


def _sums(probabilities, label, valid):
  """(sum of -log(p_label + 1e-20), correct predictions, examples) over the valid examples with a
  known label (>= 0; the release's test labels are -1): the reference's loss (one-hot
  cross-entropy of the softmax output) and top-1 accuracy."""
  valid = (valid & (label >= 0)).astype(jnp.float32)
  label = jnp.maximum(label, 0)
  picked = jnp.take_along_axis(probabilities, label[:, None], axis=1)[:, 0]
  nll = -jnp.log(picked + 1e-20)
  correct = (jnp.argmax(probabilities, axis=1) == label).astype(jnp.float32)
  return jnp.sum(nll * valid), jnp.sum(correct * valid), jnp.sum(valid)



def train_step(state: State, batch: dict, lr: jax.Array, *, model: wrn.WideResNetMTAN, optimizer,
               task: int, axis_name: str = AXIS) -> tuple[State, dict]:
  """One SGD step of task `task` on this device's share of a global batch ({"image": [B, H, W, 3],
  "label": [B], "valid": [B]}) at learning rate `lr`; the loss is the mean over the global batch.
  A non-finite loss, gradient or update skips the step on every device (state unchanged).
  Returns the new state and the batch's {"loss_sum", "correct", "count", "skipped"} (global)."""
  devices = jax.lax.axis_size(axis_name)

  def objective(params):
    probabilities, updated = model.apply({"params": params, "batch_stats": state.batch_stats},
                                         batch["image"], task=task, train=True,
                                         mutable=["batch_stats"])
    nll, correct, count = _sums(probabilities, batch["label"], batch["valid"])
    total = jax.lax.psum(count, axis_name)
    mean = jax.lax.psum(nll, axis_name) / total
    return mean / devices, (mean, correct, count, updated["batch_stats"])

  grads, (mean, correct, count, batch_stats) = jax.grad(objective, has_aux=True)(state.params)
  grads = jax.lax.psum(grads, axis_name)
  opt_state = state.opt_state
  opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
  updates, opt_state = optimizer.update(grads, opt_state, state.params,
                                        used=wrn.used_by_task(state.params, task))
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(mean) & parallel.all_finite((grads, params, batch_stats))
  finite = jax.lax.pmin(finite.astype(jnp.int32), axis_name) > 0
  new_state = state.replace(step=state.step + 1, **parallel.keep_where(
      finite, {"params": params, "batch_stats": batch_stats, "opt_state": opt_state},
      {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state}))
  return new_state, {"loss_sum": mean * jax.lax.psum(count, axis_name),
                     "correct": jax.lax.psum(correct, axis_name),
                     "count": jax.lax.psum(count, axis_name), "skipped": ~finite}


def statistics_step(state: State, batch: dict, *, model: wrn.WideResNetMTAN, task: int,
                    axis_name: str = AXIS) -> State:
  """A training-mode forward pass of task `task` that only updates the BatchNorm running
  statistics (global batch): the settling the reference's evaluation script's comment describes."""
  del axis_name  # the model's BatchNorm averages over the device axis itself
  _, updated = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                           batch["image"], task=task, train=True, mutable=["batch_stats"])
  return state.replace(batch_stats=updated["batch_stats"])



def eval_step(state: State, batch: dict, *, model: wrn.WideResNetMTAN, task: int,
              axis_name: str = AXIS) -> dict:
  """Task `task`'s predictions with the running statistics: the batch's global sums, and every
  device's examples ("predicted", "index", "valid": [global devices, B], gathered so that each
  process has all of them)."""
  probabilities = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                              batch["image"], task=task)
  nll, correct, count = _sums(probabilities, batch["label"], batch["valid"])
  gather = functools.partial(jax.lax.all_gather, axis_name=axis_name)
  return {"loss_sum": jax.lax.psum(nll, axis_name), "correct": jax.lax.psum(correct, axis_name),
          "count": jax.lax.psum(count, axis_name),
          "predicted": gather(jnp.argmax(probabilities, axis=1).astype(jnp.int32)),
          "index": gather(batch["index"]), "valid": gather(batch["valid"])}


@dataclasses.dataclass
class Steps:
  """The pmapped steps over `place`, compiled once per task (and batch shape) on first use."""

  model: wrn.WideResNetMTAN
  optimizer: Any
  place: parallel.Place
  advice: str = ""

  def __post_init__(self):
    self._train, self._eval, self._statistics = {}, {}, {}

  def fresh_optimizer(self, replicated: State, keep_seen: bool = False) -> State:
    """`replicated` with a new SGD state (no momentum), as the reference's new optimizers; with
    `keep_seen`, parameters that had a gradient keep it (a new SGD over a model whose `.grad`s
    are set: the drop of the first task), else none has (a model loaded from its weights)."""
    fresh = self.place.pmap(self.optimizer.init)(replicated.params)
    if keep_seen:
      fresh = optim.with_seen_parameters(fresh, optim.seen_parameters(replicated.opt_state))
    return replicated.replace(opt_state=fresh)

  def statistics(self, task: int):
    if task not in self._statistics:
      self._statistics[task] = self.place.pmap(functools.partial(
          statistics_step, model=self.model, task=task))
    return self._statistics[task]

  def train(self, task: int) -> parallel.MemoryCheckedStep:
    if task not in self._train:
      self._train[task] = self.place.checked(functools.partial(
          train_step, model=self.model, optimizer=self.optimizer, task=task),
          f"train step of task {task}", self.advice, donate_argnums=0)
    return self._train[task]

  def eval(self, task: int) -> parallel.MemoryCheckedStep:
    if task not in self._eval:
      self._eval[task] = self.place.checked(
          functools.partial(eval_step, model=self.model, task=task),
          f"evaluation step of task {task}", self.advice)
    return self._eval[task]


def _first(x) -> float:
  """A replicated scalar, read from one device's shard."""
  return float(parallel.unreplicate(x))


def _step_inputs(batch: dict) -> dict:
  """What a training step reads of a batch."""
  return {n: batch[n] for n in ("image", "label", "valid")}


def _batches(task_data: data_lib.TaskData, split: str, config: DecathlonConfig,
             place: parallel.Place, *, train: bool, epoch: int = 0, start_step: int = 0,
             batch_size: int | None = None):
  """`data_lib.batches` for this place's devices and process, training batches as the config
  says (the last partial one kept or not)."""
  return data_lib.batches(task_data, split, batch_size or config.batch_size, len(place.devices),
                          train=train, seed=config.seed, epoch=epoch, start_step=start_step,
                          keep_partial=config.keep_partial_batch,
                          process_index=jax.process_index(), process_count=jax.process_count())


@dataclasses.dataclass
class TaskPass:
  """Training one task on one split in one epoch: the sums so far and the steps done."""

  loss: float = 0.0
  correct: float = 0.0
  count: float = 0.0
  steps: int = 0

  def add(self, out: dict) -> None:
    self.loss += _first(out["loss_sum"])
    self.correct += _first(out["correct"])
    self.count += _first(out["count"])
    self.steps += 1


class SkipCounts:
  """Consecutive and total skipped steps, on the host, for `harness.SkipCounter`."""

  def __init__(self):
    self.counts = {"total": 0, "consecutive": 0, "longest": 0, "by_task": {}}

  def add(self, skipped: bool, task: str, loss_finite: bool) -> dict:
    c = self.counts
    c["total"] += skipped
    c["consecutive"] = (c["consecutive"] + 1) * skipped
    c["longest"] = max(c["longest"], c["consecutive"])
    if skipped and not loss_finite:
      c["by_task"][task] = c["by_task"].get(task, 0) + 1
    return c


def train_epoch_of_task(replicated, steps: Steps, task_data: data_lib.TaskData, k: int,
                        splits: tuple[str, ...], config: DecathlonConfig, epoch: int, lr: float,
                        stop: harness.StopOnSignal | None = None, start: tuple[int, int] = (0, 0),
                        sums: TaskPass | None = None, skips: harness.SkipCounter | None = None):
  """Trains task `k` on `splits` of its data from (split index, step) `start`; returns the state,
  {"loss", "accuracy"} and None, or, when `stop` caught a signal, the state, the sums so far and
  the (split index, step) to continue from."""
  lr_array = steps.place.replicate(np.float32(lr))
  sums = sums or TaskPass()
  counts = SkipCounts()
  skips = skips or harness.SkipCounter(f"epoch {epoch}", config.max_skipped_steps, None)
  for s in range(start[0], len(splits)):
    step = start[1] if s == start[0] else 0
    for batch in _batches(task_data, splits[s], config, steps.place, train=True, epoch=epoch,
                          start_step=step):
      replicated, out = steps.train(k)(replicated, _step_inputs(batch), lr_array)
      sums.add(out)
      step += 1
      skipped = bool(parallel.unreplicate(out["skipped"]))
      skips.update(counts.add(skipped, task_data.task.name,
                              np.isfinite(_first(out["loss_sum"]))))
      if stop is not None and stop.signal_number is not None:
        return replicated, sums, (s, step)
  if counts.counts["total"]:
    steps.place.say(f"epoch {epoch}: {task_data.task.name}: skipped {skips.describe()}")
  metrics = {"loss": sums.loss / max(sums.count, 1), "accuracy": sums.correct / max(sums.count, 1)}
  if counts.counts["total"]:
    metrics["skipped_steps"] = counts.counts["total"]
  return replicated, metrics, None


def evaluate(replicated, steps: Steps, task_data: data_lib.TaskData, k: int, split: str,
             config: DecathlonConfig) -> tuple[dict[str, float], dict[int, int]]:
  """({"loss", "accuracy"} of task `k` on `split`'s labelled examples (none in the release's
  test split: then {}), {example index: predicted class} of every example)."""
  devices = steps.place.global_count
  batch_size = -(-config.batch_size // devices) * devices
  totals = TaskPass()
  predicted = {}
  for batch in _batches(task_data, split, config, steps.place, train=False,
                        batch_size=batch_size):
    out = steps.eval(k)(replicated, batch)
    totals.add(out)
    gathered = parallel.unreplicate({n: out[n] for n in ("predicted", "index", "valid")})
    valid = gathered["valid"].reshape(-1)
    predicted.update(zip(gathered["index"].reshape(-1)[valid].tolist(),
                         gathered["predicted"].reshape(-1)[valid].tolist()))
  metrics = ({"loss": totals.loss / totals.count, "accuracy": totals.correct / totals.count}
             if totals.count else {})
  return metrics, predicted


def settle(replicated, steps: Steps, task_data: data_lib.TaskData, k: int,
           config: DecathlonConfig):
  """One more epoch of task `k` on its train and val sets before its test predictions, as
  `config.settle` says (see `DecathlonConfig.settle`), with the optimizer state `replicated`
  holds (the evaluation script's one SGD carries over from task to task); returns the state."""
  if config.settle == "train":
    replicated, _, _ = train_epoch_of_task(replicated, steps, task_data, k, ("train", "val"),
                                           config, config.epochs, settle_learning_rate(config, k))
  elif config.settle == "statistics":
    for split in ("train", "val"):
      for batch in _batches(task_data, split, config, steps.place, train=True,
                            epoch=config.epochs):
        replicated = steps.statistics(k)(replicated, {"image": batch["image"]})
  return replicated


def is_release(tasks) -> bool:
  """Whether `tasks` are the ten datasets of the release (their score means something)."""
  return ([t.task.name for t in tasks] == list(decathlon.NAMES)
          and all(t.names is not None for t in tasks))


def latest_validation(records, latest: dict[str, float] | None = None) -> dict[str, float]:
  """{task: its validation accuracy in the last of `records` that has one}, over `latest`."""
  latest = dict(latest or {})
  for record in records:
    latest.update({name: v["accuracy"] for name, v in record.get("validation", {}).items()})
  return latest


def validation_score(latest: dict[str, float], names, release: bool) -> float | None:
  """The Decathlon score of the tasks' latest validation accuracies, for the release's ten
  datasets once each has one (the first task keeps its accuracy from before it was dropped);
  None otherwise."""
  if not release or any(name not in latest for name in names):
    return None
  return score_lib.decathlon_score({name: latest[name] for name in names})[0]



def check_batches(config: DecathlonConfig, tasks, place: parallel.Place) -> None:
  """Refuses a batch that cannot be split over the devices, and (without the partial batch) a
  task whose training split is smaller than one batch: it would never be trained."""
  if config.batch_size % place.global_count:
    raise RunError(f"--batch_size: expected a multiple of the {place.global_count} devices, "
                   f"found {config.batch_size}")
  least = place.global_count if config.keep_partial_batch else config.batch_size
  small = [f"{t.task.name} ({len(t.splits['train'])})" for t in tasks
           if len(t.splits["train"]) < least]
  if small:
    raise RunError(f"--batch_size {config.batch_size}: the training split of {', '.join(small)} "
                   f"examples is smaller than "
                   + ("the device count" if config.keep_partial_batch else "one batch"))


def _describe(position: dict[str, Any]) -> str:
  """Where a checkpoint stands, from its JSON record."""
  if "task" in position:
    return (f"checkpoint in epoch {position['epoch']} at task {position['task']}, step "
            f"{position['step']} of its split {position['split']}")
  return f"checkpoint after epoch {position['epoch'] - 1}"


def run(config: DecathlonConfig, tasks: tuple[data_lib.TaskData, ...]) -> dict[str, Any]:
  """Trains `config.epochs` epochs over `tasks` (the ten, in the Decathlon's order), evaluating
  each trained task on its validation split after every epoch (mode "eval"), checkpointing every
  epoch (and where a signal stops it); then predicts every task's test split after its settling
  epoch. Returns the summary (also summary.json, see `_test`); with the release (tasks with file
  names), the predictions go into test_predictions.json and, given `config.annotations_dir`, the
  challenge server's results.json."""
  config.validate()
  harness.Session.check_start(config)
  with harness.Session(config) as session:
    place = parallel.Place.of(config.devices)
    check_batches(config, tasks, place)
    model = registry.build("wrn_mtan", classes=tuple(t.task.classes for t in tasks),
                           depth=config.depth, widen_factor=config.widen_factor,
                           bn_axis_name=AXIS)
    optimizer = make_optimizer(config.weight_decay)
    fresh = lambda: create_state(model, optimizer, tasks[0].image_size, config.seed)  # noqa: E731
    checkpoints = session.checkpointer()
    first_task_state = session.checkpointer(FIRST_TASK_CHECKPOINT, keep=1)
    state, position = session.restore(checkpoints, fresh, _describe)
    steps = Steps(model, optimizer, place, parallel.memory_advice(
        "batch_size", config.batch_size, place.global_count))
    log = session.log(int(state.epoch))
    replicated = _Epochs(config, tasks, steps, session, checkpoints, first_task_state, log).run(
        place.replicate(state), position)
    checkpoints.wait()
    first_task_state.wait()
    first = None
    if first_task_state.latest() is not None:
      first = place.replicate(first_task_state.restore_intact(
          jax.eval_shape(fresh), session.say, check_record=session.check_record,
          move_damaged=session.is_main)[1])
    with parallel.out_of_memory_explained(lambda: ("the test predictions", steps.advice)):
      summary, predictions = _test(replicated, first, steps, tasks, config)
    if predictions and session.is_main:
      results_lib.save_predictions(session.workdir, predictions,
                                   {t.task.name: t.class_folders for t in tasks})
      summary["test_predictions"] = results_lib.PREDICTIONS
    session.write_summary(summary)
    if predictions and config.annotations_dir and session.is_main:
      try:
        count = results_lib.write_run_results(session.workdir, config.annotations_dir)
        session.say(f"The challenge server's results file: {session.workdir / results_lib.RESULTS}"
                    f" ({count} test images)")
      except results_lib.ResultsError as error:  # the run is complete; the file can be made later
        session.say(f"warning: no {results_lib.RESULTS}: {error}; make it with python -m "
                    f"mtan_jax.decathlon.results {session.workdir} --annotations_dir=DIR")
  return summary


@dataclasses.dataclass
class _Epochs:
  """The epoch loop of one Decathlon run and what it works with."""

  config: DecathlonConfig
  tasks: tuple
  steps: Steps
  session: harness.Session
  checkpoints: Any
  first_task_state: Any
  log: runlog.RunLog

  def run(self, replicated, position: dict[str, Any]):
    """Every epoch from the state's on: each task in turn, its validation (mode "eval"), the
    log and the checkpoint; a signal saves the exact position (epoch, task, split, step and the
    sums so far) and stops. Returns the final (replicated) state."""
    config, tasks = self.config, self.tasks
    start = int(parallel.unreplicate(replicated.epoch))
    latest = latest_validation(runlog.read_records(self.session.workdir))  # the epochs kept
    splits = ("train", "val") if config.mode == "all" else ("train",)
    where = {"what": "train step", "advice": self.steps.advice}
    blame = lambda: (f"the {where['what']}", where["advice"])  # noqa: E731
    with harness.StopOnSignal() as stop, parallel.out_of_memory_explained(blame):
      for epoch in range(start, config.epochs):
        began = time.perf_counter()
        mid_epoch = "task" in position
        if config.drop_first_task_epoch and epoch == config.drop_first_task_epoch and not mid_epoch:
          replicated = self.steps.fresh_optimizer(replicated, keep_seen=True)  # a new SGD
        lr = learning_rate(config, epoch)
        record = position.get("record") or {"epoch": epoch, "lr": lr, "train": {},
                                            "validation": {}}
        first = position.get("task", first_task(config, epoch))
        for k in range(first, len(tasks)):
          name = tasks[k].task.name
          where["what"] = f"train step of {name} in epoch {epoch}"
          resume = (position["split"], position["step"]) if k == first and mid_epoch else (0, 0)
          sums = TaskPass(**position["sums"]) if k == first and mid_epoch else None
          replicated, result, stopped_at = train_epoch_of_task(
              replicated, self.steps, tasks[k], k, splits, config, epoch, lr, stop, resume, sums,
              harness.SkipCounter(f"epoch {epoch}", config.max_skipped_steps,
                                  _describe(position) if position else None))
          if stopped_at is not None:
            self.session.interrupt(
                stop, self.checkpoints, replicated,
                {"epoch": epoch, "task": k, "split": stopped_at[0], "step": stopped_at[1],
                 "sums": dataclasses.asdict(result), "record": record},
                f"in epoch {epoch} in task {name} after step {stopped_at[1]} of its "
                f"{splits[stopped_at[0]]} split")
          record["train"][name] = result
          if config.mode == "eval":
            where["what"] = f"evaluation step of {name} in epoch {epoch}"
            record["validation"][name] = evaluate(replicated, self.steps, tasks[k], k, "val",
                                                  config)[0]
        position = {}
        latest = latest_validation([record], latest)
        score = validation_score(latest, [t.task.name for t in tasks], is_release(tasks))
        if score is not None:
          record["validation_score"] = score
        changes = self.session.pop_changes()
        if changes:
          record["config_changes"] = changes
        replicated = replicated.replace(epoch=replicated.epoch + 1)
        record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - began
        self.log.epoch(record)
        self.session.save(self.checkpoints, replicated, {"epoch": epoch + 1})
        if epoch + 1 == config.drop_first_task_epoch:  # the first task's final state
          # Two managers' asynchronous saves at once would share orbax's multi-host barriers:
          # this one (once a run) is written alone.
          self.checkpoints.wait()
          self.session.save(self.first_task_state, replicated, {"epoch": epoch + 1})
          self.first_task_state.wait()
        if config.progress:
          self.session.say(_format_epoch(record))
        if stop.signal_number is not None and epoch + 1 < config.epochs:
          self.session.interrupt(stop, self.checkpoints, replicated, None, f"after epoch {epoch}")
    return replicated


def _test(replicated, first, steps: Steps, tasks, config: DecathlonConfig
          ) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
  """The end of a run, as the reference's evaluation script: every task on its test split after its
  settling epoch, in task order on one evolving state with one SGD for them all (its momentum
  carried from task to task); the first task from its own final state (`first`, the state when it
  was dropped) with an SGD of its own when it was dropped. Each SGD starts on a model loaded from
  its weights: no parameter has had a gradient. Before that (mode "eval"), every task on its
  validation split with the trained state.

  Returns the summary {"test": {task: {"loss", "accuracy"}} (tasks with test labels: the stand-in),
  "validation": the same on the validation splits (mode "eval"), "accuracy_split": which of the two
  "mean_accuracy" and, for the release, "score" and "score_by_task" are of (test when every task
  has test labels)} and the test predictions {dataset: {file: class index}} of the release's tasks.
  """
  test, validation, predictions = {}, {}, {}
  if config.mode == "eval":
    for k, t in enumerate(tasks):
      state = first if k == 0 and first is not None else replicated
      validation[t.task.name] = evaluate(state, steps, t, k, "val", config)[0]
  replicated = steps.fresh_optimizer(replicated)
  for k, t in enumerate(tasks):
    if k == 0 and first is not None:
      settled = settle(steps.fresh_optimizer(first), steps, t, 0, config)
    else:
      settled = replicated = settle(replicated, steps, t, k, config)
    metrics, predicted = evaluate(settled, steps, t, k, "test", config)
    if metrics:
      test[t.task.name] = metrics
    if t.names is not None:
      names = t.names["test"]
      predictions[t.task.name] = {names[i]: c for i, c in sorted(predicted.items())}
  summary: dict[str, Any] = {"test": test, "validation": validation}
  split = "test" if len(test) == len(tasks) else "validation"
  chosen = test if split == "test" else validation
  if len(chosen) == len(tasks):
    summary["accuracy_split"] = split
    summary["mean_accuracy"] = float(np.mean([v["accuracy"] for v in chosen.values()]))
    if is_release(tasks):
      total, shares = score_lib.decathlon_score({n: v["accuracy"] for n, v in chosen.items()})
      summary.update(score=total, score_by_task=shares)
  return summary, predictions


def _format_epoch(record: dict[str, Any]) -> str:
  parts = [f"epoch {record['epoch']:4d}  lr {record['lr']:.4g}  {record['seconds']:.0f} s"
           + (f"  validation score {record['validation_score']:.0f}"
              if "validation_score" in record else "")]
  for name, train in record["train"].items():
    val = record["validation"].get(name)
    parts.append(f"  {name:14s} train loss {train['loss']:.3f} acc {train['accuracy']:.3f}"
                 + (f" | val loss {val['loss']:.3f} acc {val['accuracy']:.3f}" if val else ""))
  return "\n".join(parts)
