"""The Visual Decathlon (the paper's many-to-many experiment): one MTAN on a WRN-28-4 over ten
classification datasets, one task per batch.

  python experiments/decathlon.py                 # the built-in synthetic stand-in, minutes on a CPU

Flags: python experiments/decathlon.py --help. Results go to --workdir (config.json, metrics.jsonl,
checkpoints, summary.json).
"""

import os
import signal
import sys

signal.signal(signal.SIGINT, signal.SIG_DFL)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtan_jax import huge_pages  # noqa: E402

if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()  # first: the restart repeats what came before
  from mtan_jax.decathlon import cli
  cli.main(sys.argv[1:])
