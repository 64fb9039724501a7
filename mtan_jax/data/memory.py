"""Keeps glibc from handing multi-megabyte numpy buffers back to the OS after every example."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def keep_freed_memory() -> bool:
  """Pins glibc's mmap and trim thresholds at 256 MiB for this process (once; idempotent).

  By default glibc serves allocations of a few MB with mmap, or trims them off the heap, and gives
  them back on free, so every example's arrays are page-faulted in again. How often that happens
  depends on the allocation history (its thresholds adapt), which made the same code run at very
  different speeds from one process to the next (figures in the README's speed section). Freed
  buffers are then kept for reuse; the process's resident memory no longer shrinks after a peak.
  Returns False (and changes nothing) where the C library is not glibc.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 256 << 20)
                and libc.mallopt(m_mmap_threshold, 256 << 20))
  except (OSError, AttributeError):
    return False
