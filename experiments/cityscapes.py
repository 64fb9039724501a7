"""CityScapes: 7-class (or 19-class) segmentation and inverse depth (the paper's Table 1).

  python experiments/cityscapes.py --weighting=dwa                       # synthetic streets
  python experiments/cityscapes.py --data_dir=~/data/cityscapes --resolution=128x256 --batch_size=8

Flags: python experiments/cityscapes.py --help.
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
  cli.main(sys.argv[1:], dataset="cityscapes")
