#!/usr/bin/env bash
# The prepared accelerator run: one call, the most important measurements first.
#
#   bash benchmarks/gpu.sh OUT_DIR                      # on a GPU (or TPU), full size
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     PYTHONPATH=/tmp/site bash benchmarks/gpu.sh OUT_DIR  # with carried tensorflow-datasets wheels
#
# The wheels (Python 3.12; what the GPU image lacks of requirements.txt), made beforehand here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     tensorflow-datasets==4.9.10 array_record==0.8.6 dm-tree==0.1.10 tensorflow-metadata==1.21.0 \
#     googleapis-common-protos==1.76.0 simple-parsing==0.1.9 docstring_parser==0.18.0 \
#     immutabledict==4.3.1 importlib_resources==7.1.0 termcolor==3.3.0 toml==0.10.2 \
#     tensorboardX==2.6.5
#   python3 -m pip wheel --no-deps promise==2.3 -w .whl       # published as source only
#   BUDGET_S=300 bash benchmarks/gpu.sh OUT_DIR         # stop starting new jobs after 300 s
#   bash benchmarks/gpu.sh OUT_DIR --resolution=32x32 --width_mult=0.0625 --steps=2 --warmup=1
#                                                       # a dry run on a CPU
#
# A device lease is short (15 minutes, the machine's start included), so everything runs in one
# call: each job is one process, started only while BUDGET_S (default 480) seconds have not passed
# and killed at the deadline, so a slow compile costs the jobs after it and never the summary.
# One configuration per process, because `peak_bytes_in_use` is the process's peak so far: each
# row's peak_gib is then that configuration's own. Compiled programs go to a persistent cache, so
# a profile of a configuration timed before reuses its executable instead of compiling again.
#
# Flags after OUT_DIR go to every benchmark job (they override the ones written here). Needs jax
# with CUDA (or TPU), flax, optax, orbax-checkpoint and chex. Where tensorflow-datasets can be
# imported too, a short training run of the experiment script (synthetic scenes, quick preset, two
# epochs) checks the whole library on the device; the GPU image lacks it, so carry it as wheels
# (`.whl`, see the device tool's notes) and install them before this script. JSON lines go to
# OUT_DIR/train_step.jsonl, each job's output to OUT_DIR/log.txt, the profiles to
# OUT_DIR/profile_*.txt, the training run's output to OUT_DIR/training_run.txt; the last lines
# printed are the summary.
set -uo pipefail
out="${1:?output folder}"
shift
mkdir -p "$out"
cd "$(dirname "$0")/.."
budget="${BUDGET_S:-480}"
py="${PYTHON:-python3}"  # the GPU image has python3 (with jax), not always python
start=$SECONDS
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # peak_gib then reports what the step itself needs
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/mtan_jax_compile_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
# Convolution autotuning results shared between processes (f32 b8 with and without remat share
# every convolution), if this XLA knows the flag; an unknown XLA flag is fatal, so try it first.
tune="--xla_gpu_per_fusion_autotune_cache_dir=/tmp/mtan_jax_autotune"
if XLA_FLAGS="${XLA_FLAGS:-} $tune" "$py" -c "import jax; jax.numpy.zeros(1).block_until_ready()" \
    >/dev/null 2>&1; then
  export XLA_FLAGS="${XLA_FLAGS:-} $tune"
fi
"$py" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$out/log.txt"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm \
  --format=csv,noheader | tee -a "$out/log.txt"

skipped=()
job() {  # job NAME COMMAND...: runs COMMAND (output to log.txt) if the budget allows
  local name="$1" left=$((budget - (SECONDS - start)))
  shift
  if [ "$left" -le 20 ]; then
    skipped+=("$name")
    return
  fi
  echo "== $name ($((SECONDS - start)) s in, $left s left)" | tee -a "$out/log.txt"
  timeout "$left" "$@" >>"$out/log.txt" 2>&1
  local status=$?
  [ "$status" -eq 0 ] ||
    echo "   $name: exit status $status (124 = out of time)" | tee -a "$out/log.txt"
}
train() {  # train NAME [flags]: one configuration of benchmarks/train_step.py
  local name="$1"
  shift
  job "$name" "$py" benchmarks/train_step.py --steps=20 --warmup=3 \
    --json="$out/train_step.jsonl" "$@" "${extra[@]}"
}
profile() {  # profile NAME [flags]: benchmarks/profile_step.py, its report to profile_NAME.txt
  local name="$1"
  shift
  job "profile $name" bash -c '"$1" benchmarks/profile_step.py --steps=5 "${@:2}" > "$0"' \
    "$out/profile_$name.txt" "$py" "$@" "${extra[@]}"
}
extra=("$@")

# The targets first: MTAN float32 at batch 8 (>= 83 images/s), bfloat16 at 16 and 8 (>= 300),
# float32 with --remat at batch 8 (peak <= 14.55 GiB), and where the time goes.
train "mtan f32 b8" --model=mtan --dtypes=float32 --batch_sizes=8
profile f32_b8 --model=mtan --dtype=float32 --batch=8
train "mtan bf16 b16" --model=mtan --dtypes=bfloat16 --batch_sizes=16
train "mtan bf16 b8" --model=mtan --dtypes=bfloat16 --batch_sizes=8
train "mtan f32 b8 remat" --model=mtan --dtypes=float32 --batch_sizes=8 --remat=true
# Then the library end to end on the device: python experiments/nyuv2.py, briefly.
if "$py" -c "import tensorflow_datasets" >/dev/null 2>&1; then
  job "training run" bash -c '"$1" experiments/nyuv2.py --weighting=uncertainty --epochs=2 \
    --synthetic_size=64,16 --workdir=/tmp/mtan_jax_run --tfds_dir=/tmp/mtan_jax_tfds \
    --overwrite --progress=false > "$0" 2>&1' "$out/training_run.txt" "$py"
else
  skipped+=("training run (tensorflow_datasets cannot be imported)")
fi
profile bf16_b16 --model=mtan --dtype=bfloat16 --batch=16
# The other models against their reference (batch 2, float32).
for model in split_standard cross_stitch dense; do
  train "$model f32 b2" --model=$model --dtypes=float32 --batch_sizes=2
done
# Then what helps choose defaults: remat elsewhere, larger batches, the evaluation step.
train "mtan bf16 b16 remat" --model=mtan --dtypes=bfloat16 --batch_sizes=16 --remat=true
profile f32_b8_remat --model=mtan --dtype=float32 --batch=8 --remat
train "mtan f32 b16 remat" --model=mtan --dtypes=float32 --batch_sizes=16 --remat=true
train "mtan eval f32 b8" --model=mtan --mode=eval --dtypes=float32 --batch_sizes=8
train "mtan eval bf16 b8" --model=mtan --mode=eval --dtypes=bfloat16 --batch_sizes=8
for model in split_standard cross_stitch dense; do
  train "$model bf16 b2" --model=$model --dtypes=bfloat16 --batch_sizes=2
done

echo "== summary ($((SECONDS - start)) s)"
for f in "$out"/profile_*.txt; do
  [ -s "$f" ] && tail -n +2 "$f" | head -16
done
if [ -s "$out/training_run.txt" ]; then
  echo "training run (last lines):"
  tail -n 8 "$out/training_run.txt"
fi
[ "${#skipped[@]}" -eq 0 ] || echo "skipped (out of budget, or as said): ${skipped[*]}"
if [ -s "$out/train_step.jsonl" ]; then
  "$py" benchmarks/train_step.py --table="$out/train_step.jsonl"
else
  echo "no configuration finished; see $out/log.txt"
  tail -n 30 "$out/log.txt"
fi
