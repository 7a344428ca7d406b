"""Issue 20: autoshard's plan against hand plans (pure DP, FSDP, Megatron TP, DP x TP,
FSDP x TP) on tpu-sim v5e 16x16 for an MLP, a transformer block (forward) and a GPT training
step (forward, backward, SGD update): simulated step time and peak memory, with search time
and problem size. A training step (GPT, embedding) returns its new weights in the old
weights' layouts: the hand plans by out_shardings, autoshard by donate_argnums.

    python -m benchmarks.autoshard          # v5e 16x16
    python -m benchmarks.autoshard v5p      # tpu-sim v5p 8x8x8 (3-axis hand plans)
    python -m benchmarks.autoshard cpu      # the CPU 2x4 mesh
    python -m benchmarks.autoshard pod      # 48 layers on 4096 chips under the chip's HBM
"""

from __future__ import annotations

import sys
import time
from typing import Any

import spmd
import spmd.numpy as snp
import spmd.sim
from spmd.api import ShapeDtypeStruct as S
from spmd.autoshard_cost import sim_options
from spmd.sharding import NamedSharding, P

ALL = ("data", "model")


def mlp(x: Any, w1: Any, w2: Any) -> Any:
    return snp.tanh(x @ w1) @ w2


def attention(x: Any, wq: Any, wk: Any, wv: Any, wo: Any) -> Any:
    """A pre-norm residual multi-head attention, batch x seq x d_model."""
    h = spmd.nn.standardize(x)
    q = snp.einsum("bsd,dhk->bshk", h, wq)
    k = snp.einsum("bsd,dhk->bshk", h, wk)
    v = snp.einsum("bsd,dhk->bshk", h, wv)
    scores = snp.einsum("bshk,bthk->bhst", q, k)
    out = snp.einsum("bhst,bthk->bshk", spmd.nn.softmax(scores, axis=-1), v)
    return x + snp.einsum("bshk,hkd->bsd", out, wo)


def block(x: Any, wq: Any, wk: Any, wv: Any, wo: Any, w1: Any, w2: Any) -> Any:
    """A pre-norm transformer block (forward), batch x seq x d_model."""
    x = attention(x, wq, wk, wv, wo)
    h = spmd.nn.standardize(x)
    return x + snp.einsum("bsf,fd->bsd", spmd.nn.gelu(snp.einsum("bsd,df->bsf", h, w1)), w2)


def block_shapes(b: int, s: int, d: int, heads: int, f: int) -> list[tuple[int, ...]]:
    k = d // heads
    return [(b, s, d), (d, heads, k), (d, heads, k), (d, heads, k), (heads, k, d), (d, f), (f, d)]


MLP_PLANS = {
    "DP": [P(ALL), P(), P()],
    "FSDP": [P(ALL), P(ALL), P(ALL)],
    "Megatron TP": [P(), P(None, ALL), P(ALL)],
    "DP x TP": [P("data"), P(None, "model"), P("model")],
    "FSDP x TP": [P("data"), P("data", "model"), P("model", "data")],
}
# per weight role: activations, column-parallel (wq wk wv w1), row-parallel (wo w2)
ROLES = {
    "DP": (P(ALL), P(), P()),
    "FSDP": (P(ALL), P(ALL), P(ALL)),
    "Megatron TP": (P(), P(None, ALL), P(ALL)),
    "DP x TP": (P("data"), P(None, "model"), P("model")),
    "FSDP x TP": (P("data"), P("data", "model"), P("model", None, "data")),
}


def _block_specs(act: Any, col: Any, row: Any) -> list[Any]:
    w2 = P(*row[:1], *row[2:]) if len(row) > 2 else row  # w2 is 2-D: (f, d)
    return [col, col, col, row, col, w2]


BLOCK_PLANS = {name: [act, *_block_specs(act, col, row)] for name, (act, col, row) in ROLES.items()}


LAYERS = 2


