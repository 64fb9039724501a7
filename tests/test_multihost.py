"""Multi-host training: two processes on localhost train as one process with their devices."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mtan_jax.dense import train
from mtan_jax import xla_cpu
from tests.test_train import ROOT

pytestmark = pytest.mark.slow  # starts two training processes


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
  """Two processes (two CPU devices each) on localhost, gloo collectives, each reading its own
  share of every batch, end with the parameters of one process with four devices (this one)."""
  from tests import multihost_worker  # pylint: disable=import-outside-toplevel
  worker = ROOT / "tests" / "multihost_worker.py"
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                                   "--xla_backend_optimization_level=0"}  # as conftest
  xla_cpu.configure(env)
  processes = [subprocess.Popen(
      [sys.executable, str(worker), str(tmp_path / "multi"), str(tmp_path / "tfds"), str(port),
       "2", str(index)], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in range(2)]
  single = dataclasses.replace(multihost_worker.config(tmp_path / "single", tmp_path / "tfds", 0),
                               devices=4)  # while the two processes run
  multihost_worker.save_params(train.run(single), tmp_path / "single", 0)
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  params = [np.load(tmp_path / name / f"params_{i}.npz")
            for name, i in (("multi", 0), ("multi", 1), ("single", 0))]
  for key in params[2].files:  # the two hosts hold the same parameters, bit for bit
    np.testing.assert_array_equal(params[0][key], params[1][key])
  # ... and trained as one process with four devices did. Parameters are not compared with the
  # single process's: summation order differs (gloo across processes), and a max-pool near-tie
  # flipped by rounding routes a value elsewhere, which Adam's sign-like first steps make visible.
  # The losses are compared: the first step's (from the same initial parameters and batches;
  # different if the hosts read the same share) tightly, the evaluation after two epochs loosely.
  multi, single_run = (
      [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
      for name in ("multi", "single"))
  for task in ("segmentation", "depth", "normal"):
    assert multi[0]["train"][task]["loss"] == pytest.approx(single_run[0]["train"][task]["loss"],
                                                            rel=1e-3)
    assert multi[1]["test"][task]["loss"] == pytest.approx(single_run[1]["test"][task]["loss"],
                                                           rel=3e-2)
  # Only process 0 writes the run's logs.
  assert (tmp_path / "multi" / "metrics.jsonl").exists()
  assert "mtan on" not in outputs[1][0] and "split_standard on" in outputs[0][0]


def test_two_processes_train_the_decathlon_like_one(tmp_path):
  """The Decathlon's run over two processes (two CPU devices each): each reads its share of every
  batch; the losses are those of one process with four devices (this one), only process 0 writes,
  and the test predictions cover every example (gathered from both hosts)."""
  from mtan_jax.decathlon import train as decathlon_train  # pylint: disable=import-outside-toplevel
  from tests import multihost_worker  # pylint: disable=import-outside-toplevel
  worker = ROOT / "tests" / "multihost_worker.py"
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                                   "--xla_backend_optimization_level=0"}  # as conftest
  xla_cpu.configure(env)
  processes = [subprocess.Popen(
      [sys.executable, str(worker), str(tmp_path / "multi"), "-", str(port), "2", str(index),
       "decathlon"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for index in range(2)]
  single = dataclasses.replace(multihost_worker.decathlon_config(tmp_path / "single"), devices=4)
  tasks = multihost_worker.decathlon_tasks()
  summary = decathlon_train.run(single, tasks)  # while the two processes run
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  multi, single_run = (
      [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
      for name in ("multi", "single"))
  for task in ("imagenet12", "svhn"):
    assert multi[0]["train"][task]["loss"] == pytest.approx(single_run[0]["train"][task]["loss"],
                                                            rel=1e-3)
  assert multi[1]["validation"]["svhn"]["loss"] == pytest.approx(
      single_run[1]["validation"]["svhn"]["loss"], rel=1e-3)
  saved = json.loads((tmp_path / "multi" / "summary.json").read_text())
  for task in ("imagenet12", "svhn"):  # every test example counted once, over both hosts
    assert saved["test"][task]["loss"] == pytest.approx(summary["test"][task]["loss"], rel=1e-3)
    # a near-tie flipped by rounding may move one prediction (of five or ten)
    assert saved["test"][task]["accuracy"] == pytest.approx(summary["test"][task]["accuracy"],
                                                            abs=0.21)
  said = [line for line in outputs[1][0].splitlines() if not line.startswith("[Gloo]")]
  assert not said  # process 1 says nothing (gloo's own connection lines aside)
