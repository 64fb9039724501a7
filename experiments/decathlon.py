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

from mtan_jax.decathlon import cli  # noqa: E402

if __name__ == "__main__":
  cli.main(sys.argv[1:])
