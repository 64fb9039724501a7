"""The XLA CPU option set at the edge (mtan_jax/xla_cpu.py): what it adds to `XLA_FLAGS`, when it
leaves them alone, that this jaxlib's XLA takes it and computes convolutions without YNNPACK, and
that the command lines set it before JAX starts."""

import json
import os
import subprocess
import sys

import pytest

from mtan_jax.dense import cli
from mtan_jax import xla_cpu
from mtan_jax.decathlon import cli as decathlon_cli
from tests.test_train import ROOT

OPTION = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def test_the_option_joins_the_flags_already_set():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert xla_cpu.configure(env, jaxlib_version=(0, 10)) == OPTION
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {OPTION}"
  env = {}
  assert xla_cpu.configure(env, jaxlib_version=(0, 12)) == OPTION
  assert env == {"XLA_FLAGS": OPTION}


def test_a_users_own_setting_of_the_option_is_kept():
  for own in ("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
              "--xla_cpu_experimental_ynn_fusion_type="):
    env = {"XLA_FLAGS": own}
    assert xla_cpu.configure(env, jaxlib_version=(0, 10)) is None
    assert env == {"XLA_FLAGS": own}


@pytest.mark.parametrize("version", [(0, 9), (0, 13), (1, 0)])
def test_a_jaxlib_not_known_to_have_the_option_gets_nothing(version):
  """XLA stops the process at start on an option it does not know."""
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert xla_cpu.configure(env, jaxlib_version=version) is None
  assert env == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


# Compiles a 3x3 convolution's gradients after `configure` and prints how many of its
# convolutions XLA handed to YNNPACK: those inside the computation a `__ynn_fusion` calls.
_PROBE = """
import json, re
from mtan_jax import xla_cpu
added = xla_cpu.configure()
import jax, jax.numpy as jnp
from jax import lax
def loss(kernel, x):
  return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
x = jnp.ones((2, 48, 64, 16)); kernel = jnp.ones((3, 3, 16, 32))
text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(kernel, x).compile().as_text()
computations, current = {}, None
for line in text.splitlines():
  header = re.match(r"^(?:ENTRY )?%([\\w.\\-]+) ", line)
  if header and line.rstrip().endswith("{"):
    current = computations.setdefault(header.group(1), [])
  elif current is not None:
    current.append(line)
ynn_called = re.findall(r"calls=%([\\w.\\-]+).*__ynn_fusion", text)
print(json.dumps({"added": added,
                  "ynn_convolutions": sum(" convolution(" in line for name in ynn_called
                                          for line in computations.get(name, [])),
                  "convolutions": text.count(" convolution(")}))
"""


def _probe(xla_flags: str) -> dict:
  env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_this_jaxlibs_xla_takes_the_option_and_keeps_convolutions_from_ynnpack():
  if xla_cpu.configure({}) is None:
    pytest.skip("this jaxlib is not one known to have the option")
  configured = _probe("")
  assert configured["added"] == OPTION
  assert configured["ynn_convolutions"] == 0
  default = _probe("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution")
  assert default["added"] is None  # the user's own setting: XLA's default
  assert configured["convolutions"] == default["convolutions"] == 2  # the two gradients
  if default["ynn_convolutions"] == 0:
    pytest.skip("XLA does not hand convolutions to YNNPACK on this CPU")


@pytest.mark.parametrize("main", [lambda: cli.main(["--epochs=-1"], "nyuv2"),
                                  lambda: decathlon_cli.main(["--epochs=-1"])],
                         ids=["dense", "decathlon"])
def test_the_command_lines_set_the_option_first(main, monkeypatch):
  """Before anything else, so before JAX's first computation (which reads `XLA_FLAGS`)."""
  class Called(Exception):
    pass

  def configure(*_):
    raise Called

  monkeypatch.setattr(xla_cpu, "configure", configure)
  with pytest.raises(Called):
    main()


def test_importing_the_command_lines_starts_no_jax_backend():
  """The option would come too late if an import computed with JAX."""
  probe = ("import mtan_jax.dense.cli, mtan_jax.decathlon.cli, mtan_jax.dense.train, mtan_jax.decathlon.train\n"
           "from jax._src import xla_bridge\n"
           "print(xla_bridge.backends_are_initialized())")
  done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1] == "False"
