"""The SegNet model family of the paper: MTAN and every baseline, by name."""

from mtan_jax.models.registry import MODEL_NAMES
from mtan_jax.models.registry import MODELS
from mtan_jax.models.registry import abstract_variables
from mtan_jax.models.registry import build_model
from mtan_jax.models.registry import count_parameters
from mtan_jax.models.registry import get_spec
from mtan_jax.models.registry import shared_parameter_names
from mtan_jax.models.torch_import import load_torch_state_dict

__all__ = ["MODEL_NAMES", "MODELS", "abstract_variables", "build_model", "count_parameters",
           "get_spec", "load_torch_state_dict", "shared_parameter_names"]
