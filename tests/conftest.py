"""Shared test settings.

Eight host CPU devices so that pmap / cross-device code is tested for real, and float32 matmuls at
full precision so numpy comparisons are tight. Both must be set before JAX initialises its backend.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()
# The tests' programs are tiny: compiling them dominates the suite's time, running them does not.
# LLVM's optimisation level 0 compiles them about a quarter faster (the results are the same: it
# changes how the machine code is optimised, not what it computes).
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

# The CPU option training runs with (mtan_jax/xla_cpu.py), so that the tests compute as runs do;
# the processes the tests start inherit it.
from mtan_jax import xla_cpu  # noqa: E402

xla_cpu.configure()

import gc  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Compiled programs are kept on disk: tests that build the same model (and later runs of the suite)
# skip XLA's compilation, which dominates the suite's time on a CPU. Every program is kept, even the
# small ones of op-by-op execution: the processes the tests start (experiment script, fault and
# multi-host workers) read them instead of compiling a model's initialisation op by op (~11 s each).
XLA_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla"
jax.config.update("jax_compilation_cache_dir", str(XLA_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops JAX's in-memory caches of compiled programs after each test file. Every executable XLA
  compiles on the CPU keeps memory mappings of its code until it is freed, and a test process that
  runs many files accumulated ~50,000 of them, near Linux's default vm.max_map_count (65,530): the
  next compilation then crashed the process (a segfault or abort inside XLA). Later files that need
  a program again read it from the on-disk cache above."""
  yield
  jax.clear_caches()
  gc.collect()
