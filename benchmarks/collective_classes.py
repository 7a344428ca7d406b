"""Issue 22's program classes for collective_bytes.py: each pair of layouts a reshape,
transpose, slice, concatenate, pad, gather or contraction meets, one-hot / take_along_axis
cross-entropies and an FSDP bfloat16 training step. Same programs on ours and JAX."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import models as M
import numpy as np

BF16 = ml_dtypes.bfloat16
FSDP = ("data", "model")  # parameters and batch both over all 8 devices


@dataclass
class Program:
    """A function of a Framework plus numpy args, their specs and optional output specs."""

    name: str
    build: Callable[[M.Framework], Callable[..., Any]]
    args: list[Any]
    in_specs: list[Any]
    out_specs: Any = None


def lax_of(fw: M.Framework) -> Any:
    if fw.name == "jax":
        import jax

        return jax.lax
    import spmd

    return spmd.lax


def fsdp_step(fw: M.Framework) -> Callable[..., Any]:
    """Layer norm + MLP in bfloat16 with parameters and batch sharded over all devices."""
    np_ = fw.np

    def loss(p: dict[str, Any], x: Any, y: Any) -> Any:
        centred = x - np_.mean(x, axis=-1, keepdims=True)
        var = np_.mean(centred * centred, axis=-1, keepdims=True)
        h = centred / np_.sqrt(var + 1e-5) * p["g"]
        out = fw.nn.relu(h @ p["w1"]) @ p["w2"]
        return np_.mean(((out - y) ** 2).astype(np_.float32))

    def step(p: dict[str, Any], x: Any, y: Any) -> Any:
        value, grads = fw.value_and_grad(loss)(p, x, y)
        return fw.tree_map(lambda a, g: a - (0.1 * g).astype(a.dtype), p, grads), value

    return step


def cross_entropy_take(fw: M.Framework) -> Callable[..., Any]:
    def loss(logits: Any, t: Any) -> Any:
        lp = fw.nn.log_softmax(logits, axis=-1)
        return -fw.np.mean(fw.np.take_along_axis(lp, t[:, :, None], axis=-1))

    return fw.value_and_grad(loss)


def cross_entropy_one_hot(fw: M.Framework) -> Callable[..., Any]:
    def loss(logits: Any, t: Any) -> Any:
        lp = fw.nn.log_softmax(logits, axis=-1)
        return -fw.np.mean(fw.np.sum(lp * fw.nn.one_hot(t, logits.shape[-1]), axis=-1))

    return fw.value_and_grad(loss)


def embedding_step(fw: M.Framework) -> Callable[..., Any]:
    """Embedding lookup + projection, gradients of the table and the projection."""

    def loss(table: Any, idx: Any, w: Any) -> Any:
        return fw.np.sum(fw.np.tanh(fw.np.take(table, idx, axis=0) @ w))

    return fw.value_and_grad(loss, argnums=(0, 2))


def class_programs(scale: int) -> list[Program]:
    a, b = M.rand((16, 32 * scale), 40), M.rand((16, 32 * scale), 41)
    x3, w = M.rand((8, 16, 32 * scale), 42), M.rand((32 * scale, 48 * scale), 43)
    table = M.rand((64, 32 * scale), 44)
    idx = np.random.default_rng(56).integers(0, 64, (16, 8)).astype(np.int32)
    logits = M.rand((8, 16, 256 * scale), 45)
    tokens = np.random.default_rng(46).integers(0, 256 * scale, (8, 16)).astype(np.int32)
    params = {
        "g": M.rand((64 * scale,), 47).astype(BF16),
        "w1": M.rand((64 * scale, 128 * scale), 48).astype(BF16),
        "w2": M.rand((128 * scale, 64 * scale), 49).astype(BF16),
    }
    fsdp_specs = {"g": (), "w1": (FSDP,), "w2": (FSDP,)}
    tok_x = M.rand((256, 64 * scale), 50).astype(BF16)
    tok_y = M.rand((256, 64 * scale), 51).astype(BF16)

    def pad(fw: M.Framework) -> Callable[..., Any]:
        return lambda u: lax_of(fw).pad(u, np.float32(0), ((4, 4, 0), (0, 0, 0)))

    return [
        Program(
            "reshape merging sharded dims -> matmul",
            lambda fw: lambda u, v: u.reshape(128, 32 * scale) @ v,
            [x3, w],
            [("data", None, "model"), ()],
        ),
        Program(
            "matmul, contracted dim sharded on one side",
            lambda fw: lambda u, v: u @ v,
            [M.rand((64, 32 * scale), 52), M.rand((32 * scale, 4), 53)],
            [(None, "model"), ()],
        ),
        Program(
            "transpose 2-D sharded, same out sharding",
            lambda fw: lambda u: u.T,
            [a],
            [("data", "model")],
            ("data", "model"),
        ),
        Program(
            "device order change (data,model)->(model,data)",
            lambda fw: lambda u: u * 2.0,
            [a],
            [(("data", "model"),)],
            (("model", "data"),),
        ),
        Program(
            "reshape splitting a sharded dim",
            lambda fw: lambda u: u.reshape(4, 4, 32 * scale),
            [a],
            [("model",)],
            ("model",),
        ),
        Program(
            "reshape merging a minor sharded dim",
            lambda fw: lambda u: u.reshape(-1),
            [a],
            [(None, "model")],
            ("model",),
        ),
        Program(
            "reshape merging a 2-D sharded array",
            lambda fw: lambda u: u.reshape(-1) * 1.0,
            [a],
            [("data", "model")],
            (("data", "model"),),
        ),
        Program(
            "reshape 2-D sharded into another 2-D shape",
            lambda fw: lambda u: u.reshape(32 * scale, 16) * 1.0,
            [a],
            [("data", "model")],
            ("data", "model"),
        ),
        Program(
            "transpose 3-D, sharded dims move",
            lambda fw: lambda u: u.transpose(2, 0, 1),
            [x3],
            [("data", "model", None)],
            ("data", "model"),
        ),
        Program(
            "matmul, operands sharded on different axes",
            lambda fw: lambda u, v: u @ v,
            [M.rand((32, 64), 57), M.rand((64, 16), 58)],
            [(None, "model"), ("data",)],
            (),
        ),
        Program(
            "matmul, result sharded across the operands' axes",
            lambda fw: lambda u, v: u @ v,
            [M.rand((32, 64), 57), M.rand((64, 16), 58)],
            [("data",), (None, "model")],
            ("model", "data"),
        ),
        Program(
            "slice of a sharded dim, kept sharded",
            lambda fw: lambda u: u[4:12] * 1.0,
            [a],
            [("model",)],
            ("model",),
        ),
        Program(
            "slice of an uneven dim, replicated",
            lambda fw: lambda u: fw.constrain(u * 2.0, (None, "model"))[:, 3:20] * 1.0,
            [M.rand((8, 30), 54)],
            [()],
            (),
        ),
        Program(
            "slice [12:18] of an uneven dim (30 over 4), replicated",
            lambda fw: lambda u: fw.constrain(u * 2.0, (None, "model"))[:, 12:18] * 1.0,
            [M.rand((8, 30), 54)],
            [()],
            (),
        ),
        Program(
            "slice [0:10] of an uneven dim (30 over 8), replicated",
            lambda fw: lambda u: fw.constrain(u * 2.0, (None, ("data", "model")))[:, 0:10] * 1.0,
            [M.rand((8, 30), 54)],
            [()],
            (),
        ),
        Program(
            "concatenate along a sharded dim",
            lambda fw: lambda u, v: fw.np.concatenate([u, v], axis=0),
            [a, b],
            [("model",), ("model",)],
            ("model",),
        ),
        Program(
            "concatenate along an unsharded dim",
            lambda fw: lambda u, v: fw.np.concatenate([u, v], axis=1),
            [a, b],
            [("model",), ("model",)],
            ("model",),
        ),
        Program("pad a sharded dim, replicated", pad, [a], [("model",)], ()),
        Program("pad a sharded dim, kept sharded", pad, [a], [("model",)], ("model",)),
        Program(
            "gather rows of a sharded table",
            lambda fw: lambda u, i: fw.np.take(u, i, axis=0),
            [table, np.arange(0, 64, 4, dtype=np.int32)],
            [("model",), ()],
            (),
        ),
        Program(
            "embedding fwd+bwd, vocab on model, batch on data",
            embedding_step,
            [table, idx, M.rand((32 * scale, 16), 55)],
            [("model",), ("data",), ()],
        ),
        Program(
            "embedding fwd+bwd, features on model, batch on data",
            embedding_step,
            [table, idx, M.rand((32 * scale, 16), 55)],
            [(None, "model"), ("data",), ("model",)],
        ),
        Program(
            "cross-entropy (take_along_axis), batch on data",
            cross_entropy_take,
            [logits, tokens],
            [("data",), ("data",)],
        ),
        Program(
            "cross-entropy (one_hot), vocab on model",
            cross_entropy_one_hot,
            [logits, tokens],
            [("data", None, "model"), ("data",)],
        ),
        Program(
            "FSDP bf16 step (layer norm + MLP)",
            fsdp_step,
            [params, tok_x, tok_y],
            [fsdp_specs, (FSDP,), (FSDP,)],
        ),
    ]
