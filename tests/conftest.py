"""Shared test settings.

Eight host CPU devices so that pmap / cross-device code is tested for real, and float32 matmuls at
full precision so numpy comparisons are tight. Both must be set before JAX initialises its backend.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