def gpt_loss(weights: tuple, x: Any, y: Any) -> Any:
    """Blocks (6 weights each), a final norm and an unembedding; cross-entropy against
    one-hot y."""
    for i in range((len(weights) - 1) // 6):
        x = block(x, *weights[6 * i : 6 * i + 6])
    logits = snp.einsum("bsd,dv->bsv", spmd.nn.standardize(x), weights[-1])
    return -snp.mean(snp.sum(y * spmd.nn.log_softmax(logits, axis=-1), axis=-1))


def gpt_step(x: Any, y: Any, *weights: Any) -> tuple:
    """One SGD training step (forward, backward, update): the new weights."""
    grads = spmd.grad(gpt_loss)(weights, x, y)
    return tuple(w - 1e-3 * g for w, g in zip(weights, grads))


def gpt_shapes(
    b: int, s: int, d: int, heads: int, f: int, vocab: int, layers: int = LAYERS
) -> list:
    per_layer = block_shapes(b, s, d, heads, f)[1:]
    return [(b, s, d), (b, s, vocab), *per_layer * layers, (d, vocab)]


GPT_PLANS = {
    name: [act, act, *_block_specs(act, col, row) * LAYERS, col]
    for name, (act, col, row) in ROLES.items()
}


def roles(dp: tuple[str, ...], tp: tuple[str, ...]) -> dict[str, tuple]:
    """ROLES for any mesh: data parallelism over the axes dp, tensor parallelism over tp
    (a 3-D mesh gets DP over two axes x TP over one and DP over one x TP over two)."""
    a = dp + tp
    return {
        "DP": (P(a), P(), P()),
        "FSDP": (P(a), P(a), P(a)),
        "Megatron TP": (P(), P(None, a), P(a)),
        "DP x TP": (P(dp), P(None, tp), P(tp)),
        "FSDP x TP": (P(dp), P(dp, tp), P(tp, None, dp)),
    }


def mesh_plans(
    splits: list[tuple[tuple[str, ...], tuple[str, ...]]], layers: int = LAYERS
) -> dict[str, dict]:
    """MLP, block and GPT hand plans for each (dp axes, tp axes) split; uniform plans once."""
    out: dict[str, dict] = {"mlp": {}, "block": {}, "gpt": {}}
    for dp, tp in splits:
        tag = f" {'.'.join(dp)}|{'.'.join(tp)}" if len(splits) > 1 else ""
        for name, (act, col, row) in roles(dp, tp).items():
            key = name if name in ("DP", "FSDP", "Megatron TP") else name + tag
            w2 = P(*row[:1], *row[2:]) if len(row) > 2 else row
            out["mlp"][key] = [act, col, w2]
            out["block"][key] = [act, *_block_specs(act, col, row)]
            out["gpt"][key] = [act, act, *_block_specs(act, col, row) * layers, col]
    return out


def scanned_blocks(x: Any, *stacked: Any) -> Any:
    """Transformer blocks repeated by a scan over weights stacked on a leading layer dim."""
    h, _ = spmd.control.scan(lambda h, ws: (block(h, *ws), None), x, tuple(stacked))
    return h


def stack(specs: list, layers: int, shapes: list) -> tuple[list, list]:
    """Plans and shapes for the scanned program: the layer dim leads, unsharded."""
    return (
        [specs[0]] + [P(None, *p) for p in specs[1:]],
        [shapes[0]] + [(layers, *s) for s in shapes[1:]],
    )


def hand_reports(
    f: Any,
    mesh: Any,
    shapes: list,
    plans: dict[str, list],
    dtypes: list[str] | None = None,
    donate: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Each plan's SimReport; with donate, the results are the donated arguments' successors
    in order (a step's new weights), laid out as them."""
    dtypes = dtypes or ["float32"] * len(shapes)

    def tied(specs: list) -> Any:
        if not donate:
            return f
        outs = tuple(NamedSharding(mesh, specs[i]) for i in donate)
        return spmd.jit(f, out_shardings=outs, donate_argnums=donate)

    return {
        name: spmd.sim.simulate(
            tied(specs),
            *[S(s, d, NamedSharding(mesh, p)) for s, d, p in zip(shapes, dtypes, specs)],
            check_memory=False,
            **sim_options(mesh),
        )
        for name, specs in plans.items()
    }


def embedding_loss(weights: tuple, ids: Any, y: Any) -> Any:
    """A token embedding (a gather from a vocab x d table) and a small residual MLP."""
    table, w1, w2 = weights
    h = snp.take(table, ids, axis=0)
    return snp.mean((h + snp.tanh(h @ w1) @ w2 - y) ** 2)


def embedding_step(ids: Any, y: Any, *weights: Any) -> tuple:
    """One SGD step of embedding_loss: the new table and MLP weights."""
    grads = spmd.grad(embedding_loss)(weights, ids, y)
    return tuple(w - 1e-3 * g for w, g in zip(weights, grads))


def weights_of(shapes: list) -> tuple[int, ...]:
    """A step's donated arguments: everything after its two data arguments."""
    return tuple(range(2, len(shapes)))


EMBEDDING = (
    [(64, 512), (64, 512, 1024), (262144, 1024), (1024, 1024), (1024, 1024)],
    ["int32"] + ["float32"] * 4,
)
# the table as a column-parallel weight (TP shards d, which a gather keeps local)
EMBEDDING_PLANS = {
    name: [act, act, col, col, _block_specs(act, col, row)[-1]]
    for name, (act, col, row) in ROLES.items()
}


def compare(
    name: str,
    f: Any,
    mesh: Any,
    shapes: list,
    plans: dict[str, list],
    memory_limit: float | None = None,
    time_limit_s: float = 60.0,
    dtypes: list[str] | None = None,
    donate: tuple[int, ...] = (),
) -> dict[str, Any]:
    hand = hand_reports(f, mesh, shapes, plans, dtypes, donate)
    start = time.perf_counter()
    dtypes = dtypes or ["float32"] * len(shapes)
    plan = spmd.sim.autoshard(
        f,
        *[S(s, d) for s, d in zip(shapes, dtypes)],
        mesh=mesh,
        memory_limit=memory_limit,
        time_limit_s=time_limit_s,
        donate_argnums=donate,
    )
    wall = time.perf_counter() - start
    best = min(hand, key=lambda k: hand[k].step_time_s)
    return {"name": name, "hand": hand, "plan": plan, "wall": wall, "best": best}


MESHES = {
    "v5p": (
        (8, 8, 8),
        ("x", "y", "z"),
        "tpu-sim:v5p",
        [(("x", "y"), ("z",)), (("x",), ("y", "z"))],
    ),
    "cpu": ((2, 4), ALL, None, [(("data",), ("model",))]),
}


def other_mesh(kind: str) -> None:
    """The MLP, block and GPT step on tpu-sim v5p 8x8x8 or the CPU 2x4 mesh (the embedded
    runtime's cost model), against every uniform and DP/FSDP x TP split hand plan."""
    shape, names, device, splits = MESHES[kind]
    mesh = spmd.make_mesh(shape, names, **({"device": device} if device else {}))
    plans = mesh_plans(splits)
    gpt = gpt_shapes(32, 512, 1024, 16, 4096, 8192)
    programs = [
        (
            "MLP 4096x4096x16384",
            mlp,
            [(4096, 4096), (4096, 16384), (16384, 4096)],
            plans["mlp"],
            (),
        ),
        (
            "block b32 s512 d1024 h16 f4096",
            block,
            block_shapes(32, 512, 1024, 16, 4096),
            plans["block"],
            (),
        ),
        (
            f"GPT training step, {LAYERS} layers, vocab 8192",
            gpt_step,
            gpt,
            plans["gpt"],
            weights_of(gpt),
        ),
    ]
    for name, f, shapes, hand, donate in programs:  # HiGHS's limit is wall time: give room
        report(compare(name, f, mesh, shapes, hand, time_limit_s=600.0, donate=donate), kind)


def report(r: dict[str, Any], where: str) -> None:
    plan, hand = r["plan"], r["hand"]
    print(
        f"\n{r['name']} ({where}): search {plan.search_s:.2f} s "
        f"({plan.search_cpu_s:.2f} s CPU), {plan.problem}"
    )
    for label, rep in [*hand.items(), ("autoshard", plan.report)]:
        print(
            f"  {label:18s} step {rep.step_time_s * 1e3:8.3f} ms   peak "
            f"{rep.peak_memory_bytes / 2**20:8.1f} MiB"
        )
    ratio = plan.report.step_time_s / hand[r["best"]].step_time_s
    print(f"  autoshard / best hand ({r['best']}) = {ratio:.3f}")
    print(plan, flush=True)


def pod() -> None:
    """48 scanned blocks b256 s2048 d4096 h32 f16384 on 4096 chips (tpu-sim v4 as 64 x 64),
    the chip's HBM as memory_limit, against the hand plans."""
    mesh = spmd.make_mesh((64, 64), ALL, device="tpu-sim:v4")
    one = block_shapes(256, 2048, 4096, 32, 16384)
    plans = {name: stack(specs, 48, one)[0] for name, specs in BLOCK_PLANS.items()}
    shapes = stack(BLOCK_PLANS["DP"], 48, one)[1]
    hbm = spmd.sim.simulate(
        block, *[S(s, "float32", NamedSharding(mesh, P())) for s in one], check_memory=False
    ).hbm_bytes
    r = compare("48 blocks in a scan, 4096 chips", scanned_blocks, mesh, shapes, plans, hbm)
    for name, rep in r["hand"].items():
        print(f"  {name}: fits {hbm / 2**30:.0f} GiB HBM: {rep.peak_memory_bytes <= hbm}")
    report(r, "v4 64x64")


def main() -> None:
    if len(sys.argv) > 1:
        return pod() if sys.argv[1] == "pod" else other_mesh(sys.argv[1])
    mesh = spmd.make_mesh((16, 16), ALL, device="tpu-sim:v5e")
    mlp_shapes = [(4096, 4096), (4096, 16384), (16384, 4096)]
    gpt = gpt_shapes(32, 512, 1024, 16, 4096, 8192)
    programs = [
        ("MLP 4096x4096x16384", mlp, mlp_shapes, MLP_PLANS, None, ()),
        (
            "block b32 s512 d1024 h16 f4096",
            block,
            block_shapes(32, 512, 1024, 16, 4096),
            BLOCK_PLANS,
            None,
            (),
        ),
        ("MLP, memory_limit 256 MiB", mlp, mlp_shapes, MLP_PLANS, 256 * 2**20, ()),
        (
            f"GPT training step, {LAYERS} layers, vocab 8192",
            gpt_step,
            gpt,
            GPT_PLANS,
            None,
            weights_of(gpt),
        ),
    ]
    shapes = block_shapes(32, 512, 1024, 16, 4096)
    scanned = {name: stack(specs, 48, shapes)[0] for name, specs in BLOCK_PLANS.items()}
    programs.append(
        (
            "48 blocks in a scan (body solved once)",
            scanned_blocks,
            stack(BLOCK_PLANS["DP"], 48, shapes)[1],
            scanned,
            None,
            (),
        )
    )
    for name, f, shapes, plans, limit, donate in programs:
        report(compare(name, f, mesh, shapes, plans, limit, donate=donate), "v5e 16x16")
    report(
        compare(
            "embedding 256k x 1024 + MLP 1024, SGD step",
            embedding_step,
            mesh,
            EMBEDDING[0],
            EMBEDDING_PLANS,
            dtypes=EMBEDDING[1],
            donate=weights_of(EMBEDDING[0]),
        ),
        "v5e 16x16",
    )


if __name__ == "__main__":
    main()
