"""Collective bytes per device, ours (compiled.collectives()) vs XLA (parsed HLO).

Run: python benchmarks/collective_bytes.py [--scale 1] [--verbose] (2x4 mesh, 8 host devices)

XLA's bytes are read twice: from the compiled HLO, and from the HLO right after its SPMD
partitioner (dumped), which still has the dtype the values have (XLA:CPU later widens
bf16 collectives to f32; a TPU keeps them bf16). Each program is compared with the smaller
of the two. "moved" prices each collective by DESIGN.md's table (all-gather V(n-1),
all-reduce 2V(n-1)/n, reduce-scatter and all-to-all V(n-1)/n, permute V; V the operand).
"""

from __future__ import annotations

import argparse
import atexit
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

DUMP = tempfile.mkdtemp(prefix="xla_dump_")
atexit.register(shutil.rmtree, DUMP, ignore_errors=True)
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP}"
    " --xla_dump_hlo_pass_re=spmd-partitioning"
)

import models as M  # after XLA_FLAGS: models sets the device count before JAX starts
from collective_classes import Program, class_programs
from hlo_collectives import xla_collectives

MESH = (2, 4)
AXES = ("data", "model")


def measure_xla(fw: M.Framework, prog: Program) -> tuple[list[Any], list[Any], bool]:
    """Collectives of the compiled HLO, of the HLO after SPMD partitioning, any in a loop."""
    import jax

    shardings = [
        jax.tree_util.tree_map(
            lambda s: fw.sharding(s), spec, is_leaf=lambda s: isinstance(s, tuple)
        )
        for spec in prog.in_specs
    ]
    kwargs: dict[str, Any] = {"in_shardings": tuple(shardings)}
    if prog.out_specs is not None:
        kwargs["out_shardings"] = fw.sharding(prog.out_specs)
    before = set(os.listdir(DUMP))
    hlo = jax.jit(prog.build(fw), **kwargs).lower(*prog.args).compile().as_text()
    compiled, loops = xla_collectives(hlo, MESH, AXES)
    dumped = sorted(f for f in set(os.listdir(DUMP)) - before if "after_spmd-partitioning" in f)
    partitioned = (
        xla_collectives(Path(DUMP, dumped[-1]).read_text(), MESH, AXES)[0] if dumped else compiled
    )
    return compiled, partitioned, loops


def measure_ours(fw: M.Framework, prog: Program) -> list[Any]:
    args = []
    for value, spec in zip(prog.args, prog.in_specs):
        if isinstance(value, dict):
            args.append(fw.put_tree(value, spec))
        else:
            args.append(fw.put(value, spec))
    kwargs = {} if prog.out_specs is None else {"out_shardings": fw.sharding(prog.out_specs)}
    return fw.jit(prog.build(fw), **kwargs).lower(*args).compile().collectives()


# -- the programs --------------------------------------------------------------------------


def megatron(fw: M.Framework) -> Callable[..., Any]:
    return lambda x, w1, w2: fw.nn.relu(x @ w1) @ w2


def programs(scale: int) -> list[Program]:
    b, d, h, o = 16 * scale, 64 * scale, 256 * scale, 32 * scale
    mlp_p, mlp_x, mlp_y = M.mlp_inputs(b, d, h, o)
    replicated = {k: () for k in mlp_p}
    blk_p, blk_x, blk_y = M.block_inputs(4 * scale, 16, 32 * scale, 8, 8, 128 * scale)
    x, w1, w2 = M.rand((b, d), 20), M.rand((d, h), 21), M.rand((h, o), 22)
    seq = M.rand((4, 16, 32 * scale), 23)
    attn_specs = {k: v for k, v in M.BLOCK_SPECS.items() if k in ("wq", "wk", "wv", "wo")}
    attn_p = {k: blk_p[k] for k in attn_specs}
    feat = M.rand((8 * scale, 128 * scale), 24)

    def dp_step(fw: M.Framework) -> Callable[..., Any]:
        return M.sgd_step(fw, M.mlp_loss(fw))

    def megatron_grad(fw: M.Framework) -> Callable[..., Any]:
        loss = lambda x_, a, c: fw.np.sum(fw.np.tanh(megatron(fw)(x_, a, c)))
        return fw.value_and_grad(loss, argnums=(0, 1, 2))

    def block_step(fw: M.Framework) -> Callable[..., Any]:
        return M.sgd_step(fw, M.block_loss(fw))

    def reduce_scatter(fw: M.Framework) -> Callable[..., Any]:
        return lambda a, c: fw.constrain(a @ c, ("model", None))

    def uneven_megatron(fw: M.Framework) -> Callable[..., Any]:
        return lambda x_, a, c: fw.constrain(fw.nn.relu(x_ @ a), (None, "model")) @ c

    def uneven_softmax(fw: M.Framework) -> Callable[..., Any]:
        return lambda a: fw.nn.softmax(fw.constrain(a * 2.0, ("data", "model")), axis=-1)

    return [
        Program(
            "dp MLP step (batch on data)",
            dp_step,
            [mlp_p, mlp_x, mlp_y],
            [replicated, ("data",), ("data",)],
        ),
        Program(
            "2D MLP step (data x model)",
            dp_step,
            [mlp_p, mlp_x, mlp_y],
            [M.MLP_SPECS, ("data",), ("data",)],
        ),
        Program("Megatron MLP fwd", megatron, [x, w1, w2], [(), (None, "model"), ("model",)]),
        Program(
            "Megatron MLP fwd+bwd", megatron_grad, [x, w1, w2], [(), (None, "model"), ("model",)]
        ),
        Program(
            "attention, heads on model",
            lambda fw: lambda p, s: M.attention(fw, s, p),
            [attn_p, seq],
            [attn_specs, ()],
        ),
        Program(
            "layernorm, features on model",
            lambda fw: lambda a: M.layer_norm(fw.np, a, 1.0, 0.0),
            [feat],
            [("data", "model")],
        ),
        Program(
            "softmax, features on model",
            lambda fw: lambda a: fw.nn.softmax(a, axis=-1),
            [feat],
            [("data", "model")],
        ),
        Program(
            "contraction -> sharded (RS)", reduce_scatter, [x, w1], [(None, "model"), ("model",)]
        ),
        Program(
            "move sharded dim (A2A)",
            lambda fw: lambda a: a * 2.0,
            [feat],
            [("model", None)],
            (None, "model"),
        ),
        Program("unshard a dim (AG)", lambda fw: lambda a: a * 2.0, [feat], [("model", None)], ()),
        Program(
            "2D block fwd",
            lambda fw: M.block_forward(fw),
            [blk_p, blk_x],
            [M.BLOCK_SPECS, ("data",)],
        ),
        Program(
            "2D block fwd+bwd step",
            block_step,
            [blk_p, blk_x, blk_y],
            [M.BLOCK_SPECS, ("data",), ("data",)],
        ),
        Program(
            "uneven Megatron (hidden 30/4)",
            uneven_megatron,
            [M.rand((6, 16), 25), M.rand((16, 30), 26), M.rand((30, 8), 27)],
            [(), (), ()],
        ),
        Program("uneven softmax (10x30 on 2x4)", uneven_softmax, [M.rand((10, 30), 28)], [()], ()),
    ]


