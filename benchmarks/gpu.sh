#!/usr/bin/env bash
# The prepared accelerator run of issue 6, in two parts that each fit one 10-minute device call.
#
#   bash benchmarks/gpu.sh 1 OUT_DIR   # MTAN train step: float32 / bfloat16 at batch 8 (with and
#                                      # without rematerialisation) and 16
#   bash benchmarks/gpu.sh 2 OUT_DIR   # MTAN eval step, split / dense / cross-stitch, two profiles
#   bash benchmarks/gpu.sh 2 OUT_DIR --resolution=32x32 --width_mult=0.0625   # a dry run on a CPU
#
# Flags after OUT_DIR are passed to every benchmark (they override the ones written here).
# Needs jax with CUDA (or TPU), flax, optax, orbax-checkpoint and chex; not tensorflow-datasets
# (batches are made in memory). JSON lines go to OUT_DIR/*.jsonl, tables and profiles to stdout.
set -euo pipefail
part="${1:?part 1 or 2}"
out="${2:?output folder}"
shift 2
mkdir -p "$out"
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # peak_gib then reports what the step itself needs
python -c "import jax; print(jax.__version__, jax.devices())"
if [ "$part" = 1 ]; then
  python benchmarks/train_step.py --model=mtan --batch_sizes=8 --dtypes=float32,bfloat16 \
    --remat=both --steps=20 --warmup=3 --json="$out/train_step.jsonl" "$@"
  python benchmarks/train_step.py --model=mtan --batch_sizes=16 --dtypes=float32,bfloat16 \
    --steps=20 --warmup=3 --json="$out/train_step.jsonl" "$@"
else
  python benchmarks/train_step.py --model=mtan --mode=eval --batch_sizes=8 \
    --dtypes=float32,bfloat16 --steps=20 --warmup=3 --json="$out/eval_step.jsonl" "$@"
  for model in split_standard dense cross_stitch; do
    python benchmarks/train_step.py --model=$model --batch_sizes=2 --dtypes=float32,bfloat16 \
      --steps=20 --warmup=3 --json="$out/train_step_models.jsonl" "$@"
  done
  python benchmarks/profile_step.py --batch=8 --dtype=float32 --steps=5 "$@" > "$out/profile_f32.txt"
  python benchmarks/profile_step.py --batch=16 --dtype=bfloat16 --steps=5 "$@" \
    > "$out/profile_bf16.txt"
  python benchmarks/profile_step.py --batch=8 --dtype=float32 --remat --steps=5 "$@" \
    > "$out/profile_f32_remat.txt"
  tail -n +2 "$out"/profile_*.txt
fi
