"""Pipeline parallelism: a residual MLP of `stages` blocks, its blocks stacked on a leading
dim sharded over the "pipe" mesh axis, trained with spmd.pipeline_value_and_grad (1F1B by
default) and checked against the same model run stage after stage without a pipeline.

Run: python examples/pipeline.py [--mesh 2x2x2] [--schedule 1f1b|gpipe|interleaved]
     [--microbatches 8] [--steps 5]
"""

from __future__ import annotations

import argparse

import numpy as np

import spmd
import spmd.numpy as snp
from spmd import P
from spmd.pipeline_sim import simulate_pipeline

D, F = 32, 64  # model width, hidden width of each block


def block(params, h):
    """One stage on one device's blocks: w1 split by columns, w2 by rows over "model"."""
    u = snp.tanh(h @ params["w1"])
    return h + spmd.lax.psum(u @ params["w2"], "model")


def mse(y, t):
    return snp.mean((y - t) ** 2)


def sequential_loss(params, x, t, stages):
    """The oracle: every stage in turn on the whole batch, no pipeline, no mesh."""
    h = x
    for s in range(stages):
        h = h + snp.tanh(h @ params["w1"][s]) @ params["w2"][s]
    return mse(h, t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mesh", default="2x2x2", help="data x pipe x model")
    ap.add_argument("--schedule", default="1f1b", choices=["1f1b", "gpipe", "interleaved"])
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    data, pipe, model = (int(n) for n in args.mesh.split("x"))
    mesh = spmd.make_mesh((data, pipe, model), ("data", "pipe", "model"))
    per_device = 2 if args.schedule == "interleaved" else 1
    stages = pipe * per_device
    rng = np.random.default_rng(0)
    params = {
        "w1": (rng.standard_normal((stages, D, F)) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((stages, F, D)) * 0.1).astype(np.float32),
    }
    batch = 4 * data * args.microbatches
    x = rng.standard_normal((batch, D)).astype(np.float32)
    t = np.sin(x)
    specs = {"w1": P("pipe", None, "model"), "w2": P("pipe", "model", None)}
    opt = spmd.optim.sgd(0.1)

    @spmd.jit
    def step(params, state, x, t):
        loss, grads = spmd.pipeline_value_and_grad(
            block,
            mse,
            params,
            x,
            t,
            num_microbatches=args.microbatches,
            schedule=args.schedule,
            stages_per_device=per_device,
            mesh=mesh,
            param_specs=specs,
            input_spec=P("data"),
        )
        params, state = opt.update(grads, state, params)
        return params, state, loss

    @spmd.jit
    def reference_step(params, state, x, t):
        loss, grads = spmd.value_and_grad(sequential_loss)(params, x, t, stages)
        params, state = opt.update(grads, state, params)
        return params, state, loss

    ref, ref_state, state = params, opt.init(params), opt.init(params)
    for i in range(args.steps):
        params, state, loss = step(params, state, x, t)
        ref, ref_state, ref_loss = reference_step(ref, ref_state, x, t)
        print(f"step {i}: loss {float(loss):.6f}   unpipelined {float(ref_loss):.6f}")
    gap = max(float(np.abs(np.asarray(params[k]) - np.asarray(ref[k])).max()) for k in params)
    print(f"max |pipelined - unpipelined| parameter after {args.steps} steps: {gap:.2e}")

    report = step.lower(params, state, x, t).compile().collectives()
    permutes = [r for r in report if r.kind == "collective_permute"]
    print(
        f"{len(permutes)} collective permutes, e.g.:\n  "
        + "\n  ".join(str(r) for r in permutes[:3])
    )
    sim = simulate_pipeline(
        block,
        params,
        x,
        num_microbatches=args.microbatches,
        schedule=args.schedule,
        stages_per_device=per_device,
        mesh=mesh,
        param_specs=specs,
        input_spec=P("data"),
    )
    print(sim.table())
    theory = (pipe - 1) / (per_device * args.microbatches + pipe - 1)
    print(f"theory (p-1)/(v*m+p-1) = {theory:.1%}")


if __name__ == "__main__":
    main()
