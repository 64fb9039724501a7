"""Training and evaluating the Decathlon MTAN: each epoch trains every task in turn on its own
training set, one task per step (the reference's model_wrn_mtan.py), under `jax.pmap` with the
global batch split over the devices and BatchNorm statistics over the global batch.

Pure per-device steps (`train_step`, `eval_step`) compiled once per task (the task picks the
branch and the head); the loop (`run`) owns the run folder, checkpoints and metrics.jsonl as the
dense tasks' loop does. Tasks not in a step get zero gradients: as in the reference (PyTorch of
its time kept zero gradients once a parameter had one), SGD's weight decay and momentum still move
them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtan_jax import checkpoint as checkpoint_lib
from mtan_jax import decathlon
from mtan_jax import rundir
from mtan_jax import runlog
from mtan_jax import schema
from mtan_jax import train_step as step_lib
from mtan_jax.decathlon import data as data_lib
from mtan_jax.decathlon import results as results_lib
from mtan_jax.decathlon import score as score_lib
from mtan_jax.decathlon.config import DecathlonConfig
from mtan_jax.models import wrn

AXIS = step_lib.AXIS
FIRST_TASK_CHECKPOINT = "checkpoints_first_task"  # the state when the first task was dropped


class DecathlonRunError(RuntimeError):
  """A run that cannot go on as asked (a refused resume, a run that stopped on bad steps)."""


@flax.struct.dataclass
class State:
  """The train state: steps taken, epochs completed, parameters, BatchNorm statistics, SGD's."""

  step: jax.Array
  epoch: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def make_optimizer(weight_decay: float) -> optax.GradientTransformation:
  """PyTorch's SGD(momentum 0.9, nesterov, weight_decay): the decay added to the gradient before
  the momentum; the learning rate a hyperparameter set each epoch (`with_learning_rate`)."""
  def sgd(learning_rate):
    return optax.chain(optax.add_decayed_weights(weight_decay),
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
  updates, opt_state = optimizer.update(grads, opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(mean) & step_lib.all_finite((grads, params, batch_stats))
  finite = jax.lax.pmin(finite.astype(jnp.int32), axis_name) > 0
  new_state = state.replace(step=state.step + 1, **step_lib.keep_where(
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
  """Task `task`'s predictions with the running statistics: the batch's global sums and each
  example's predicted class ("predicted": [B])."""
  probabilities = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                              batch["image"], task=task)
  nll, correct, count = _sums(probabilities, batch["label"], batch["valid"])
  return {"loss_sum": jax.lax.psum(nll, axis_name), "correct": jax.lax.psum(correct, axis_name),
          "count": jax.lax.psum(count, axis_name),
          "predicted": jnp.argmax(probabilities, axis=1).astype(jnp.int32)}


@dataclasses.dataclass
class Steps:
  """The pmapped steps, compiled once per task on first use."""

  model: wrn.WideResNetMTAN
  optimizer: Any
  devices: list

  def __post_init__(self):
    self._train, self._eval, self._statistics = {}, {}, {}

  def fresh_optimizer(self, replicated: State) -> State:
    """`replicated` with a new SGD state (no momentum), as the reference's new optimizers."""
    return replicated.replace(opt_state=jax.pmap(self.optimizer.init, devices=self.devices)(
        replicated.params))

  def statistics(self, task: int):
    if task not in self._statistics:
      self._statistics[task] = jax.pmap(functools.partial(
          statistics_step, model=self.model, task=task), axis_name=AXIS, devices=self.devices)
    return self._statistics[task]

  def train(self, task: int):
    if task not in self._train:
      self._train[task] = jax.pmap(functools.partial(
          train_step, model=self.model, optimizer=self.optimizer, task=task),
          axis_name=AXIS, devices=self.devices, donate_argnums=0)
    return self._train[task]

  def eval(self, task: int):
    if task not in self._eval:
      self._eval[task] = jax.pmap(functools.partial(eval_step, model=self.model, task=task),
                                  axis_name=AXIS, devices=self.devices)
    return self._eval[task]


def _first(x) -> float:
  """A replicated scalar, read from one device's shard."""
  return float(step_lib.unreplicate(x))


def _step_inputs(batch: dict) -> dict:
  """What a step reads of a batch (its "index" stays on the host, for the predictions' files)."""
  return {n: batch[n] for n in ("image", "label", "valid")}


def train_epoch_of_task(replicated, steps: Steps, task_data: data_lib.TaskData, k: int,
                        splits: tuple[str, ...], config: DecathlonConfig, epoch: int, lr: float):
  """Trains task `k` on `splits` of its data; returns the state and {"loss", "accuracy"}."""
  devices = len(steps.devices)
  lr_array = step_lib.replicate(np.float32(lr), steps.devices, steps.devices)
  loss = correct = count = skipped = 0.0
  for split in splits:
    for batch in data_lib.batches(task_data, split, config.batch_size, devices, train=True,
                                  seed=config.seed, epoch=epoch):
      replicated, out = steps.train(k)(replicated, _step_inputs(batch), lr_array)
      loss += _first(out["loss_sum"])
      correct += _first(out["correct"])
      count += _first(out["count"])
      skipped += _first(out["skipped"])
  if skipped:
    raise DecathlonRunError(f"{int(skipped)} step(s) of {task_data.task.name} in epoch {epoch} "
                            f"were not finite (skipped); the last checkpoint is kept")
  return replicated, {"loss": loss / max(count, 1), "accuracy": correct / max(count, 1)}


def evaluate(replicated, steps: Steps, task_data: data_lib.TaskData, k: int, split: str,
             batch_size: int) -> tuple[dict[str, float], dict[int, int]]:
  """({"loss", "accuracy"} of task `k` on `split`'s labelled examples (none in the release's
  test split: then {}), {example index: predicted class} of every example)."""
  devices = len(steps.devices)
  batch_size = -(-batch_size // devices) * devices
  loss = correct = count = 0.0
  predicted = {}
  for batch in data_lib.batches(task_data, split, batch_size, devices, train=False):
    out = steps.eval(k)(replicated, _step_inputs(batch))
    loss += _first(out["loss_sum"])
    correct += _first(out["correct"])
    count += _first(out["count"])
    valid = batch["valid"].reshape(-1)
    predicted.update(zip(batch["index"].reshape(-1)[valid].tolist(),
                         np.asarray(out["predicted"]).reshape(-1)[valid].tolist()))
  metrics = {"loss": loss / count, "accuracy": correct / count} if count else {}
  return metrics, predicted


def settle(replicated, steps: Steps, task_data: data_lib.TaskData, k: int,
           config: DecathlonConfig):
  """One more epoch of task `k` on its train and val sets before its test predictions, as
  `config.settle` says (see `DecathlonConfig.settle`); returns the state."""
  if config.settle == "train":
    replicated = steps.fresh_optimizer(replicated)  # the script starts a new SGD
    replicated, _ = train_epoch_of_task(replicated, steps, task_data, k, ("train", "val"),
                                        config, config.epochs, settle_learning_rate(config, k))
  elif config.settle == "statistics":
    for split in ("train", "val"):
      for batch in data_lib.batches(task_data, split, config.batch_size, len(steps.devices),
                                    train=True, seed=config.seed, epoch=config.epochs):
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


def _claim_run_folder(config: DecathlonConfig) -> None:
  """The run folder policy of the dense runs (`rundir.claim`); config.json written by a new run."""
  workdir = pathlib.Path(config.workdir)
  rundir.claim(workdir, resume=config.resume, overwrite=config.overwrite, error=DecathlonRunError,
               differences=lambda saved: schema.differences(saved, config, "config.json"))
  if not (workdir / "config.json").exists():
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")


def run(config: DecathlonConfig, tasks: tuple[data_lib.TaskData, ...], say=print) -> dict[str, Any]:
  """Trains `config.epochs` epochs over `tasks` (the ten, in the Decathlon's order), evaluating
  each trained task on its validation split after every epoch (mode "eval"), checkpointing every
  epoch; then predicts every task's test split after its settling epoch. Returns the summary
  (also summary.json, see `_test`); with the release (tasks with file names), the predictions go
  into test_predictions.json and, given `config.annotations_dir`, the challenge server's
  results.json."""
  config.validate()
  problem = rundir.start_problem(config.workdir, config.resume, config.overwrite)
  if problem:  # before creating the folder
    raise DecathlonRunError(problem)
  workdir = pathlib.Path(config.workdir)
  devices = jax.local_devices()[:config.devices or None]
  if config.batch_size % len(devices):
    raise DecathlonRunError(f"--batch_size: expected a multiple of the {len(devices)} devices, "
                            f"found {config.batch_size}")
  small = [f"{t.task.name} ({len(t.splits['train'])})" for t in tasks
           if len(t.splits["train"]) < config.batch_size]
  if small:  # training drops partial batches: such a task would never be trained
    raise DecathlonRunError(f"--batch_size {config.batch_size}: the training split of "
                            f"{', '.join(small)} examples is smaller than one batch")
  classes = tuple(t.task.classes for t in tasks)
  model = wrn.WideResNetMTAN(classes, config.depth, config.widen_factor, bn_axis_name=AXIS)
  optimizer = make_optimizer(config.weight_decay)
  size = tasks[0].image_size
  with rundir.RunFolderLock(workdir):
    _claim_run_folder(config)
    checkpoints = checkpoint_lib.Checkpointer(workdir / "checkpoints", config.keep_checkpoints)
    first_task_state = checkpoint_lib.Checkpointer(workdir / FIRST_TASK_CHECKPOINT, 1)
    try:
      state = create_state(model, optimizer, size, config.seed)
      restored = checkpoints.restore_intact(state, say=say) if config.resume else None
      if restored is not None:
        state = restored[1]
      start = int(state.epoch)
      log = runlog.RunLog(workdir, first_epoch=start)
      latest = latest_validation(runlog.read_records(workdir))  # the epochs kept, on a resume
      steps = Steps(model, optimizer, devices)
      replicated = step_lib.replicate(state, devices, devices)
      splits = ("train", "val") if config.mode == "all" else ("train",)
      for epoch in range(start, config.epochs):
        began = time.perf_counter()
        if config.drop_first_task_epoch and epoch == config.drop_first_task_epoch:
          replicated = steps.fresh_optimizer(replicated)  # the reference's new SGD at the drop
        lr = learning_rate(config, epoch)
        record = {"epoch": epoch, "lr": lr, "train": {}, "validation": {}}
        for k in range(first_task(config, epoch), len(tasks)):
          name = tasks[k].task.name
          replicated, record["train"][name] = train_epoch_of_task(
              replicated, steps, tasks[k], k, splits, config, epoch, lr)
          if config.mode == "eval":
            record["validation"][name] = evaluate(replicated, steps, tasks[k], k, "val",
                                                  config.batch_size)[0]
        latest = latest_validation([record], latest)
        score = validation_score(latest, [t.task.name for t in tasks], is_release(tasks))
        if score is not None:
          record["validation_score"] = score
        replicated = replicated.replace(epoch=replicated.epoch + 1)
        record["seconds"] = time.perf_counter() - began
        log.epoch(record)
        host = step_lib.unreplicate(replicated)
        checkpoints.save(int(host.step), host, {"epoch": epoch + 1})
        if epoch + 1 == config.drop_first_task_epoch:  # the first task's final state
          first_task_state.save(int(host.step), host, {"epoch": epoch + 1})
        if config.progress:
          say(_format_epoch(record))
      log.close()
      checkpoints.wait()
      first_task_state.wait()
      first = None
      if first_task_state.latest() is not None:
        first = step_lib.replicate(first_task_state.restore_intact(state, say=say)[1], devices,
                                   devices)
    finally:
      checkpoints.close()
      first_task_state.close()
    summary, predictions = _test(replicated, first, steps, tasks, config)
    if predictions:
      results_lib.save_predictions(workdir, predictions,
                                   {t.task.name: t.class_folders for t in tasks})
      summary["test_predictions"] = results_lib.PREDICTIONS
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if predictions and config.annotations_dir:
      try:
        count = results_lib.write_run_results(workdir, config.annotations_dir)
        say(f"The challenge server's results file: {workdir / results_lib.RESULTS} ({count} "
            f"test images)")
      except results_lib.ResultsError as error:  # the run is complete; the file can be made later
        say(f"warning: no {results_lib.RESULTS}: {error}; make it with python -m "
            f"mtan_jax.decathlon.results {workdir} --annotations_dir=DIR")
  return summary


def _test(replicated, first, steps: Steps, tasks, config: DecathlonConfig
          ) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
  """The end of a run, as the reference's evaluation script: every task on its test split after its
  settling epoch, in task order on one evolving state; the first task from its own final state
  (`first`, the state when it was dropped) when it was dropped. Before that (mode "eval"), every
  task on its validation split with the trained state.

  Returns the summary {"test": {task: {"loss", "accuracy"}} (tasks with test labels: the stand-in),
  "validation": the same on the validation splits (mode "eval"), "accuracy_split": which of the two
  "mean_accuracy" and, for the release, "score" and "score_by_task" are of (test when every task
  has test labels)} and the test predictions {dataset: {file: class index}} of the release's tasks.
  """
  test, validation, predictions = {}, {}, {}
  if config.mode == "eval":
    for k, t in enumerate(tasks):
      state = first if k == 0 and first is not None else replicated
      validation[t.task.name] = evaluate(state, steps, t, k, "val", config.batch_size)[0]
  for k, t in enumerate(tasks):
    if k == 0 and first is not None:
      settled = settle(first, steps, t, 0, config)
    else:
      settled = replicated = settle(replicated, steps, t, k, config)
    metrics, predicted = evaluate(settled, steps, t, k, "test", config.batch_size)
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
