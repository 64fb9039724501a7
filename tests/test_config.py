"""The config schema: one declaration per field gives its flag, help, check, resume check and
report grouping."""

import dataclasses
import json

import pytest

from mtan_jax.dense import cli
from mtan_jax.dense import config as config_lib
from mtan_jax import report
from mtan_jax import schema
from mtan_jax.dense import train
from mtan_jax import weighting as weighting_lib
from mtan_jax.dense.config import ConfigError, TrainConfig
from mtan_jax.runs import Run
from mtan_jax.schema import option


@dataclasses.dataclass(frozen=True)
class WithWarmup(TrainConfig):
  """A config grown by one field, as a new feature would add it, with no other edit."""

  warmup_epochs: int = option(0, "epochs of linear learning-rate warm-up", defines_run=True,
                              check=schema.at_least(0))


def test_a_field_with_metadata_is_a_flag_a_check_a_resume_check_and_a_report_column(capsys):
  config, _ = cli.parse(["--warmup_epochs=3", "--workdir=w"], "nyuv2", config_cls=WithWarmup)
  assert config.warmup_epochs == 3
  with pytest.raises(SystemExit):  # --help lists it with its help text and default
    cli.parser("nyuv2", WithWarmup).parse_args(["--help"])
  assert "--warmup_epochs WARMUP_EPOCHS" in capsys.readouterr().out
  with pytest.raises(ConfigError, match="--warmup_epochs: expected an integer >= 0, found -1"):
    dataclasses.replace(config, warmup_epochs=-1).validate()
  # Resuming with another value is refused, naming it.
  saved = json.loads(json.dumps(dataclasses.replace(config, warmup_epochs=0).to_dict()))
  assert config_lib.differences(saved, config, "config.json") == [
      "warmup_epochs: config.json 0, now 3"]
  # Runs that differ in it are other rows of the report, told apart by a Setting column.
  runs = [Run(None, dataclasses.replace(config, warmup_epochs=w, seed=s), [])
          for w, s in ((0, 0), (3, 0), (3, 1))]
  identities = [report._identity(r) for r in runs]  # pylint: disable=protected-access
  assert identities[0]["warmup_epochs"] == 0 and identities[1] == identities[2]  # seeds: repeats
  rows = [report.Row("mtan", "equal", 1.0, 1, {}, {}), report.Row("mtan", "equal", 1.0, 2, {}, {})]
  report._settings(rows, identities[:2])  # pylint: disable=protected-access
  assert [r.setting for r in rows] == ["warmup_epochs=0", "warmup_epochs=3"]


def test_help_shows_the_real_defaults_and_the_quick_presets_values(capsys):
  with pytest.raises(SystemExit):
    cli.parse(["--help"], "nyuv2")
  text = " ".join(capsys.readouterr().out.split())
  assert "(default 0.0001; quick preset 0.001)" in text  # --lr
  assert "(default none; quick preset 96x128)" in text  # --resolution
  assert "(default 795,654; quick preset 240,64)" in text  # --synthetic_size
  assert "DWA's temperature T; --weighting=dwa (default 2.0)" in text  # declared by the scheme
  assert "(default: None)" not in text


def test_every_schema_field_of_the_train_config_is_a_flag_or_says_why_not():
  flags = {o.flag for o in schema.options(TrainConfig) if o.flag is not None}
  hidden = {o.path for o in schema.options(TrainConfig) if o.flag is None}
  assert hidden == {"weighting_options", "data.dataset"}  # the schemes' flags; the script's
  parser_flags = {a.dest for a in cli.parser("nyuv2")._actions}  # pylint: disable=protected-access
  assert flags <= parser_flags and "temperature" in parser_flags


def test_weighting_options_come_from_the_scheme_and_unknown_ones_are_refused():
  assert [o.name for o in weighting_lib.options("dwa")] == ["temperature"]
  assert TrainConfig(weighting="dwa").weighting_options == {"temperature": 2.0}  # filled
  assert TrainConfig(weighting="equal").weighting_options == {}
  config, _ = cli.parse(["--weighting=dwa", "--temperature=4", "--workdir=w"], "nyuv2")
  assert config.weighting_options == {"temperature": 4.0}
  with pytest.raises(ValueError, match="--gamma: not an option of the dwa weighting"):
    weighting_lib.build("dwa", (), gamma=1.0)
  with pytest.raises(ConfigError, match="--temperature: not an option of the uncertainty"):
    TrainConfig(weighting="uncertainty", weighting_options={"temperature": 2.0}).validate()


