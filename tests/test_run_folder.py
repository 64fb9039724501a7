"""A run folder a user can trust: owned by one run, never overwritten or truncated without
--overwrite, verified checkpoints, no non-finite state saved, every user error one message."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import chex
import jax
import numpy as np
import optax
import pytest

from mtan_jax import checkpoint as checkpoint_lib
from mtan_jax.dense import cli
from mtan_jax import rundir
from mtan_jax.dense import train
from mtan_jax.dense import train_step as step_lib
from mtan_jax import weighting as weighting_lib
from mtan_jax.dense.config import ConfigError
from mtan_jax.models import build_model
from tests.test_release import NYU_SHAPES, write_release
from tests.test_train import NYU, ROOT, shard, synthetic_batch, tiny_config, tiny_flags


def start_worker(workdir, tfds_dir, *args):
  """The experiment script's main in its own process (tests/fault_worker.py), pausing where told."""
  return subprocess.Popen(
      [sys.executable, str(ROOT / "tests" / "fault_worker.py"), *args,
       *tiny_flags(workdir, tfds_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, cwd=workdir.parent)


def wait_for(process, announcement):
  for line in process.stdout:
    if line.strip() == f"FAULT_WORKER: {announcement}":
      return
  raise AssertionError(f"the worker ended first: {process.communicate()[1][-3000:]}")


def run_cli(argv, capsys):
  """cli.main as the experiment script runs it: (exit status, stdout, stderr)."""
  try:
    cli.main(argv, "nyuv2")
    status = 0
  except SystemExit as stop:
    status = stop.code
  out, err = capsys.readouterr()
  return status, out, err


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_stops_naming_the_holder_and_a_killed_one_blocks_nothing(
    tmp_path):
  workdir, tfds_dir = tmp_path / "run", tmp_path / "tfds"
  holder = start_worker(workdir, tfds_dir, "--pause_at=0,1")  # holds the folder, paused in epoch 0
  wait_for(holder, "paused")
  second = subprocess.run([sys.executable, str(ROOT / "experiments" / "nyuv2.py"),
                           *tiny_flags(workdir, tfds_dir)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
  assert second.returncode == 1
  assert f"error: {workdir} is in use by another run (PID {holder.pid} on host " in second.stderr
  assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
  holder.kill()  # the kernel releases its lock
  holder.communicate()
  assert not list((workdir / "checkpoints").glob("[0-9]*"))  # it died before its first save
  result = train.run(tiny_config(workdir, tfds_dir, epochs=1, resume=True))  # not blocked
  assert [r["epoch"] for r in result["records"]] == [0]


def test_the_lock_is_refused_within_one_process_too(tmp_path):
  with rundir.RunFolderLock(tmp_path / "w"):
    with pytest.raises(rundir.RunFolderError, match=f"PID {os.getpid()} on host"):
      with rundir.RunFolderLock(tmp_path / "w"):
        pass
  with rundir.RunFolderLock(tmp_path / "w"):  # released on exit
    pass


@pytest.mark.slow
def test_nothing_of_a_run_is_deleted_or_truncated_without_overwrite(tmp_path):
  tfds_dir, workdir = tmp_path / "tfds", tmp_path / "run"
  train.run(tiny_config(workdir, tfds_dir, epochs=1))
  shutil.rmtree(workdir / "checkpoints")  # only the logs are left: still a run
  metrics = (workdir / "metrics.jsonl").read_text()
  with pytest.raises(train.RunError, match=r"already holds a run \(config.json, metrics.jsonl\)"):
    train.run(tiny_config(workdir, tfds_dir, epochs=1))
  assert (workdir / "metrics.jsonl").read_text() == metrics
  # --resume on a folder with no run (a misspelled workdir) stops and creates nothing.
  with pytest.raises(train.RunError, match="holds no run to continue"):
    train.run(tiny_config(tmp_path / "misspelled", tfds_dir, resume=True))
  assert not (tmp_path / "misspelled").exists()
  with pytest.raises(ConfigError, match="--keep_checkpoints: expected an integer >= 1, found 0"):
    train.run(tiny_config(workdir, tfds_dir, keep_checkpoints=0, resume=True))


def largest_file(folder: pathlib.Path) -> pathlib.Path:
  return max((p for p in folder.rglob("*") if p.is_file() and p.name != checkpoint_lib.CHECKSUMS),
             key=lambda p: p.stat().st_size)


def small_state(value):
  return {"w": np.full((4096,), value, np.float32), "count": np.int32(value)}


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "checksums_damaged"])
def test_a_damaged_checkpoint_is_reported_moved_aside_and_the_previous_one_used(tmp_path, damage):
  checkpoints = checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=3)
  for step in (1, 2):
    checkpoints.save(step, small_state(step), {"epoch": step})
  checkpoints.close()
  assert (tmp_path / "checkpoints" / "2" / checkpoint_lib.CHECKSUMS).is_file()
  target = largest_file(tmp_path / "checkpoints" / "2")
  data = bytearray(target.read_bytes())
  if damage == "truncated":
    target.write_bytes(bytes(data[:len(data) // 2]))
  elif damage == "random_bytes":
    middle = len(data) // 2
    data[middle:middle + 64] = np.random.default_rng(0).integers(0, 256, 64, np.uint8).tobytes()
    target.write_bytes(bytes(data))
  else:
    target = tmp_path / "checkpoints" / "2" / checkpoint_lib.CHECKSUMS
    target.write_text("{cut")
  said = []
  checkpoints = checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=3)
  step, state, record = checkpoints.restore_intact(small_state(0), said.append)
  checkpoints.close()
  assert step == 1 and record == {"epoch": 1}
  chex.assert_trees_all_equal(state, small_state(1))
  assert said[0].startswith(f"warning: checkpoint {tmp_path / 'checkpoints' / '2'} is damaged: ")
  assert str(target.name) in said[0] and "moved to" in said[0]
  assert said[-1] == "Using checkpoint 1, the newest intact one."
  assert (tmp_path / "checkpoints_damaged" / "2").is_dir()  # kept, not deleted
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_every_checkpoint_damaged_is_one_error_and_read_only_readers_move_nothing(tmp_path):
  checkpoints = checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=3)
  checkpoints.save(1, small_state(1), {"epoch": 1})
  checkpoints.close()
  target = largest_file(tmp_path / "checkpoints" / "1")
  target.write_bytes(target.read_bytes()[:10])
  said = []
  reader = checkpoint_lib.Checkpointer(tmp_path / "checkpoints", read_only=True)
  with pytest.raises(checkpoint_lib.CheckpointError, match="every checkpoint in .* is damaged"):
    reader.restore_intact(small_state(0), said.append)
  reader.close()
  assert "skipped" in said[0] and (tmp_path / "checkpoints" / "1").is_dir()


def test_a_checkpoint_without_checksums_is_used_when_it_reads_and_is_finite(tmp_path):
  checkpoints = checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=3)
  checkpoints.save(1, small_state(1), {"epoch": 1})
  checkpoints.close()
  (tmp_path / "checkpoints" / "1" / checkpoint_lib.CHECKSUMS).unlink()  # killed before they came
  said = []
  checkpoints = checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=3)
  assert checkpoints.restore_intact(small_state(0), said.append)[0] == 1
  checkpoints.close()
  assert said[0].startswith("note: checkpoint") and "has no checksums" in said[0]


