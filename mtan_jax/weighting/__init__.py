"""Task-weighting schemes by name: every module of this package registers its own."""

import importlib
import pkgutil

from mtan_jax.weighting.base import REGISTRY
from mtan_jax.weighting.base import Weighting
from mtan_jax.weighting.base import build
from mtan_jax.weighting.base import option_problems
from mtan_jax.weighting.base import options
from mtan_jax.weighting.base import register

for _module in pkgutil.iter_modules(__path__):
  if _module.name != "base":
    importlib.import_module(f"{__name__}.{_module.name}")

NAMES = tuple(sorted(REGISTRY))

__all__ = ["NAMES", "REGISTRY", "Weighting", "build", "option_problems", "options", "register"]
