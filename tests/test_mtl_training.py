"""Multi-task methods through the whole training loop: the experiment script's flags end to end on
SegNet, and each method with state of its own through checkpoints and an exact resume on the toy
network of test_mtl_step.py (a file of its own, so that pytest-xdist runs it beside that one)."""

import json

import chex
import numpy as np
import pytest

from tests.test_mtl_step import Toy


@pytest.mark.slow
@pytest.mark.parametrize("name,options", [("famo", {"famo_gamma": 0.01})])
def test_a_method_trains_end_to_end_and_resumes_exactly(name, options, tmp_path):
  """A tiny synthetic run on 2 devices: two epochs at once (`train.run`), and the same as the
  experiment script's flags (`cli.main`, --weighting=NAME and the method's own flags), one epoch
  then --resume for the second, end with the same state (FAMO's logits and their Adam state, its
  extra forward pass) and records."""
  from mtan_jax import cli
  from mtan_jax import train
  from mtan_jax.checkpoint import Checkpointer
  from tests.test_train import tiny_config, tiny_flags

  whole = train.run(tiny_config(tmp_path / "whole", tmp_path / "tfds", weighting=name, epochs=2,
                                weighting_options=options))
  flags = [f for f in tiny_flags(tmp_path / "split", tmp_path / "tfds")
           if not f.startswith(("--weighting", "--epochs"))]
  flags += [f"--weighting={name}", *(f"--{k}={v}" for k, v in options.items())]
  cli.main([*flags, "--epochs=1"], "nyuv2")
  cli.main([*flags, "--epochs=2", "--resume"], "nyuv2")
  checkpoints = Checkpointer(tmp_path / "split" / "checkpoints")
  resumed = checkpoints.restore(checkpoints.latest(), whole["state"])
  checkpoints.close()
  chex.assert_trees_all_equal(resumed, whole["state"])
  records = {run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text()
                   .splitlines()] for run in ("whole", "split")}
  assert records["split"][1].pop("config_changes") == {"epochs": [1, 2]}  # said by the resume
  drop_time = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
  assert drop_time(records["split"]) == drop_time(records["whole"])
  assert all(np.isfinite(r["train"][t]["loss"]) for r in records["whole"] for t in r["train"])
  config = json.loads((tmp_path / "split" / "config.json").read_text())
  assert config["weighting"] == name and options.items() <= config["weighting_options"].items()


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
  """`train.run` with the toy network in place of the registry's model (shared: its trunk, as a
  Split's backbone), so that every method runs the whole loop in seconds."""
  return tmp_path_factory.mktemp("toy_runs")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rlw", "gls", "pcgrad", "nash_mtl", "db_mtl", "gradnorm"])
def test_a_methods_state_goes_through_the_loop_and_a_resume_exactly(name, toy_runs, monkeypatch):
  """The whole training loop (2 devices, 2 epochs of 3 steps, evaluation, checkpoints) with each
  method that carries state of its own (keys, last losses, previous weights, a gradient buffer,
  learned weights and epoch-0 losses; FAMO's: the end-to-end test above): finite records, and one
  epoch then --resume ends as the two epochs at once."""
  from mtan_jax import train
  from tests.test_train import tiny_config

  monkeypatch.setattr(train, "build_model", lambda *args, **kwargs: Toy())
  tfds_dir = toy_runs / "tfds"
  config = lambda folder, **kw: tiny_config(toy_runs / name / folder, tfds_dir,  # noqa: E731
                                            weighting=name, **kw)
  whole = train.run(config("whole", epochs=2))
  train.run(config("split", epochs=1))
  resumed = train.run(config("split", epochs=2, resume=True))
  chex.assert_trees_all_equal(resumed["state"], whole["state"])
  records = [json.loads(line) for line in
             (toy_runs / name / "whole" / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [0, 1]
  assert all(np.isfinite(r["train"][t]["loss"]) and np.isfinite(r["weights"][t])
             for r in records for t in r["train"])
