"""XLA's CPU option the library's programs run fastest with, set at the edge before JAX starts.

XLA's CPU backend (jaxlib 0.10 to 0.12) hands each convolution to YNNPACK (its
"individual_convolution" fusions). YNNPACK's forward convolutions are as fast as XLA's own, but
the kernel gradient it computes is several times slower than XLA's own lowering
(docs/speed.md), and MTAN's training step spends half its time in kernel gradients. `configure` turns that one fusion type off
(`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`); YNNPACK keeps the matrix
products and element-wise work it is good at (turning it off altogether is slower on small
images). The option only changes which library computes each convolution, so results agree to
float32 rounding.

XLA reads `XLA_FLAGS` once, when JAX starts its backends (the first computation), so
`configure` must run before that: the experiment scripts, the command lines and the benchmarks
call it first. A user's own setting of the option in `XLA_FLAGS` is left as it is: to keep
XLA's default, run with `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`.
An option XLA does not know stops the process at start, so it is set only for the jaxlib
versions whose XLA is known to have it (`KNOWN_JAXLIB`: checked in the 0.10.0, 0.10.2, 0.11.2
and 0.12.0.1 wheels, and in the CUDA 12 plugin 0.11.2, whose XLA reads `XLA_FLAGS` too).
"""

from __future__ import annotations

import os
from typing import MutableMapping

YNN_FUSION_OPTION = "--xla_cpu_experimental_ynn_fusion_type"
WITHOUT_YNN_CONVOLUTIONS = f"{YNN_FUSION_OPTION}=-individual_convolution"
KNOWN_JAXLIB = ((0, 10), (0, 13))  # [first, past the last) (major, minor) with the option


def _jaxlib_version() -> tuple[int, int]:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  major, minor = metadata.version("jaxlib").split(".")[:2]
  return int(major), int(minor)


def configure(environ: MutableMapping[str, str] | None = None,
              jaxlib_version: tuple[int, int] | None = None) -> str | None:
  """Adds `WITHOUT_YNN_CONVOLUTIONS` to `environ["XLA_FLAGS"]` (`os.environ` by default) unless
  the flags already set the option or this jaxlib is not one known to have it. Returns the option
  added, or None where nothing was added. Call it before JAX's first computation; it has no
  effect on backends already started."""
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  if YNN_FUSION_OPTION.lstrip("-") in flags:
    return None
  version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
  first, past_last = KNOWN_JAXLIB
  if not first <= version < past_last:
    return None
  environ["XLA_FLAGS"] = f"{flags} {WITHOUT_YNN_CONVOLUTIONS}".strip()
  return WITHOUT_YNN_CONVOLUTIONS
