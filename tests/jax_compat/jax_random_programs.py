"""Random numbers as a JAX user draws them (jax.random with JAX 0.10's default partitionable
threefry): keys, split, fold_in, bits, uniform and normal, eagerly and under jit. `api` is
jax_programs.Api (JAX or spmd)."""

from __future__ import annotations

from typing import Any


def random_numbers(api: Any) -> dict[str, Any]:
    r, jnp = api.jax.random, api.jnp
    k = r.key(0)
    keys = r.split(k, 3)
    return {
        "key": r.key_data(r.key(2**40 + 3)),
        "split": r.key_data(keys),
        "split_again": r.key_data(r.split(keys[1])),
        "fold_in": r.key_data(r.fold_in(r.key(5), 9)),
        "bits32": r.bits(k, (5, 3)),
        "bits8": r.bits(keys[0], (7,), jnp.uint8),
        "bits16": r.bits(keys[0], (2, 3), jnp.uint16),
        "uniform": r.uniform(keys[1], (4, 6), minval=-2.0, maxval=3.0),
        "uniform_bf16": r.uniform(k, (16,), jnp.bfloat16),
        "uniform_f16": r.uniform(k, (16,), jnp.float16),
        "normal": r.normal(keys[2], (64,)),
        "normal_f16": r.normal(keys[2], (8,), jnp.float16),
        "normal_jit": api.jax.jit(lambda key: r.normal(key, (8, 8)))(r.fold_in(k, 3)),
        "bernoulli": r.bernoulli(keys[1], 0.3, (32,)),
    }
