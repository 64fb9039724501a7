"""NYUv2: 13-class segmentation, depth and surface normals (the paper's Table 3).

  python experiments/nyuv2.py --weighting=uncertainty                  # synthetic scenes, minutes
  python experiments/nyuv2.py --data_dir=~/data/nyuv2 --model=mtan --weighting=dwa   # the paper

Flags: python experiments/nyuv2.py --help. Results go to --workdir (config.json, metrics.jsonl,
TensorBoard events, checkpoints, summary.json).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtan_jax import cli  # noqa: E402

if __name__ == "__main__":
  cli.main(sys.argv[1:], dataset="nyuv2")
