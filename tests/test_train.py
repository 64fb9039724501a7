"""The run loop: records, the run folder, the experiment script, faults, memory."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from mtan_jax import parallel
from mtan_jax import tasks as tasks_lib
from mtan_jax.dense import train
from mtan_jax.dense import train_step as step_lib
from mtan_jax.dense.config import TrainConfig
from mtan_jax.data import DataError
from mtan_jax.data import synthetic
from mtan_jax.data.pipeline import DataConfig

# Every test here trains (steps, runs, processes): the slow tier (`pytest -m "not slow"` skips it).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
NYU = tasks_lib.dataset_tasks("nyuv2")
XLA_CACHE = str(ROOT / ".pytest_cache" / "xla")


def synthetic_batch(count=4, size=(32, 32)):
  samples = [synthetic.render_indoor(0, i, *size) for i in range(count)]
  return {"image": np.stack([s["image"] for s in samples]),
          "segmentation": np.stack([s["label"] for s in samples]).astype(np.int32),
          "depth": np.stack([s["depth"] for s in samples]),
          "normal": np.stack([s["normal"] for s in samples])}


def shard(batch, devices):
  return {k: v.reshape(devices, v.shape[0] // devices, *v.shape[1:]) for k, v in batch.items()}


def tiny_config(workdir, tfds_dir, **overrides):
  values = dict(model="split_standard", weighting="dwa", epochs=3, batch_size=4, lr=1e-3, devices=2,
                lr_halve_epoch=2, width_mult=1 / 16, workdir=str(workdir), progress=False,
                workers=2, data=DataConfig(tfds_dir=str(tfds_dir), resolution=(32, 64),
                                           synthetic_size=(12, 4), augment=True))
  values.update(overrides)
  return TrainConfig(**values)


def tiny_flags(workdir, tfds_dir):
  """`tiny_config` as flags of the experiment scripts."""
  return ["--weighting=dwa", "--model=split_standard", "--epochs=3", "--resolution=32x64",
          "--synthetic_size=12,4", "--batch_size=4", "--width_mult=0.0625", "--lr_halve_epoch=2",
          "--augment", f"--workdir={workdir}", f"--tfds_dir={tfds_dir}", "--progress=false",
          f"--compilation_cache={XLA_CACHE}", "--workers=2", "--devices=2"]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
  """`tiny_config` trained for 3 epochs without interruption: (result, tfds folder)."""
  root = tmp_path_factory.mktemp("whole")
  return train.run(tiny_config(root / "whole", root / "tfds")), root / "tfds"


def test_a_run_writes_its_records(whole_run):
  whole, tfds_dir = whole_run
  tmp_path = tfds_dir.parent
  records = [json.loads(line) for line in
             (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [0, 1, 2]
  assert records[2]["weights"] != {"segmentation": 1.0, "depth": 1.0, "normal": 1.0}  # DWA on
  assert [r["lr"] for r in records] == [1e-3, 1e-3, 5e-4]  # halved after epoch 2
  for record in records:
    assert set(record["test"]) == {"segmentation", "depth", "normal"}
    assert {"loss", "miou", "pixel_accuracy"} <= set(record["test"]["segmentation"])
  assert whole["records"] == records
  summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
  assert summary["last_epochs"] == 3
  assert summary["test"]["depth"]["abs_error"] == pytest.approx(
      np.mean([r["test"]["depth"]["abs_error"] for r in records]))
  assert list((tmp_path / "whole" / "tensorboard").glob("events.out.tfevents.*"))
  assert json.loads((tmp_path / "whole" / "config.json").read_text())["weighting"] == "dwa"


def test_a_run_folder_is_not_overwritten_and_mismatched_resumes_are_refused(tmp_path):
  tfds_dir = tmp_path / "tfds"
  train.run(tiny_config(tmp_path / "run", tfds_dir, epochs=1))
  with pytest.raises(train.RunError, match="--resume"):
    train.run(tiny_config(tmp_path / "run", tfds_dir, epochs=2))
  with pytest.raises(train.RunError) as error:
    train.run(tiny_config(tmp_path / "run", tfds_dir, epochs=2, resume=True, model="mtan",
                          weighting="uncertainty"))
  assert "model: config.json 'split_standard', now 'mtan'" in str(error.value)
  assert "weighting: config.json 'dwa', now 'uncertainty'" in str(error.value)
  # Without config.json the checkpoint's own record of its config refuses it (nothing moved aside).
  config_json = (tmp_path / "run" / "config.json").read_text()
  (tmp_path / "run" / "config.json").unlink()
  with pytest.raises(train.RunError) as error:
    train.run(tiny_config(tmp_path / "run", tfds_dir, epochs=2, resume=True, model="mtan"))
  assert "model: checkpoint 'split_standard', now 'mtan'" in str(error.value)
  assert not (tmp_path / "run" / "checkpoints_damaged").exists()
  (tmp_path / "run" / "config.json").write_text(config_json)
  (tmp_path / "run" / "notes.txt").write_text("mine")
  with pytest.raises(train.RunError, match="exclude each other"):
    train.run(tiny_config(tmp_path / "run", tfds_dir, resume=True, overwrite=True))
  train.run(tiny_config(tmp_path / "run", tfds_dir, epochs=1, overwrite=True, weighting="equal"))
  records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  assert len(records) == 1 and json.loads(records[0])["weights"]["depth"] == 1.0
  assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # only the run's own files go


def test_the_experiment_script_end_to_end(tmp_path):
  # The run of `tiny_config` (compiled programs shared through the persistent cache), from the CLI.
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "nyuv2.py"), *tiny_flags(workdir, tmp_path / "tfds")],
      env={**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest"},  # the same programs as here
      capture_output=True, text=True, cwd=tmp_path, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith("Training on the built-in synthetic scenes")
  assert any(line.startswith("Mean of the last 3 epochs") for line in lines)
  assert lines[-1] == f"Curves: {workdir / 'curves.png'}" and (workdir / "curves.png").is_file()
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert len(records) == 3 and records[2]["weights"]["depth"] != 1.0
  # Checkpoints are named by optimizer step: 3 steps per epoch.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
      "3", "6", "9"]
  bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "nyuv2.py"), "--model=vgg"],
                       capture_output=True, text=True, cwd=tmp_path)
  assert bad.returncode != 0 and "invalid choice: 'vgg'" in bad.stderr


def test_a_run_stops_after_consecutive_non_finite_steps_keeping_its_last_checkpoint(
    tmp_path, monkeypatch):
  from mtan_jax.checkpoint import Checkpointer
  from mtan_jax.data import pipeline
  tfds_dir = tmp_path / "tfds"
  train.run(tiny_config(tmp_path / "run", tfds_dir, epochs=1))
  clean_getitem = pipeline.TaskSource.__getitem__

  def poisoned(self, i):
    example = clean_getitem(self, i)
    example["depth"] = example["depth"].copy()
    example["depth"][0, 0, 0] = np.nan
    return example

  monkeypatch.setattr(pipeline.TaskSource, "__getitem__", poisoned)
  with pytest.raises(train.RunError) as error:
    train.run(tiny_config(tmp_path / "run", tfds_dir, epochs=2, resume=True,
                          max_skipped_steps=2))
  message = str(error.value)
  assert "2 consecutive training steps of epoch 1" in message
  # Counted on the device, read at the end of the epoch (3 steps): all three were skipped.
  assert "depth 3x" in message and "segmentation" not in message
  assert "the checkpoint after epoch 0 stays the latest" in message
  checkpoints = Checkpointer(tmp_path / "run" / "checkpoints")
  assert checkpoints.record(checkpoints.latest())["epoch"] == 1  # epochs completed
  checkpoints.close()


def test_a_kill_during_a_save_then_a_sigterm_mid_epoch_lose_nothing(whole_run, tmp_path):
  """Real processes (tests/fault_worker.py runs the experiment script's main): SIGKILL while the
  checkpoint of epoch 1 is being written; resume; SIGTERM while step 2 of epoch 1 is in flight;
  resume again (in this process). The run ends with the parameters and records of a run never
  interrupted."""
  whole, tfds_dir = whole_run
  workdir = tmp_path / "faulty"

  def start(*args):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fault_worker.py"), *args,
         *tiny_flags(workdir, tfds_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=tmp_path)

  def wait_for_announcement(process):
    """The worker's next 'FAULT_WORKER: ...' line (it blocks there until the parent acts) and
    what it printed before."""
    before = []
    for line in process.stdout:
      if line.startswith("FAULT_WORKER: "):
        return line.removeprefix("FAULT_WORKER: ").strip(), "".join(before)
      before.append(line)
    raise AssertionError(f"the worker ended first: {process.communicate()[1][-3000:]}")

  checkpoints = lambda: sorted(p.name for p in (workdir / "checkpoints").iterdir())  # noqa: E731
  process = start("--hang_on_save=2")  # checkpoint 6, after epoch 1
  partial = pathlib.Path(wait_for_announcement(process)[0].removeprefix("committing "))
  assert partial.parent == workdir / "checkpoints" and (partial / "state").is_dir()
  process.kill()
  process.communicate()
  assert "6" not in checkpoints() and "3" in checkpoints() and partial.name in checkpoints()
  # Epoch 1 was logged. The save is asynchronous: epoch 2 may have trained and been logged too before
  # the kill (its own save waits behind the hung one); a resume rewinds both to the checkpoint.
  logged = [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert logged in ([0, 1], [0, 1, 2]), logged

  process = start("--pause_at=1,1", "--resume")
  announcement, before = wait_for_announcement(process)
  assert announcement == "paused"
  assert "Resuming" in before and "checkpoint after epoch 0" in before  # not the partial save
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate("go\n", timeout=300)
  assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert "SIGTERM: stopped in epoch 1 after step 2 of 3" in out and "--resume" in out
  assert checkpoints() == ["3", "5"]  # named by optimizer step; the partial folder is gone

  resumed = train.run(tiny_config(workdir, tfds_dir, resume=True))  # here: no third process
  chex.assert_trees_all_equal(resumed["state"], whole["state"])
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  drop_time = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
  assert drop_time(records) == drop_time(whole["records"])  # each epoch once, as uninterrupted
  dropped = (workdir / "metrics_dropped.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in dropped] == logged[1:]  # rewound, kept aside


def test_a_damaged_dataset_file_stops_the_run_naming_it_and_keeps_the_last_checkpoint(tmp_path):
  tfds_dir = tmp_path / "tfds"
  train.run(tiny_config(tmp_path / "run", tfds_dir, epochs=1))
  (shard,) = (tfds_dir / "mtan_synthetic").glob("*/1.0.0/mtan_synthetic-train.array_record-*")
  damaged = bytearray(shard.read_bytes())
  middle = len(damaged) // 2
  damaged[middle:middle + 64] = bytes(b ^ 0xFF for b in damaged[middle:middle + 64])
  shard.write_bytes(bytes(damaged))
  with pytest.raises(DataError) as error:
    train.run(tiny_config(tmp_path / "run", tfds_dir, epochs=2, resume=True))
  assert f"of {shard} cannot be read" in str(error.value)
  assert f"delete {shard.parent} to rebuild it" in str(error.value)
  from mtan_jax.checkpoint import Checkpointer
  checkpoints = Checkpointer(tmp_path / "run" / "checkpoints")
  assert checkpoints.all_steps() == [3]  # nothing saved from a state that saw the bad record
  checkpoints.close()


def test_an_out_of_memory_error_says_what_to_change():
  config = TrainConfig(batch_size=16)
  advice = train.memory_advice(config, "batch_size", 16, 2)
  assert "--batch_size (now 16: 8 per device)" in advice and "--dtype=bfloat16" in advice
  assert "--remat" in advice
  assert "--remat" not in train.memory_advice(TrainConfig(remat=True), "batch_size", 16, 2)
  assert "--remat" not in train.memory_advice(config, "eval_batch_size", 16, 2)  # no backward
  too_big = jax.jit(lambda: jax.numpy.ones((1 << 42,), np.float32))
  with pytest.raises(jax.errors.JaxRuntimeError) as raised:  # a real failed allocation
    too_big().block_until_ready()
  explained = parallel.explain_out_of_memory(raised.value, "epoch 3", advice)
  assert isinstance(explained, train.RunError)
  assert str(explained).startswith("out of device memory in epoch 3 (RESOURCE_EXHAUSTED")
  assert str(explained).endswith(advice)
  assert parallel.explain_out_of_memory(ValueError("RESOURCE_EXHAUSTED"), "x", advice) is None


def test_a_step_that_does_not_fit_the_device_is_refused_before_it_runs(tmp_path, monkeypatch):
  monkeypatch.setattr(parallel, "device_memory_limit", lambda device: 1 << 20)  # a 1 MiB device
  traced_with = []
  plain_step = step_lib.train_step
  monkeypatch.setattr(step_lib, "train_step",
                      lambda *a, **kw: traced_with.append(kw["remat"]) or plain_step(*a, **kw))
  with pytest.raises(train.RunError) as error:
    train.run(tiny_config(tmp_path / "run", tmp_path / "tfds", epochs=1, remat=True))
  assert traced_with and all(traced_with)  # --remat reached the step
  message = str(error.value)
  assert "the train step needs" in message and "MiB per device, more than the 1.0 MiB a cpu can" in message
  assert "--batch_size (now 4: 2 per device)" in message and "--dtype=bfloat16" in message
  assert "--remat" not in message  # already on
  assert not list((tmp_path / "run" / "checkpoints").glob("[0-9]*"))
