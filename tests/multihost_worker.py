"""One process of the multi-host test:
`python multihost_worker.py WORKDIR TFDS PORT COUNT INDEX [decathlon]`.

It joins a jax.distributed run of COUNT processes on localhost (gloo CPU collectives), trains a tiny
run (dense, or the Decathlon's on two small tasks) and saves its final parameters to
WORKDIR/params_INDEX.npz.
"""

import sys

import jax


def config(workdir, tfds_dir, index):
  """The tiny run every process trains (the test runs it in its own process too, on 4 devices)."""
  import pathlib  # pylint: disable=import-outside-toplevel

  from mtan_jax.dense.config import TrainConfig  # pylint: disable=import-outside-toplevel
  from mtan_jax.data.pipeline import DataConfig  # pylint: disable=import-outside-toplevel
  return TrainConfig(model="split_standard", weighting="uncertainty", epochs=2, batch_size=4,
                     lr=1e-3, width_mult=1 / 16, workdir=str(workdir), progress=False, workers=1,
                     steps_per_epoch=1,
                     data=DataConfig(tfds_dir=f"{tfds_dir}_{pathlib.Path(workdir).name}_{index}",
                                     resolution=(32, 32), synthetic_size=(8, 4), augment=True))


def decathlon_config(workdir):
  """The tiny Decathlon run every process trains (the test runs it on 4 devices too). Small
  learning rates: at the reference's 0.1 this tiny network's losses drift apart by a percent
  within five steps from float32 rounding alone (a different convolution library suffices), which
  would hide the difference the test looks for (a host reading the wrong share)."""
  from mtan_jax.decathlon.config import DecathlonConfig  # pylint: disable=import-outside-toplevel
  return DecathlonConfig(depth=10, widen_factor=1, epochs=2, batch_size=8, lr=1e-3,
                         lr_after_drop=1e-4, lr_halve_every=1,
                         drop_first_task_epoch=1, progress=False, settle="train",
                         workdir=str(workdir))


def decathlon_tasks():
  from tests.fault_worker import small_decathlon_tasks  # pylint: disable=import-outside-toplevel
  return small_decathlon_tasks()


def save_params(result, workdir, index):
  import pathlib  # pylint: disable=import-outside-toplevel

  import flax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  flat = flax.traverse_util.flatten_dict(result["state"].params, sep="/")
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  np.savez(f"{workdir}/params_{index}.npz", **{k: np.asarray(v) for k, v in flat.items()})


def main(workdir, tfds_dir, port, count, index, kind="dense"):
  jax.config.update("jax_default_matmul_precision", "highest")
  cache = __import__("pathlib").Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla"
  jax.config.update("jax_compilation_cache_dir", str(cache))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=count,
                             process_id=index)
  if kind == "decathlon":
    from mtan_jax.decathlon import train as decathlon_train  # pylint: disable=import-outside-toplevel
    decathlon_train.run(decathlon_config(workdir), decathlon_tasks())
    return
  from mtan_jax.dense import train  # pylint: disable=import-outside-toplevel
  save_params(train.run(config(workdir, tfds_dir, index)), workdir, index)


if __name__ == "__main__":
  sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
       *sys.argv[6:])
