"""Multi-task methods through the whole training loop: each method with state of its own through
checkpoints and an exact resume on the toy network of test_mtl_step.py (a file of its own, so that
pytest-xdist runs it beside that one), and a method's flags through the experiment script's
parser."""

import json

import chex
import numpy as np
import pytest

from tests.test_mtl_step import Toy


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
  """`train.run` with the toy network in place of the registry's model (shared: its trunk, as a
  Split's backbone), so that every method runs the whole loop in seconds."""
  return tmp_path_factory.mktemp("toy_runs")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pcgrad", "nash_mtl", "famo", "db_mtl", "gradnorm"])
def test_a_methods_state_goes_through_the_loop_and_a_resume_exactly(name, toy_runs, monkeypatch):
  """The whole training loop (2 devices, 2 epochs of 3 steps, evaluation, checkpoints) with each
  method that carries state of its own (a key, previous weights, logits with their Adam state and
  the extra forward pass, a gradient buffer, learned weights and epoch-0 losses; RLW's key and
  GLS's losses are arrays like these): finite records, and one epoch then --resume ends as the two
  epochs at once."""
  from mtan_jax.dense import train
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


def test_a_methods_flags_reach_its_config_and_others_are_refused(tmp_path, capsys):
  from mtan_jax.dense import cli
  config, _ = cli.parse(["--weighting=famo", "--famo_gamma=0.01", "--workdir=w"], "nyuv2")
  assert config.weighting == "famo"
  assert config.weighting_options == {"famo_gamma": 0.01, "famo_lr": 0.025}
  config, _ = cli.parse(["--weighting=cagrad", "--workdir=w"], "nyuv2")
  assert config.weighting_options == {"cagrad_c": 0.4, "task_gradients": "parameters"}
  config, _ = cli.parse(["--weighting=nash_mtl", "--task_gradients=representation", "--workdir=w"],
                        "nyuv2")
  assert config.validate().weighting_options == {"task_gradients": "representation"}
  refused = {
      ("--weighting=mgda", "--cagrad_c=0.2"): "error: --cagrad_c: not an option of the mgda "
      "weighting (its options: mgda_normalisation, task_gradients)",
      ("--weighting=famo", "--task_gradients=representation"): "error: --task_gradients: not an "
      "option of the famo weighting (its options: famo_gamma, famo_lr)",
      ("--weighting=mgda", "--task_gradients=representation", "--model=cross_stitch"):
      "error: --task_gradients=representation: the cross_stitch model has no shared "
      "representation that every task reads (models that have: split_standard, split_wide, "
      "split_deep, dense, mtan)"}
  for flags, message in refused.items():
    with pytest.raises(SystemExit) as error:
      cli.main([*flags, f"--workdir={tmp_path / 'run'}"], "nyuv2")
    assert error.value.code == 1
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "run").exists()  # refused before anything is written