def test_a_config_of_another_version_is_refused_naming_its_unknown_fields():
  """Configs are not migrated: a field this version does not declare (a top-level "dataset", DWA's
  "temperature", "grad_clip_norm", all of earlier versions) is named, with the file."""
  saved = TrainConfig().to_dict()
  for field, value in (("dataset", "cityscapes"), ("temperature", 3.0), ("grad_clip_norm", 0.0)):
    with pytest.raises(ValueError, match=f"config.json: unknown field\\(s\\) {field}; expected "
                                         f"those of TrainConfig"):
      TrainConfig.from_dict({**saved, field: value}, "config.json")
  with pytest.raises(ValueError, match=r"unknown field\(s\) data.release; expected those of "
                                       r"DataConfig"):
    TrainConfig.from_dict({**saved, "data": {**saved["data"], "release": "x"}}, "config.json")
  assert TrainConfig.from_dict(saved) == TrainConfig()


@pytest.mark.slow
def test_resume_keeps_the_first_config_refuses_defining_changes_and_records_the_others(tmp_path):
  from tests.test_train import tiny_config  # pylint: disable=import-outside-toplevel
  workdir, tfds_dir = tmp_path / "run", tmp_path / "tfds"
  train.run(tiny_config(workdir, tfds_dir, epochs=1, steps_per_epoch=1))
  first = (workdir / "config.json").read_text()
  for field, value in (("dtype", "bfloat16"), ("metrics", "reference")):
    with pytest.raises(train.RunError, match=f"{field}: config.json '"):
      train.run(tiny_config(workdir, tfds_dir, epochs=2, steps_per_epoch=1, resume=True,
                            **{field: value}))
  train.run(tiny_config(workdir, tfds_dir, epochs=2, steps_per_epoch=1, resume=True,
                        keep_checkpoints=2))
  assert (workdir / "config.json").read_text() == first  # never rewritten
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert "config_changes" not in records[0]
  assert records[1]["config_changes"] == {"epochs": [1, 2], "keep_checkpoints": [3, 2]}


def test_gradient_clipping_scales_only_the_shared_parameters_gradient():
  """`--clip_grad_norm`: the shared parameters' gradient (global norm over them) scaled to the
  norm when above it, as PyTorch's clip_grad_norm_ (max_norm / (norm + 1e-6)); heads untouched."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mtan_jax.dense import train_step as step_lib  # pylint: disable=import-outside-toplevel
  config, _ = cli.parse(["--clip_grad_norm=1", "--workdir=w"], "nyuv2")
  assert config.clip_grad_norm == 1.0 and "clip_grad_norm" in schema.defining_paths(TrainConfig)
  shared = frozenset({"backbone", "att"})
  for scale in (5.0, 0.5):
    grads = {"backbone": {"w": np.array([0.6, 0.0], np.float32) * scale},
             "att": {"b": np.array([0.8], np.float32) * scale},  # shared norm = scale
             "depth_head": {"w": np.array([3.0, 4.0], np.float32)}}
    clipped = step_lib.clip_shared_gradient(
        {k: {n: jnp.asarray(x) for n, x in v.items()} for k, v in grads.items()}, shared, 1.0)
    factor = min(1.0, 1.0 / (scale + 1e-6))
    np.testing.assert_allclose(clipped["backbone"]["w"], grads["backbone"]["w"] * factor, rtol=1e-6)
    np.testing.assert_allclose(clipped["att"]["b"], grads["att"]["b"] * factor, rtol=1e-6)
    np.testing.assert_array_equal(clipped["depth_head"]["w"], grads["depth_head"]["w"])
  assert step_lib.clip_shared_gradient(grads, shared, 0.0) is grads  # 0: off
  with pytest.raises(ConfigError, match="--clip_grad_norm: expected a number >= 0, found -1.0"):
    dataclasses.replace(config, clip_grad_norm=-1.0).validate()


def test_dataset_facts_come_from_the_registry():
  from mtan_jax import datasets, tasks  # pylint: disable=import-outside-toplevel
  city = datasets.get("cityscapes")
  assert [t.name for t in tasks.dataset_tasks("cityscapes")] == list(city.tasks)
  assert tasks.dataset_tasks("cityscapes")[0].channels == city.default_classes == 7
  assert city.label_field(19) == "label_19" and city.depth_power == -1
  assert tasks.DEFAULT_RESOLUTION["nyuv2"] == datasets.get("nyuv2").default_resolution
  with pytest.raises(ValueError, match=r"dataset: expected one of \('nyuv2', 'cityscapes'\)"):
    datasets.get("kitti")
  config, _ = cli.parse(["--num_classes=13", "--workdir=w"], "cityscapes")
  with pytest.raises(ConfigError, match=r"--num_classes: expected one of \(7, 19\) for cityscapes"):
    config.validate()
