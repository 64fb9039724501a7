"""Transparent huge pages asked for at the edge (mtan_jax/huge_pages.py): when the restart happens,
the `GLIBC_TUNABLES` it sets, and that it restarts the same program with the same arguments."""

import os
import platform
import subprocess
import sys

import pytest

from mtan_jax import huge_pages
from tests.test_train import ROOT

GLIBC = ("glibc", "2.36")


@pytest.mark.parametrize("text, mode", [("always [madvise] never\n", "madvise"),
                                        ("[always] madvise never\n", "always"),
                                        ("always madvise [never]\n", "never"),
                                        ("garbled\n", None)])
def test_the_kernels_mode_is_the_bracketed_word(tmp_path, text, mode):
  setting = tmp_path / "enabled"
  setting.write_text(text)
  assert huge_pages.thp_mode(setting) == mode
  assert huge_pages.thp_mode(tmp_path / "missing") is None


def test_the_tunable_is_added_to_those_set():
  assert huge_pages.tunables_with_huge_pages({}, GLIBC, "madvise") == "glibc.malloc.hugetlb=1"
  assert huge_pages.tunables_with_huge_pages(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, ("glibc", "2.35"), "madvise") == (
          "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


@pytest.mark.parametrize("environ, libc, mode", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise"),  # the user's own setting
    ({}, ("glibc", "2.34"), "madvise"),  # no such tunable before glibc 2.35
    ({}, ("", ""), "madvise"),  # another C library (musl, macOS)
    ({}, GLIBC, "always"),  # the kernel uses huge pages already
    ({}, GLIBC, "never"),  # nor ever will
    ({}, GLIBC, None),  # no transparent huge pages in this kernel
])
def test_nothing_is_set_where_it_would_change_nothing(environ, libc, mode):
  assert huge_pages.tunables_with_huge_pages(environ, libc, mode) is None


def test_the_program_restarts_once_with_its_arguments_and_the_tunable(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if huge_pages.tunables_with_huge_pages(env, platform.libc_ver(), huge_pages.thp_mode()) is None:
    pytest.skip("no restart on this machine: not glibc >= 2.35 with huge pages on madvise")
  program = tmp_path / "program.py"
  program.write_text(
      "import os, sys\n"
      f"sys.path.insert(0, {str(ROOT)!r})\n"
      "from mtan_jax import huge_pages\n"
      "print('started', os.getpid(), flush=True)\n"
      "huge_pages.restart_with_huge_pages()\n"
      "print('running', os.getpid(), os.environ['GLIBC_TUNABLES'], sys.argv[1:], flush=True)\n")
  done = subprocess.run([sys.executable, "-u", str(program), "--flag=a b", "last"], env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()
  pid = lines[0].split()[1]
  assert lines == [f"started {pid}", f"started {pid}",  # the same process, started twice
                   f"running {pid} glibc.malloc.hugetlb=1 ['--flag=a b', 'last']"]


def test_a_users_own_setting_means_no_restart(tmp_path):
  program = tmp_path / "program.py"
  program.write_text(
      "import sys\n"
      f"sys.path.insert(0, {str(ROOT)!r})\n"
      "from mtan_jax import huge_pages\n"
      "print('started', flush=True)\n"
      "huge_pages.restart_with_huge_pages()\n")
  done = subprocess.run([sys.executable, str(program)],
                        env={**os.environ, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.splitlines() == ["started"]
