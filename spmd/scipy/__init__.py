"""spmd.scipy: the scipy functions JAX offers as jax.scipy, composed of spmd.numpy."""

from spmd.scipy import special

__all__ = ["special"]
