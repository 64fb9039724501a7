"""The package as a user installs it: a wheel with its data and console scripts, in a fresh venv."""

import json
import pathlib
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_wheel_installs_into_a_fresh_venv_with_its_data_and_console_scripts(tmp_path):
  source = tmp_path / "source"  # a copy, so that building leaves nothing in the checkout
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, source / name)
  shutil.copytree(ROOT / "mtan_jax", source / "mtan_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                 check=True, capture_output=True, text=True, timeout=300)
  (wheel,) = (tmp_path / "dist").glob("mtan_jax-*.whl")
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
  assert "mtan_jax/paper_results.md" in names  # `report --paper` reads it
  requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
              if line.startswith("Requires-Dist: ")]
  runtime = [r for r in requires if "extra ==" not in r]
  assert {r.split(">=")[0] for r in runtime} >= {"jax", "flax", "optax", "orbax-checkpoint",
                                                  "tensorflow-datasets", "chex"}
  assert not any(r.startswith(("pytest", "matplotlib")) for r in runtime), runtime
  assert any(r.startswith("matplotlib") and 'extra == "plot"' in r for r in requires)

  venv = tmp_path / "fresh"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                  "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
  # Its dependencies from this environment, after the venv's own packages (offline test).
  (own,) = (venv / "lib").glob("python3.*/site-packages")
  (own / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

  def run(*command):
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)

  where = run(str(python), "-c", "import mtan_jax; print(mtan_jax.__file__)")
  assert where.stdout.strip().startswith(str(own)), where  # the wheel's copy, not the checkout
  helped = run(str(venv / "bin" / "mtan-report"), "--help")
  assert helped.returncode == 0 and "--paper" in helped.stdout, helped.stderr[-2000:]
  counts = run(str(venv / "bin" / "mtan-params"), "--json")
  assert counts.returncode == 0, counts.stderr[-2000:]
  assert json.loads(counts.stdout)["mtan"] == 44_229_076
  paper = run(str(python), "-c", "from mtan_jax import report; print(sorted(report.paper_rows()))")
  assert paper.stdout.strip() == "['cityscapes', 'nyuv2']", paper.stderr[-2000:]
  for script in ("mtan-train-nyuv2", "mtan-train-cityscapes", "mtan-train-decathlon", "mtan-plot"):
    result = run(str(venv / "bin" / script), "--help")
    assert result.returncode == 0, (script, result.stderr[-2000:])
