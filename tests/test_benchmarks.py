"""The benchmark scripts run end to end at tiny settings (their figures are not checked)."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_input_pipeline_benchmark_prints_json_lines_and_a_table(tmp_path, capsys):
  load("input_pipeline").main(["--height=32", "--width=64", "--examples=6", "--batch_size=2",
                               "--epochs=2", "--workers=2", f"--data_dir={tmp_path}"])
  lines = capsys.readouterr().out.splitlines()
  rows = [json.loads(line) for line in lines if line.startswith("{")]
  assert [r["measure"] for r in rows] == ["synthetic render, 1 thread", "prepare dataset",
                                          "loader (warm-up)", "loader"]
  assert all(r.get("per_second", 1) > 0 for r in rows)
  assert any(line.startswith("measure") for line in lines)
