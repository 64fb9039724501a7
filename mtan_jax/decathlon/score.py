"""The Visual Decathlon's score: each dataset's test error against twice a baseline's error.

    S = sum_d 1000 * max(0, 1 - E_d / E_d^max)^2,   E_d^max = 2 * (1 - baseline top-1 accuracy of d)

(Rebuffi et al. 2017, "Learning multiple visual domains with residual adapters", the challenge's
scoring: alpha_d = 1000 (E_d^max)^-gamma, gamma = 2). A perfect classifier scores 1000 on a dataset,
10,000 in all; the baseline, a ResNet fine-tuned from ImageNet to each dataset, scores 250 on
each, 2,500 in all; an error of twice the baseline's or more scores 0.
"""

from __future__ import annotations

from typing import Mapping

from mtan_jax import decathlon

GAMMA = 2.0
PER_DATASET = 1000.0
# The baseline's top-1 test accuracies (the fine-tuned ResNet of Rebuffi et al. 2017), which set
# each dataset's E_d^max.
BASELINE_ACCURACY = {
    "imagenet12": 0.5987, "aircraft": 0.6034, "cifar100": 0.8212, "daimlerpedcls": 0.9282,
    "dtd": 0.5553, "gtsrb": 0.9753, "omniglot": 0.8769, "svhn": 0.9655, "ucf101": 0.5120,
    "vgg-flowers": 0.8141,
}


def dataset_score(name: str, accuracy: float) -> float:
  """Dataset `name`'s share of the score for top-1 test `accuracy` in [0, 1]: 0 to 1000."""
  if name not in BASELINE_ACCURACY:
    raise ValueError(f"Decathlon score: expected a dataset from {decathlon.NAMES}, found {name!r}")
  if not 0.0 <= accuracy <= 1.0:
    raise ValueError(f"Decathlon score of {name}: expected an accuracy in [0, 1], found {accuracy}")
  worst = 2.0 * (1.0 - BASELINE_ACCURACY[name])
  return PER_DATASET * max(0.0, 1.0 - (1.0 - accuracy) / worst) ** GAMMA


def decathlon_score(accuracies: Mapping[str, float]) -> tuple[float, dict[str, float]]:
  """(the total, {dataset: its share}) for top-1 test accuracies {dataset: accuracy in [0, 1]} of
  every Decathlon dataset (a missing one is an error: the score is over all ten)."""
  missing = [name for name in decathlon.NAMES if name not in accuracies]
  if missing:
    raise ValueError(f"Decathlon score: expected an accuracy for every dataset, missing {missing}")
  shares = {name: dataset_score(name, accuracies[name]) for name in decathlon.NAMES}
  return sum(shares.values()), shares
