"""Issue 20, the irregular model: a mixture-of-experts transformer (spmd/nn_moe.py), where the
expert weights [E, d, f] want their expert dim sharded and the tokens their group dim, with an
all-to-all between. autoshard's plan against the uniform hand plans (DP, FSDP, Megatron TP,
DP x TP, FSDP x TP: each expert's [d, f] laid out as a dense FFN's, the expert dim replicated)
and against expert parallelism (experts over the mesh, tokens over the mesh, the dense
weights replicated: GShard's plan), as input shardings only ("EP") and with GShard's
annotations on the dispatched buffers ("EP + annotations"): simulated step time, peak
memory, search time. Every plan returns its results as a training loop needs them (the
layer's output as its input, the step's new weights as the old): hand plans by out_shardings,
autoshard by donate_argnums (its plan free to return them otherwise is printed too).

    python -m benchmarks.autoshard_moe          # tpu-sim v5e 16x16
    python -m benchmarks.autoshard_moe v5p      # tpu-sim v5p 8x8x8
    python -m benchmarks.autoshard_moe cpu      # the CPU 2x4 mesh
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

import spmd
import spmd.nn_moe
import spmd.numpy as snp
import spmd.sim
from benchmarks.autoshard import attention, report, roles
from spmd.api import ShapeDtypeStruct as S
from spmd.autoshard_cost import sim_options
from spmd.sharding import NamedSharding, P

LAYERS = 1
AUX = 0.01  # weight of the load-balancing loss


def moe_layer(x: Any, router: Any, w_in: Any, w_out: Any, shardings: Any = None) -> Any:
    """A pre-norm residual MoE feed-forward (top-2, capacity factor 1.25): each sequence of
    x [batch, seq, d] is one routing group. shardings: GShard's annotations (spmd/nn_moe.py)."""
    h = spmd.nn.standardize(x)
    return x + spmd.nn_moe.moe(h, router, w_in, w_out, top_k=2, shardings=shardings)


def moe_loss(weights: tuple, x: Any, y: Any, shardings: Any = None) -> Any:
    """LAYERS blocks of attention + MoE; squared error against y plus the balancing loss."""
    aux = 0.0
    for i in range(LAYERS):
        wq, wk, wv, wo, router, w_in, w_out = weights[7 * i : 7 * i + 7]
        x = attention(x, wq, wk, wv, wo)
        aux = aux + spmd.nn_moe.load_balance_loss(spmd.nn.standardize(x), router)
        x = moe_layer(x, router, w_in, w_out, shardings)
    return snp.mean((x - y) ** 2) + AUX * aux


def moe_step(x: Any, y: Any, *weights: Any, shardings: Any = None) -> tuple:
    """One SGD training step (forward, backward, update): the new weights."""
    grads = spmd.grad(moe_loss)(weights, x, y, shardings)
    return tuple(w - 1e-3 * g for w, g in zip(weights, grads))


def layer_shapes(b: int, s: int, d: int, experts: int, f: int) -> list[tuple[int, ...]]:
    return [(b, s, d), (d, experts), (experts, d, f), (experts, f, d)]


def step_shapes(b: int, s: int, d: int, heads: int, experts: int, f: int) -> list:
    k = d // heads
    attn = [(d, heads, k), (d, heads, k), (d, heads, k), (heads, k, d)]
    return [(b, s, d), (b, s, d), *(attn + layer_shapes(b, s, d, experts, f)[1:]) * LAYERS]


def plans(dp: tuple[str, ...], tp: tuple[str, ...], splits: int = 1) -> dict[str, dict]:
    """Hand plans for the layer and the step. Uniform: each role's spec from
    benchmarks/autoshard.py's roles, an expert's [d, f] as a column-parallel weight and its
    [f, d] as a row-parallel one (the expert dim replicated), the router column-parallel.
    Expert parallelism (EP): experts and tokens over every axis, the rest replicated."""
    out: dict[str, dict] = {"layer": {}, "step": {}}
    tag = f" {'.'.join(dp)}|{'.'.join(tp)}" if splits > 1 else ""
    for name, (act, col, row) in roles(dp, tp).items():
        key = name if name in ("DP", "FSDP", "Megatron TP") else name + tag
        wo = row
        w2 = P(*row[:1], *row[2:]) if len(row) > 2 else row
        layer = [col, P(None, *col), P(None, *w2)]
        out["layer"][key] = [act, *layer]
        out["step"][key] = [act, act, *([col, col, col, wo] + layer) * LAYERS]
    a = dp + tp
    out["layer"]["EP"] = [P(a), P(), P(a), P(a)]
    out["step"]["EP"] = [P(a), P(a), *([P()] * 5 + [P(a), P(a)]) * LAYERS]
    return out


MESHES = {
    "v5e": ((16, 16), ("data", "model"), "tpu-sim:v5e", [(("data",), ("model",))]),
    "v5p": (
        (8, 8, 8),
        ("x", "y", "z"),
        "tpu-sim:v5p",
        [(("x", "y"), ("z",)), (("x",), ("y", "z"))],
    ),
    "cpu": ((2, 4), ("data", "model"), None, [(("data",), ("model",))]),
}
# batch, seq, d_model, heads, experts, d_ff per mesh: one expert per chip (GShard's layout)
SIZES = {
    "v5e": (256, 512, 1024, 16, 256, 2048),
    "v5p": (512, 512, 1024, 16, 512, 2048),
    "cpu": (8, 64, 64, 4, 8, 512),
}


