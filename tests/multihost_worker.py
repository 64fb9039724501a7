"""One process of the multi-host test: `python multihost_worker.py WORKDIR TFDS PORT COUNT INDEX`.

It joins a jax.distributed run of COUNT processes on localhost (gloo CPU collectives), trains a tiny
run and saves its final parameters to WORKDIR/params_INDEX.npz.
"""

import sys

import jax


def config(workdir, tfds_dir, index):
  """The tiny run every process trains (the test runs it in its own process too, on 4 devices)."""
  import pathlib  # pylint: disable=import-outside-toplevel

  from mtan_jax.config import TrainConfig  # pylint: disable=import-outside-toplevel
  from mtan_jax.data.pipeline import DataConfig  # pylint: disable=import-outside-toplevel
  return TrainConfig(model="split_standard", weighting="uncertainty", epochs=2, batch_size=4,
                     lr=1e-3, width_mult=1 / 16, workdir=str(workdir), progress=False, workers=1,
                     steps_per_epoch=1,
                     data=DataConfig(tfds_dir=f"{tfds_dir}_{pathlib.Path(workdir).name}_{index}",
                                     resolution=(32, 32), synthetic_size=(8, 4), augment=True))


def save_params(result, workdir, index):
  import pathlib  # pylint: disable=import-outside-toplevel

  import flax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  flat = flax.traverse_util.flatten_dict(result["state"].params, sep="/")
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  np.savez(f"{workdir}/params_{index}.npz", **{k: np.asarray(v) for k, v in flat.items()})


def main(workdir, tfds_dir, port, count, index):
  jax.config.update("jax_default_matmul_precision", "highest")
  cache = __import__("pathlib").Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla"
  jax.config.update("jax_compilation_cache_dir", str(cache))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=count,
                             process_id=index)
  from mtan_jax import train  # pylint: disable=import-outside-toplevel
  save_params(train.run(config(workdir, tfds_dir, index)), workdir, index)


if __name__ == "__main__":
  sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
