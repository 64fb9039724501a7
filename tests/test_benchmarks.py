"""The benchmark scripts run end to end at tiny settings (their figures are not checked)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import types

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_input_pipeline_benchmark_prints_json_lines_and_a_table(tmp_path, capsys):
  load("input_pipeline").main(["--height=32", "--width=64", "--examples=6", "--batch_size=2",
                               "--epochs=2", "--workers=2", f"--tfds_dir={tmp_path}"])
  lines = capsys.readouterr().out.splitlines()
  rows = [json.loads(line) for line in lines if line.startswith("{")]
  assert [r["measure"] for r in rows] == ["synthetic render, 1 thread", "prepare dataset",
                                          "loader (warm-up)", "loader"]
  assert all(r.get("per_second", 1) > 0 for r in rows)
  assert any(line.startswith("measure") for line in lines)


@pytest.mark.slow
def test_train_step_benchmark_times_the_train_and_eval_steps(capsys):
  rows = load("train_step").main(["--model=split_standard", "--resolution=32x32",
                                  "--width_mult=0.0625", "--batch_sizes=2", "--mode=both",
                                  "--dtypes=float32", "--steps=2", "--warmup=1", "--remat=true",
                                  "--weighting=equal,mgda@representation"])
  assert [(r["mode"], r["weighting"], r["batch"], r["remat"]) for r in rows] == [
      ("train", "equal", 2, True), ("train", "mgda@representation", 2, True),
      ("eval", "equal", 2, False)]
  # The K task pullbacks stop at the representation (XLA drops their backward pass through the
  # shared network): 1.29x equal's FLOPs here, where K full backward passes (mgda) are 2.2x.
  assert rows[1]["xla_gflop_per_step"] / rows[0]["xla_gflop_per_step"] < 1.6
  rows = [rows[0], rows[2]]
  for row in rows:
    assert row["step_ms"] > 0 and row["compile_s"] > 0 and row["program_gib"] > 0
    assert row["images_per_s"] == pytest.approx(row["batch"] / (row["step_ms"] / 1e3), rel=1e-2)
    assert row["xla_gflop_per_step"] > 0 and row["ref_tflops"] is None  # not the full size
  train_flop, eval_flop = rows[0]["xla_gflop_per_step"], rows[1]["xla_gflop_per_step"]
  assert 2 < train_flop / eval_flop < 4  # backward ~2x forward
  lines = capsys.readouterr().out.splitlines()
  assert len([line for line in lines if line.startswith("{")]) == 3
  assert lines[-4].split()[:3] == ["model", "weighting", "mode"]


def test_train_step_benchmark_tabulates_earlier_json_lines(tmp_path, capsys):
  rows = [{"model": m, "mode": "train", "dtype": "float32", "batch": b, "remat": False,
           "resolution": "288x384", "compile_s": 50.0, "step_ms": 1e3 * b / ips,
           "images_per_s": ips, "tflops": 1.0, "ref_tflops": 2.0, "program_gib": 3.0,
           "peak_gib": peak}
          for m, b, ips, peak in (("mtan", 8, 97.5, 13.25), ("dense", 2, 80, None))]
  path = tmp_path / "train_step.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
  assert load("train_step").main([f"--table={path}"]) == rows
  lines = capsys.readouterr().out.splitlines()
  assert [line.split()[0] for line in lines] == ["model", "mtan", "dense"]
  assert lines[1].split()[-1] == "13.25" and lines[2].split()[-1] == "None"


def test_the_train_step_table_gives_each_weighting_its_ratio_to_equal():
  base = {"model": "mtan", "mode": "train", "dtype": "float32", "batch": 2, "remat": False,
          "resolution": "288x384", "width_mult": 1.0, "compile_s": 1.0, "images_per_s": 1.0,
          "tflops": None, "ref_tflops": None, "program_gib": 1.0, "peak_gib": None}
  rows = [{**base, "weighting": "equal", "step_ms": 400.0},
          {**base, "weighting": "nash_mtl", "step_ms": 900.0},
          {**base, "weighting": "famo", "step_ms": 500.0, "batch": 8}]  # no equal at batch 8
  ratios = [r["vs_equal"] for r in load("train_step").add_ratios(rows)]
  assert ratios == [1.0, 2.25, None]
  lines = load("train_step").table(rows).splitlines()
  assert lines[0].split()[:3] == ["model", "weighting", "mode"] and lines[2].split()[9] == "2.25"


def test_gpu_script_skips_what_its_budget_leaves_no_time_for(tmp_path):
  """With no time left, `benchmarks/gpu.sh` starts no job and says which it skipped, in order."""
  result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path)],
                          env={**os.environ, "BUDGET_S": "0", "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=120, check=True)
  skipped = next(line for line in result.stdout.splitlines() if line.startswith("skipped"))
  assert skipped.startswith(
      "skipped (out of budget, or as said): mtan f32 b8 profile f32_b8 mtan bf16 b16")
  assert "no configuration finished" in result.stdout
  assert not (tmp_path / "train_step.jsonl").exists()


def test_the_benchmark_batch_is_valid_for_the_losses():
  from mtan_jax import tasks as tasks_lib
  batch = load("train_step").random_batch(tasks_lib.dataset_tasks("nyuv2"), 3, 16, 24)
  labels, depth, normal = batch["segmentation"], batch["depth"], batch["normal"]
  assert labels.min() == -1 and labels.max() == 12 and labels.shape == (1, 3, 16, 24)
  valid = depth[..., 0] > 0
  assert 0.6 < valid.mean() < 0.9 and np.all((np.abs(normal).sum(-1) > 0) == valid)
  np.testing.assert_allclose(np.linalg.norm(normal[valid], axis=-1), 1, rtol=1e-5)


def test_profile_groups_ops_by_phase_and_component():
  profile = load("profile_step")
  cases = {
      "jit(_fun)/transpose(jvp(MTAN))/depth_encoder_mask_1/conv_g/conv_general_dilated":
          ("backward", "convolution"),
      "jit(_fun)/jvp(MTAN)/depth_encoder_mask_1/bn_h/reduce_sum": ("forward", "batchnorm"),
      "jit(_fun)/jvp(MTAN)/segmentation_decoder_mask_0/mul": ("forward", "attention"),
      "jit(_fun)/jvp(MTAN)/backbone/decoder_2/max_unpool/select_n": ("forward", "max_unpool"),
      "jit(_fun)/transpose(jvp(MTAN))/backbone/encoder_0/max_pool_with_argmax/eq":
          ("backward", "max_pool"),
      "jit(_fun)/transpose(jvp(jvp()))/checkpoint/rematted_computation/MTAN/backbone/encoder_0/"
      "block_1/bn/add": ("recompute", "batchnorm"),
      "jit(_fun)/optimizer/mul": ("update", "optimizer"),
      "jit(_fun)/metrics/acos": ("update", "metrics"),
      "jit(_fun)/jvp(losses)/log": ("forward", "losses"),
      "jit(_fun)/jvp(MTAN)/backbone/encoder_0/block_0/relu/max": ("forward", "other")}
  for name, expected in cases.items():
    assert profile.classify(name) == expected, name
  hlo = ('  %fusion.3 = f32[2]{0} fusion(f32[2]{0} %p), kind=kLoop, calls=%fc, '
         'metadata={op_name="jit(_fun)/jvp(MTAN)/x/mul" source_file="a.py" source_line=3}\n'
         '  ROOT %convolution.7 = f32[1]{0} convolution(%a, %b), metadata={op_name="c/conv"}\n'
         '  %param.1 = f32[2]{0} parameter(0)\n')
  assert profile.op_names(hlo) == {"fusion.3": "jit(_fun)/jvp(MTAN)/x/mul",
                                   "convolution.7": "c/conv"}


HLO = """\
%fused_computation.1 (param_0: f32[4,8]) -> f32[4,8] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  ROOT %exponential.1 = f32[4,8]{1,0} exponential(%param_0)
}

