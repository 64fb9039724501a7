"""`python -m mtan_jax.params`: the parameter table users print."""

import json
import pathlib
import subprocess
import sys

import pytest

from mtan_jax import params

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args):
  result = subprocess.run([sys.executable, "-m", "mtan_jax.params", *args], cwd=ROOT,
                          capture_output=True, text=True, check=True)
  return result.stdout


def test_json_nyuv2_matches_the_reference_counts():
  rows = json.loads(run_cli("--dataset=nyuv2", "--json"))
  assert rows["mtan"] == 44_229_076
  assert rows["dense"] == 123_743_995
  assert rows["cross_stitch"] == 74_941_807
  assert rows["single (segmentation)"] == 24_981_069
  assert rows["single (x3, one per task)"] == 74_941_777
  assert rows["stan (x3, one per task)"] == 114_555_985
  assert rows["split_wide"] == 43_934_164


def test_table_cityscapes_prints_counts_and_ratios():
  table = run_cli("--dataset=cityscapes")
  lines = {line.split()[0] + (" " + line.split()[1] if line.startswith(("single", "stan")) else ""):
           line for line in table.splitlines()[3:]}
  assert "41,206,986" in lines["mtan"] and lines["mtan"].endswith("1.650")
  assert "90,796,895" in lines["dense"] and lines["dense"].endswith("3.635")
  assert lines["cross_stitch"].endswith("2.000")
  assert "24,980,679" in table.splitlines()[0]  # the ratio's denominator, single segmentation


def test_nineteen_classes_change_only_the_segmentation_heads():
  seven = params.parameter_table("cityscapes")
  nineteen = params.parameter_table("cityscapes", num_classes=19)
  head = 12 * (64 + 1)  # twelve more outputs of the 1x1 head conv on 64 channels
  assert nineteen["mtan"] - seven["mtan"] == head
  assert nineteen["dense"] - seven["dense"] == head + 12 * (9 * 64 + 1 + 2)  # and the dead block


def test_bad_dataset_is_refused():
  with pytest.raises(SystemExit):
    params.main(["--dataset=kitti"])
