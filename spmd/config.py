"""spmd.config: JAX-style global settings (`spmd.config.update("jax_enable_x64", False)`).

jax_enable_x64 (alias x64): 64-bit dtypes allowed. JAX turns it off by default (float64
numpy inputs become float32); spmd keeps it on unless SPMD_ENABLE_X64=0 is set or
config.update turns it off, because the project's tests and examples compare with float64
references (see the report of issue 21).
"""

from __future__ import annotations

from typing import Any

from spmd import dtypes
from spmd.errors import ConfigError
from spmd.validate import env_choice

_ALIASES = {"jax_enable_x64": "jax_enable_x64", "x64": "jax_enable_x64"}


class Config:
    """The settings; read them as attributes, change them with update(name, value)."""

    def __init__(self) -> None:
        dtypes.set_x64(env_choice("SPMD_ENABLE_X64", ("1", "0"), "1") == "1")

    @property
    def jax_enable_x64(self) -> bool:
        return dtypes.X64["enabled"]

    @property
    def x64(self) -> bool:
        return self.jax_enable_x64

    def update(self, name: str, value: Any) -> None:
        """Set one setting; an unknown name or a non-bool value is an error."""
        key = _ALIASES.get(name)
        if key is None:
            raise ConfigError(f"unknown setting {name!r}",
                              hint=f"spmd.config knows {sorted(_ALIASES)}")
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r}")
        dtypes.set_x64(value)

    def read(self, name: str) -> Any:
        key = _ALIASES.get(name)
        if key is None:
            raise ConfigError(f"unknown setting {name!r}",
                              hint=f"spmd.config knows {sorted(_ALIASES)}")
        return getattr(self, key)


config = Config()
