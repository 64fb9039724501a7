"""A training run for the fault tests, in its own process so that it can be killed for real:

    python fault_worker.py [--hang_on_save=N] [--pause_at=EPOCH,STEP] [--decathlon] FLAGS...

It runs `cli.main(FLAGS, "nyuv2")`, as experiments/nyuv2.py does (exit status 128 + signal after an
interruption); with `--decathlon`, the Decathlon's `main(FLAGS)` on the two small tasks of the
tests (`small_decathlon_tasks`) instead of the stand-in's ten. Two hooks let the parent act at a known moment; each announces itself with a line
"FAULT_WORKER: ..." on stdout:
- `--hang_on_save=N`: the N-th checkpoint save stops just before orbax commits it (its temporary
  folder written, not yet renamed; the line gives its path) and waits there for the parent's kill.
- `--pause_at=EPOCH,STEP`: the input pipeline stops before handing out that batch of the training
  epoch and reads a line from stdin; the parent sends its signal, then that line, so the signal
  arrives while the step before it is in flight.
"""

import argparse
import asyncio
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--hang_on_save", type=int, default=0)
  parser.add_argument("--pause_at", default="")
  parser.add_argument("--decathlon", action="store_true")
  args, flags = parser.parse_known_args()
  sys.path.insert(0, str(ROOT))

  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_default_matmul_precision", "highest")  # the programs of the test process
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel

  from mtan_jax.dense import cli  # pylint: disable=import-outside-toplevel
  from mtan_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  def announce(text):
    print(f"FAULT_WORKER: {text}", flush=True)

  if args.hang_on_save:
    commit = atomicity.AtomicRenameTemporaryPath.finalize
    saves = []

    async def hanging_commit(self, *a, **k):
      if pathlib.Path(str(self.get())).parent.name == "checkpoints":  # a step, not one of its items
        saves.append(self)
      if len(saves) == args.hang_on_save and saves[-1] is self:
        announce(f"committing {self.get()}")
        await asyncio.Event().wait()  # never set: the save stays uncommitted until the kill
      return await commit(self, *a, **k)

    atomicity.AtomicRenameTemporaryPath.finalize = hanging_commit
  if args.pause_at:
    pause_epoch, pause_step = (int(v) for v in args.pause_at.split(","))
    clean_epoch = pipeline.Loader.epoch

    def paused_epoch(self, epoch, start_step=0):
      for step, batch in enumerate(clean_epoch(self, epoch, start_step), start=start_step):
        if self.shuffle and (epoch, step) == (pause_epoch, pause_step):
          announce("paused")
          sys.stdin.readline()
        yield batch

    pipeline.Loader.epoch = paused_epoch

  if args.decathlon:
    from mtan_jax.decathlon import cli as decathlon_cli  # pylint: disable=import-outside-toplevel
    from mtan_jax.decathlon import data as data_lib  # pylint: disable=import-outside-toplevel
    data_lib.synthetic = lambda seed=0, size=None: small_decathlon_tasks(seed)
    decathlon_cli.main(flags)
  else:
    cli.main(flags, "nyuv2")


def small_decathlon_tasks(seed=0, size=16):
  """Two tasks of the Decathlon's stand-in (the first, which is dropped, and svhn), a tenth of
  their data, at 16x16."""
  from mtan_jax.decathlon import data as data_lib  # pylint: disable=import-outside-toplevel
  return tuple(data_lib.synthetic_task(i, seed=seed, size=size, fraction=0.1) for i in (0, 7))


if __name__ == "__main__":
  main()
