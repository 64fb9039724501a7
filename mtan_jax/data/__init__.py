"""Data: built-in synthetic scenes, the NYUv2 / CityScapes releases through TFDS, the input pipeline."""

from mtan_jax.data.builders import builder
from mtan_jax.data.builders import prepare
from mtan_jax.data.pipeline import DataConfig
from mtan_jax.data.pipeline import DataError
from mtan_jax.data.pipeline import Loader
from mtan_jax.data.pipeline import open_split
from mtan_jax.data.release import ReleaseError

__all__ = ["DataConfig", "DataError", "Loader", "ReleaseError", "builder", "open_split", "prepare"]
