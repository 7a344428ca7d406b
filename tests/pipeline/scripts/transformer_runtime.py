"""examples/transformer.py --pipeline 2 under spmd-launch: the small GPT of
tests/pipeline/test_pipeline_transformer.py trained with its layers as 2 GPipe stages on the
launcher's data x pipe x model mesh; process 0 writes the losses and the parameters (gathered,
in the unpipelined layout) to the .npz given as the only argument.

Run: spmd-launch --mesh 2x2x2 --axes data,pipe,model [--runtime mpi|tcp|ray] \\
         transformer_runtime.py OUT.npz [STEPS]
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

import spmd
from spmd import NamedSharding, P, distributed

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "transformer.py"


def example():
    spec = importlib.util.spec_from_file_location("spmd_example_transformer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def small_config(gpt, steps: int):
    """The test's sizes (tests/pipeline/test_pipeline_transformer.py small())."""
    return gpt.Config(
        context=8,
        width=16,
        heads=4,
        layers=4,
        steps=steps,
        batch_size=8,
        learning_rate=2e-2,
        warmup_steps=4,
        pipeline=2,
        microbatches=4,
    )


def flat_params(gpt, params) -> dict[str, np.ndarray]:
    """The parameters as numpy, unpipelined layout, one "layers.<name>" key per layer leaf."""
    flat = gpt.unstaged(params)
    values = {f"layers.{k}": v for k, v in flat.pop("layers").items()}
    values.update(flat)
    return values


def main(out: str, steps: int) -> None:
    gpt = example()
    mesh = distributed.launch_mesh()
    assert mesh.axis_names == ("data", "pipe", "model"), mesh.axis_names
    result = gpt.train(small_config(gpt, steps), mesh, progress=False)
    # every process holds the whole parameters once they are replicated
    whole = spmd.jit(lambda p: p, out_shardings=NamedSharding(mesh, P()))(result.params)
    values = flat_params(gpt, whole)
    if distributed.process_index() == 0:
        np.savez(out, losses=np.asarray(result.losses), **values)
        print(
            f"RESULT runtime={distributed.runtime_kind()} "
            f"processes={distributed.process_count()} loss {result.losses[0]:.4f} -> "
            f"{result.losses[-1]:.4f}",
            flush=True,
        )
    distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20)
