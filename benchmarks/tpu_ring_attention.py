"""Ring attention (spmd.nn.ring_attention) on a simulated v5e-16 with the sequence split 16
ways, against gathering the sequence (all-gather K and V, then the fused op on the local
queries): step time, how much of the ring's ppermute time the schedule hides behind the
blocks' attention, and peak HBM. Abstract mode (no data).

    python -m benchmarks.tpu_ring_attention [--blocks 2048 8192] [--chip v5e]
"""

from __future__ import annotations

import argparse
from typing import Any

import spmd
import spmd.sim
from spmd import NamedSharding, P

HEADS, HEAD_DIM = 32, 128


def gathered(q: Any, k: Any, v: Any, causal: bool) -> Any:
    """The whole sequence's K and V on every device, then one fused attention (causal by
    global positions through a mask built from this device's block offset)."""
    n = spmd.lax.axis_size("seq")
    k, v = (spmd.lax.all_gather(x, "seq", axis=1, tiled=True) for x in (k, v))
    if not causal:
        return spmd.nn.dot_product_attention(q, k, v)
    t, s = q.shape[1], k.shape[1]
    rows = spmd.lax.axis_index("seq") * t + spmd.numpy.arange(t)
    mask = rows[:, None] >= spmd.numpy.arange(s)[None, :]
    assert s == n * t
    return spmd.nn.dot_product_attention(q, k, v, mask=mask[None, None])


def step(kind: str, causal: bool, backward: bool, mesh: Any) -> Any:
    def body(q: Any, k: Any, v: Any) -> Any:
        if kind == "ring":
            out = spmd.nn.ring_attention(q, k, v, axis_name="seq", is_causal=causal)
        else:
            out = gathered(q, k, v, causal)
        if not backward:
            return out
        return spmd.lax.psum((out.astype("float32") * q.astype("float32")).sum(), "seq")

    f = spmd.shard_map(
        body, mesh=mesh, in_specs=P(None, "seq"), out_specs=P() if backward else P(None, "seq")
    )
    return spmd.jit(spmd.grad(f, argnums=(0, 1, 2)) if backward else f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--chip", default="v5e")
    parser.add_argument("--devices", type=int, default=16)
    opts = parser.parse_args()
    n = opts.devices
    mesh = spmd.make_mesh((n,), ("seq",), device=f"tpu-sim:{opts.chip}")
    print(
        f"{opts.chip}-{n}, sequence split {n} ways on 'seq', {HEADS} heads x {HEAD_DIM}, "
        f"bf16, batch 1, causal; step / attention op / collectives (exposed) / peak HBM"
    )
    for tb in opts.blocks:
        x = spmd.ShapeDtypeStruct(
            (1, n * tb, HEADS, HEAD_DIM), "bfloat16", NamedSharding(mesh, P(None, "seq"))
        )
        for backward in (False, True):
            for kind in ("ring", "gathered"):
                rows = []
                for overlap in (True, False):
                    r = spmd.sim.simulate(
                        step(kind, True, backward, mesh),
                        x,
                        x,
                        x,
                        check_memory=False,
                        overlap=overlap,
                    )
                    rows.append(r)
                r, serial = rows
                kinds = r.by_kind()
                print(
                    f"seq {n * tb:>6} (block {tb:>5}) {'fwd+bwd' if backward else 'fwd':7s} "
                    f"{kind:8s}: step {r.step_time_s * 1e3:8.2f} ms (no overlap "
                    f"{serial.step_time_s * 1e3:8.2f}), attention "
                    f"{kinds.get('attention', 0.0) * 1e3:7.2f} ms, other compute "
                    f"{(r.compute_time_s - kinds.get('attention', 0.0)) * 1e3:7.2f} ms, "
                    f"collectives {r.collective_time_s * 1e3:7.2f} ms "
                    f"({r.exposed_collective_s * 1e3:6.2f} exposed), peak "
                    f"{r.peak_memory_bytes / 2**30:6.2f} GiB",
                    flush=True,
                )


if __name__ == "__main__":
    main()
