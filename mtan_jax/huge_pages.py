"""Transparent huge pages for the arrays XLA allocates on the host, asked for at the edge.

XLA's CPU runtime allocates every intermediate array of a step with the C library's `malloc`;
arrays this size (tens to hundreds of MB for MTAN at 288x384) are fresh `mmap`s, given back at the
end of the step, so each step touches all its memory anew, one 4 KiB page fault at a time. With
glibc's malloc asking the kernel for 2 MiB transparent huge pages (the tunable
`glibc.malloc.hugetlb=1`, glibc >= 2.35) a step takes far fewer faults and less time (figures:
docs/speed.md).

glibc reads its tunables (`GLIBC_TUNABLES`) once, when the process starts, so the setting cannot
be made from inside a running Python: `restart_with_huge_pages` restarts the process (`exec`, same
process id, same arguments) with it added. The experiment scripts, the console scripts and the
benchmarks call it first thing. It does nothing where it would change nothing or cannot apply:
outside Linux and glibc >= 2.35, where the kernel's transparent huge pages are `always` (already
used) or `never` (refused), and where `GLIBC_TUNABLES` already says `glibc.malloc.hugetlb`
(a user's own choice; `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` keeps glibc's default).
"""

from __future__ import annotations

import os
import pathlib
import platform
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(setting: pathlib.Path = THP_SETTING) -> str | None:
  """The kernel's transparent huge page mode ("always", "madvise", "never"): the bracketed word of
  `setting`, e.g. "always [madvise] never"; None where it cannot be read."""
  try:
    text = setting.read_text()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def tunables_with_huge_pages(environ: Mapping[str, str], libc: tuple[str, str],
                             mode: str | None) -> str | None:
  """The value of `GLIBC_TUNABLES` that adds `glibc.malloc.hugetlb=1` to `environ`'s, or None
  where it is not to be set: a C library other than glibc >= 2.35 (`libc` as
  `platform.libc_ver()` says it), a kernel mode other than "madvise", or a setting of the tunable
  already there."""
  name, version = libc
  try:
    numbers = tuple(int(part) for part in version.split(".")[:2])
  except ValueError:
    return None
  if name != "glibc" or numbers < (2, 35) or mode != "madvise":
    return None
  current = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in current:
    return None
  return f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"


def restart_with_huge_pages() -> None:
  """Restarts this Python process, same interpreter, options and arguments, with
  `tunables_with_huge_pages`'s `GLIBC_TUNABLES`; returns (does nothing) where that is None or the
  program cannot be restarted as it was started (from standard input or interactively). Call it
  before doing anything that the restart would repeat."""
  if sys.platform != "linux" or sys.argv[:1] in ([], [""], ["-"]):
    return
  value = tunables_with_huge_pages(os.environ, platform.libc_ver(), thp_mode())
  if value is None:
    return
  os.environ["GLIBC_TUNABLES"] = value
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