def test_a_non_finite_state_is_never_written(tmp_path):
  checkpoints = checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=3)
  state = small_state(1)
  state["w"][7] = np.nan
  with pytest.raises(checkpoint_lib.NonFiniteStateError, match=r"\['w'\]; it was not written"):
    checkpoints.save(1, state, {"epoch": 1})
  checkpoints.close()
  assert not list((tmp_path / "checkpoints").iterdir())


def test_a_failed_save_is_one_error_that_names_the_checkpoint_kept(tmp_path, monkeypatch):
  checkpoints = checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=3)
  checkpoints.save(1, small_state(1), {"epoch": 1})
  checkpoints.wait()

  def full_disk():
    raise ValueError("RESOURCE_EXHAUSTED: Failed to write 149127 bytes: No space left on device")

  checkpoints.save(2, small_state(2), {"epoch": 2})
  monkeypatch.setattr(checkpoints.manager, "wait_until_finished", full_disk)
  with pytest.raises(checkpoint_lib.CheckpointError) as error:
    checkpoints.wait()
  assert str(error.value).startswith(f"checkpoint 2 could not be written into "
                                     f"{tmp_path / 'checkpoints'} (RESOURCE_EXHAUSTED")
  assert "No space left on device" in str(error.value)


@pytest.mark.slow
def test_a_nan_learning_rate_skips_the_step_instead_of_saving_nan_parameters():
  """The loss and gradient are finite, the update is not: the step is skipped on every device."""
  model = build_model("split_standard", NYU, width_mult=1 / 16, bn_axis_name=step_lib.AXIS)
  weighting = weighting_lib.build("equal", NYU)
  sgd = optax.sgd(float("nan"))
  state = step_lib.create_train_state(model, weighting, sgd, (32, 32), 0)
  devs = jax.local_devices()[:2]
  step = jax.pmap(lambda s, b: step_lib.train_step(s, b, model=model, weighting=weighting,
                                                   optimizer=sgd, tasks=NYU,
                                                   sync_batch_stats=False),
                  axis_name=step_lib.AXIS, devices=devs)
  before = step_lib.replicate(state, devs, devs)
  after, outputs = step(before, shard(synthetic_batch(count=4), 2))
  assert np.all(np.asarray(outputs["skipped"]))
  assert np.isfinite(float(outputs["loss"][0]))
  chex.assert_trees_all_equal(after.params, before.params)
  assert not checkpoint_lib.non_finite_leaves(jax.tree_util.tree_map(np.asarray, after))


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_resumes_from_the_previous_one_in_a_real_process(tmp_path):
  tfds_dir, workdir = tmp_path / "tfds", tmp_path / "run"
  train.run(tiny_config(workdir, tfds_dir, epochs=2))
  damaged = largest_file(workdir / "checkpoints" / "6")
  data = bytearray(damaged.read_bytes())
  data[len(data) // 2:len(data) // 2 + 4096] = np.random.default_rng(1).integers(
      0, 256, 4096, np.uint8).tobytes()[:len(data) - len(data) // 2]
  damaged.write_bytes(bytes(data))
  result = subprocess.run([sys.executable, str(ROOT / "experiments" / "nyuv2.py"),
                           *tiny_flags(workdir, tfds_dir), "--resume"],
                          env={**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest"},
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f"warning: checkpoint {workdir / 'checkpoints' / '6'} is damaged: {damaged}"
          in result.stdout)
  assert f"moved to {workdir / 'checkpoints_damaged' / '6'}" in result.stdout
  assert "Resuming" in result.stdout and "checkpoint after epoch 0" in result.stdout
  assert "Traceback" not in result.stderr
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [0, 1, 2]  # epoch 1 redone, logged once
  dropped = (workdir / "metrics_dropped.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in dropped] == [1]  # the old epoch 1 kept aside


@pytest.mark.slow
def test_a_failed_save_in_a_run_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
  saves = []
  plain_save = checkpoint_lib.Checkpointer.save

  def disk_full_on_second(self, step, state, record):
    saves.append(step)
    if len(saves) == 2:
      raise checkpoint_lib.CheckpointError(f"checkpoint {step} could not be written (No space "
                                           f"left on device); checkpoint 3 stays the latest")
    return plain_save(self, step, state, record)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", disk_full_on_second)
  workdir = tmp_path / "run"
  status, _, err = run_cli(tiny_flags(workdir, tmp_path / "tfds"), capsys)
  assert status == 1 and err.startswith("error: checkpoint 6 could not be written")
  assert len(err.strip().splitlines()) == 1
  checkpoints = checkpoint_lib.Checkpointer(workdir / "checkpoints", read_only=True)
  assert checkpoints.all_steps() == [3] and checkpoints.verify(3) is None
  checkpoints.close()


@pytest.mark.parametrize("flags, message", [
    (["--batch_size=0"], "--batch_size: expected an integer >= 1, found 0"),
    (["--resolution=100x100"],
     "--resolution: expected HEIGHTxWIDTH, both positive multiples of 32"),
    (["--width_mult=0"], "--width_mult: expected a finite number > 0, found 0.0"),
    (["--lr=nan"], "--lr: expected a finite number > 0, found nan"),
    (["--lr=-1"], "--lr: expected a finite number > 0, found -1.0"),
    (["--weighting=dwa", "--temperature=0"],
     "--temperature: expected a finite temperature > 0, found 0.0"),
    (["--temperature=3"], "--temperature: not an option of the equal weighting (its options: "
     "none)"),
    (["--epochs=0"], "--epochs: expected an integer >= 1, found 0"),
    (["--keep_checkpoints=0"], "--keep_checkpoints: expected an integer >= 1, found 0"),
    (["--data_dir=RELEASE", "--resolution=64x64"],
     "nyuv2 release resolution: the release comes in 288x384, found 64x64 (--resolution)"),
    (["--data_dir=RELEASE/train/image/0.npy"], "0.npy is a file, not a folder"),
    (["--data_dir=NOWHERE"], "NOWHERE does not exist"),
    (["--workdir=RELEASE/train/image/0.npy/run"], "cannot write into --workdir"),
])
def test_every_user_error_is_one_message_exit_status_1(tmp_path, capsys, flags, message):
  release = write_release(tmp_path / "release", NYU_SHAPES, {"train": 1, "val": 1})
  flags = [f.replace("RELEASE", str(release)).replace("NOWHERE", str(tmp_path / "nowhere"))
           for f in flags]
  message = message.replace("NOWHERE", str(tmp_path / "nowhere"))
  base = [f"--workdir={tmp_path / 'run'}", f"--tfds_dir={tmp_path / 'tfds'}", "--progress=false"]
  status, _, err = run_cli(base + flags, capsys)
  assert status == 1, err
  assert err.startswith("error: ") and message in err, err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert not (tmp_path / "run").exists() and not (tmp_path / "tfds").exists()  # nothing written


def test_ctrl_c_during_start_up_is_one_message(tmp_path, capsys, monkeypatch):
  def interrupted(config):
    raise KeyboardInterrupt

  monkeypatch.setattr(train, "run", interrupted)
  status, _, err = run_cli([f"--workdir={tmp_path / 'run'}"], capsys)
  assert status == 128 + signal.SIGINT
  assert err.startswith("error: interrupted (Ctrl-C)") and len(err.strip().splitlines()) == 1