def describe(records: list[Any]) -> str:
    return "; ".join(f"{r[0]}[{r[1]}] {r[2]}B {r[3]}" for r in records) or "-"


def ratio(a: float, b: float) -> float:
    return a / b if b else (1.0 if a == 0 else float("inf"))


def geomean(ratios: list[float]) -> str:
    """Over programs where both sides move bytes (a zero has no logarithm)."""
    finite = [r for r in ratios if 0 < r < float("inf")]
    return f"{math.exp(sum(map(math.log, finite)) / len(finite)):.2f}" if finite else "-"


def measure(prog: Program, ours: M.Framework, jax_fw: M.Framework) -> dict[str, Any]:
    mine = [
        (r.kind.replace("_", "-"), ",".join(r.axes), r.bytes, f"{r.dtype}{list(r.shape)}", r.moved)
        for r in measure_ours(ours, prog)
    ]
    compiled, partitioned, loops = measure_xla(jax_fw, prog)
    theirs = min((compiled, partitioned), key=lambda rs: sum(r[2] for r in rs))
    return {
        "name": prog.name,
        "mine": mine,
        "theirs": theirs,
        "loops": loops,
        "a": sum(r[2] for r in mine),
        "b": sum(r[2] for r in theirs),
        "b_compiled": sum(r[2] for r in compiled),
        "ma": sum(r[4] for r in mine),
        "mb": sum(r[4] for r in theirs),
    }


def table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n### {title}\n")
    print(
        "| program | ours B | ours n | XLA B (compiled) | XLA n | ours/XLA | ours moved | "
        "XLA moved | moved ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['a']} | {len(r['mine'])} | {r['b']} ({r['b_compiled']}) | "
            f"{len(r['theirs'])} | {ratio(r['a'], r['b']):.2f} | {r['ma']:.0f} | "
            f"{r['mb']:.0f} | {ratio(r['ma'], r['mb']):.2f} |"
        )
    over = [r["name"] for r in rows if r["a"] > r["b"]]
    print(
        f"\nours <= XLA (operand bytes) on {len(rows) - len(over)}/{len(rows)}; geomean "
        f"ours/XLA {geomean([ratio(r['a'], r['b']) for r in rows])} operand bytes, "
        f"{geomean([ratio(r['ma'], r['mb']) for r in rows])} moved bytes (over programs "
        f"where both move bytes); above 1.0x: {', '.join(over) or 'none'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=1, help="multiply the model sizes")
    parser.add_argument("--verbose", action="store_true", help="print both collective lists")
    args = parser.parse_args()
    print(M.header("collective bytes per device, ours vs XLA, mesh 2x4"))
    ours, jax_fw = M.ours(MESH, AXES), M.jax_framework(MESH, AXES)
    groups = {
        "models (issue 4)": programs(args.scale),
        "layout classes (issue 22)": class_programs(args.scale),
    }
    every: list[dict[str, Any]] = []
    for title, progs in groups.items():
        rows = [measure(prog, ours, jax_fw) for prog in progs]
        every += rows
        table(title, rows)
    if any(r["loops"] for r in every):
        print("XLA collectives inside while bodies counted once")
    print(
        f"\nall {len(every)} programs: geomean ours/XLA "
        f"{geomean([ratio(r['a'], r['b']) for r in every])} operand bytes, "
        f"{geomean([ratio(r['ma'], r['mb']) for r in every])} moved bytes"
    )
    for r in every:
        if r["a"] > r["b"] or r["ma"] > r["mb"] or args.verbose:
            print(f"\n{r['name']}\n  ours: {describe(r['mine'])}\n  XLA:  {describe(r['theirs'])}")


if __name__ == "__main__":
    main()
