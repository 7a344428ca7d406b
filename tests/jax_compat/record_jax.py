"""Run the compatibility programs under JAX (8 CPU devices) and write what it returns:
`python tests/jax_compat/record_jax.py [OUT_DIR]` (default: tests/jax_compat/recorded).

Writes jax_outputs.npz (the arrays) and jax_outputs.json (dtypes, shapes, layouts, strings
and the JAX version); never pickles.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def record(out_dir: Path) -> None:
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(HERE))
    import jax
    import numpy as np
    from jax_programs import PROGRAMS, Api, run_program

    api = Api("jax")
    arrays: dict = {}
    meta: dict = {"jax_version": jax.__version__}
    for name in PROGRAMS:
        got_arrays, got_meta = run_program(name, api)
        arrays.update(got_arrays)
        meta.update(got_meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "jax_outputs.npz", **{k.replace("/", "__"): v for k, v in arrays.items()})
    (out_dir / "jax_outputs.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    record(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "recorded")