%region_0.1 (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.9 = f32[] add(%a, %b)
}

%command_buffer (p0: f32[4,8], p1: bf16[8]) -> (f32[4,8], f32[4]) {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = bf16[8]{0} parameter(1)
  %fusion.1 = f32[4,8]{1,0} fusion(%p0), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(_fun)/jvp(MTAN)/exp"}
  %reduce.2 = f32[4]{0} reduce(%fusion.1, %p1), dimensions={1}, to_apply=%region_0.1
  ROOT %tuple.3 = (f32[4,8]{1,0}, f32[4]{0}) tuple(%fusion.1, %reduce.2)
}

ENTRY %main.4 (x: f32[4,8], w: bf16[8]) -> (f32[4,8], f32[4]) {
  %x = f32[4,8]{1,0} parameter(0)
  %w = bf16[8]{0} parameter(1)
  %call.5 = (f32[4,8]{1,0}, f32[4]{0}) call(%x, %w), to_apply=%command_buffer
  %get-tuple-element.6 = f32[4,8]{1,0} get-tuple-element(%call.5), index=0
  ROOT %copy.7 = f32[4,8]{0,1} copy(%get-tuple-element.6), metadata={op_name="jit(_fun)/optimizer/copy"}
}
"""


def test_traffic_counts_what_each_run_operation_reads_and_writes():
  """Operands and outputs of the operations the program runs (the entry computation and what it
  calls), each once; nothing inside a fusion or a reduction's scalar function; views free."""
  profile = load("profile_step")
  assert profile.array_bytes("(f32[8,288,384,64]{3,2,1,0}, bf16[3]{0}, s32[])") == (
      8 * 288 * 384 * 64 * 4 + 3 * 2 + 4)
  assert profile.traffic(HLO) == {
      "fusion.1": 4 * 8 * 4 + 4 * 8 * 4,  # reads p0, writes its result
      "reduce.2": 4 * 8 * 4 + 8 * 2 + 4 * 4,  # reads fusion.1 and p1 (bf16), writes [4]
      "copy.7": 2 * 4 * 8 * 4}


