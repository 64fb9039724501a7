"""NYUv2: 13-class segmentation, depth and surface normals (the paper's Table 3).

  python experiments/nyuv2.py --weighting=uncertainty                  # synthetic scenes, minutes
  python experiments/nyuv2.py --data_dir=~/data/nyuv2 --model=mtan --weighting=dwa   # the paper

Flags: python experiments/nyuv2.py --help. Results go to --workdir (config.json, metrics.jsonl,
TensorBoard events, checkpoints, summary.json).
"""

import os
import signal
import sys

# Ctrl-C while the libraries load ends the process quietly (no traceback of an import);
# cli.main restores Python's handler and says what an interruption leaves behind.
signal.signal(signal.SIGINT, signal.SIG_DFL)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtan_jax import huge_pages  # noqa: E402

if __name__ == "__main__":
  huge_pages.restart_with_huge_pages()  # first: the restart repeats what came before
  from mtan_jax.dense import cli
  cli.main(sys.argv[1:], dataset="nyuv2")