def hand_reports(
    f: Any, mesh: Any, shapes: list, plans: dict[str, list], outs: Any, donate: tuple
) -> dict:
    """Each hand plan's SimReport, its results laid out as outs(plan) says (the layer's output
    as its input, the step's new weights as the old, as a training loop needs them), the
    arguments they replace donated."""

    def named(p: Any) -> NamedSharding:
        return NamedSharding(mesh, p)

    return {
        name: spmd.sim.simulate(
            spmd.jit(f, out_shardings=_each(named, outs(specs)), donate_argnums=donate),
            *[S(s, "float32", named(p)) for s, p in zip(shapes, specs)],
            check_memory=False,
            **sim_options(mesh),
        )
        for name, specs in plans.items()
    }


def _each(fn: Any, specs: Any) -> Any:
    """fn of one PartitionSpec, or of each in a tuple of them."""
    return fn(specs) if isinstance(specs, P) else tuple(fn(p) for p in specs)


def layer_outs(specs: list) -> Any:
    return specs[0]


def step_outs(specs: list) -> Any:
    return tuple(specs[2:])


# the arguments each program's results replace: the layer's x, the step's weights
LAYER_DONATE = (0,)


def step_donate(shapes: list) -> tuple[int, ...]:
    return tuple(range(2, len(shapes)))


def compare(
    name: str, f: Any, mesh: Any, shapes: list, hand: dict[str, list], outs: Any, donate: tuple
) -> dict:
    """Every hand plan, EP again with GShard's annotations (the dispatch masks on the groups,
    the expert buffers on the experts, over every axis), then autoshard's plan with the same
    arguments donated (their results tied to their layouts) and, for reference, free."""
    reports = hand_reports(f, mesh, shapes, hand, outs, donate)
    every = NamedSharding(mesh, P(tuple(mesh.axis_names)))
    annotated = functools.partial(f, shardings=(every, every))
    reports |= hand_reports(annotated, mesh, shapes, {"EP + annotations": hand["EP"]}, outs, donate)
    args = [S(s, "float32") for s in shapes]
    start = time.perf_counter()
    plan = spmd.sim.autoshard(f, *args, mesh=mesh, time_limit_s=600.0, donate_argnums=donate)
    wall = time.perf_counter() - start
    free = spmd.sim.autoshard(f, *args, mesh=mesh, time_limit_s=600.0)
    best = min(reports, key=lambda k: reports[k].step_time_s)
    return {"name": name, "hand": reports, "plan": plan, "wall": wall, "best": best, "free": free}


def kept(plan: Any, outs: Any) -> bool:
    """Whether the plan returns its results in the layouts outs says (its arguments')."""
    want = outs([x.spec for x in plan.flat_in])
    return [x.spec for x in plan.flat_out] == ([want] if isinstance(want, P) else list(want))


def summary(r: dict, outs: Any) -> str:
    """The ratios the issue asks for: vs the best uniform plan and vs expert parallelism."""
    t = r["plan"].report.step_time_s
    uniform = {k: v.step_time_s for k, v in r["hand"].items() if not k.startswith("EP")}
    ep = {k: v.step_time_s for k, v in r["hand"].items() if k.startswith("EP")}
    bu, be = min(uniform, key=uniform.get), min(ep, key=ep.get)
    free = r["free"].report.step_time_s
    return (
        f"  autoshard {t * 1e3:.3f} ms: / best uniform ({bu}) {t / uniform[bu]:.3f}, "
        f"/ best expert parallel ({be}) {t / ep[be]:.3f}; search {r['plan'].search_s:.1f} s; "
        f"results laid out as the arguments: {kept(r['plan'], outs)}\n"
        f"  free to return them otherwise: {free * 1e3:.3f} ms (/ best expert parallel "
        f"{free / ep[be]:.3f}, laid out as the arguments: {kept(r['free'], outs)}, "
        f"search {r['free'].search_s:.1f} s)"
    )


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "v5e"
    shape, names, device, splits = MESHES[kind]
    mesh = spmd.make_mesh(shape, names, **({"device": device} if device else {}))
    b, s, d, heads, experts, f = SIZES[kind]
    hand: dict[str, dict] = {"layer": {}, "step": {}}
    for dp, tp in splits:
        for k, v in plans(dp, tp, len(splits)).items():
            hand[k].update(v)
    programs = [
        (
            f"MoE layer b{b} s{s} d{d} E{experts} f{f} top-2",
            moe_layer,
            layer_shapes(b, s, d, experts, f),
            hand["layer"],
            layer_outs,
            LAYER_DONATE,
        ),
        (
            f"MoE training step, {LAYERS} layer(s) attention + MoE",
            moe_step,
            step_shapes(b, s, d, heads, experts, f),
            hand["step"],
            step_outs,
            step_donate(step_shapes(b, s, d, heads, experts, f)),
        ),
    ]
    for name, fn, shapes, plans_, outs, donate in programs:
        r = compare(name, fn, mesh, shapes, plans_, outs, donate)
        report(r, kind)
        print(summary(r, outs), flush=True)


if __name__ == "__main__":
    main()
