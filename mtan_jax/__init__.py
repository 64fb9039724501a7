"""mtan-jax: MTAN (Liu, Johns, Davison, CVPR 2019) and its baselines in JAX / Flax."""

__version__ = "0.1.0"