def fake_plane(name, lines):
  """A trace plane as `jax.profiler.ProfileData` gives it: lines of events with stats."""
  event = lambda name, ns, **stats: types.SimpleNamespace(  # noqa: E731
      name=name, duration_ns=ns, stats=list(stats.items()))
  return types.SimpleNamespace(name=name, lines=[
      types.SimpleNamespace(name=line, events=[event(*e[:2], **e[2]) for e in events])
      for line, events in lines.items()])


def test_profile_counts_device_kernels_once_by_their_instruction():
  """A GPU kernel is named after itself and carries its HLO instruction as `hlo_op`; the host's
  events of the same ops are launches; "XLA Ops" repeats the streams' work; whole-module spans
  and copies are not the step's ops."""
  op_events = load("profile_step").op_events
  names = {"fusion.1": "jit(_fun)/jvp(MTAN)/mul", "cudnn-conv.2": "jit(_fun)/conv"}
  host = fake_plane("/host:CPU", {"tf_XLA": [("fusion.1", 7.0, {"hlo_module": "jit__fun"}),
                                             ("python", 50.0, {})]})
  streams = fake_plane("/device:GPU:0", {
      "Stream #1(Compute)": [
          ("sm90_xmma_fprop", 30.0, {"hlo_op": "cudnn-conv.2", "hlo_module": "jit__fun"}),
          ("loop_mul_fusion", 5.0, {"hlo_op": "fusion.1", "hlo_module": "jit__fun"}),
          ("loop_mul_fusion", 4.0, {"hlo_op": "fusion.1", "hlo_module": "jit__fun"}),
          ("MemcpyH2D", 2.0, {})],
      "XLA Modules": [("jit__fun(3)", 99.0, {"hlo_module": "jit__fun"})]})
  events, unmatched = op_events([host, streams], names)
  assert sorted(events) == [("cudnn-conv.2", 30.0), ("fusion.1", 4.0), ("fusion.1", 5.0)]
  assert unmatched == 2.0
  derived = fake_plane("/device:GPU:0", {
      "XLA Ops": [("cudnn-conv.2", 31.0, {}), ("fusion.1", 5.5, {})],
      "Stream #1(Compute)": [("sm90_xmma_fprop", 30.0, {"hlo_op": "cudnn-conv.2"})]})
  events, unmatched = op_events([host, derived], names)
  assert sorted(events) == [("cudnn-conv.2", 31.0), ("fusion.1", 5.5)] and unmatched == 0
  # A device whose kernels match no instruction gives no op time, never the host's launches.
  renamed = fake_plane("/device:GPU:0", {"Stream #1": [("k", 3.0, {"hlo_op": "other.9"})]})
  assert op_events([host, renamed], names) == ([], 3.0)
  assert op_events([host], names) == ([("fusion.1", 7.0)], None)  # a CPU trace


@pytest.mark.slow
def test_profile_of_a_tiny_step_accounts_for_its_op_time(capsys):
  result = load("profile_step").main(["--model=split_standard", "--resolution=32x32",
                                      "--width_mult=0.0625", "--batch=2", "--steps=2", "--remat"])
  groups = {(g["phase"], g["component"]): g for g in result["groups"]}
  assert {("forward", "convolution"), ("backward", "convolution"), ("forward", "batchnorm"),
          ("recompute", "batchnorm")} <= set(groups)
  assert sum(g["share"] for g in result["groups"]) == pytest.approx(1, abs=1e-3)
  assert sum(g["ms"] for g in result["groups"]) == pytest.approx(result["op_ms_per_step"],
                                                                  rel=1e-2)
  # The traffic model and XLA's own count of bytes accessed agree on the whole program.
  assert sum(g["gb"] for g in result["groups"]) == pytest.approx(result["gb_per_step"], rel=1e-2)
  assert result["gb_per_step"] == pytest.approx(result["xla_gb_per_step"], rel=1e-2)
  assert "component" in capsys.readouterr().out


@pytest.mark.slow
def test_cityscapes_build_benchmark_fakes_the_official_files_and_builds_them(tmp_path, capsys):
  load("cityscapes_build").main(["--frames=2,1", "--distinct=1", "--links", f"--root={tmp_path}",
                                 "--keep"])
  out = capsys.readouterr().out
  assert "fake official release: 2 + 1 frames of 2048x1024" in out
  assert "every-run check of 9 files" in out and "build at 128x256" in out
  assert "a second run's check: up to date" in out
  assert sorted(p.name for p in (tmp_path / "official" / "leftImg8bit" / "val").iterdir()) == [
      "frankfurt"]
