"""JAX-documentation-style programs run on spmd and compared with what JAX returns: values,
dtypes, shapes and where arrays live. Against the outputs recorded with JAX
(recorded/jax_outputs.*, written by record_jax.py) always, and against a fresh JAX run (in a
subprocess with 8 CPU devices) when JAX is installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from jax_programs import PROGRAMS, Api, run_program


def load(directory: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(directory / "jax_outputs.npz") as data:
        arrays = {k.replace("__", "/"): data[k] for k in data.files}
    meta = json.loads((directory / "jax_outputs.json").read_text())
    for key, arr in arrays.items():  # npz keeps bfloat16 as 2-byte void
        if meta[key]["dtype"] == "bfloat16":
            arrays[key] = arr.view(ml_dtypes.bfloat16)
    return arrays, meta


@pytest.fixture(scope="module")
def spmd_outputs() -> dict[str, tuple[dict, dict]]:
    return {name: run_program(name, Api("spmd")) for name in PROGRAMS}


@pytest.fixture(scope="module")
def live_jax(tmp_path_factory) -> Path:
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed: compared with the recorded outputs only")
    out = tmp_path_factory.mktemp("jax")
    subprocess.run(
        [sys.executable, str(HERE / "record_jax.py"), str(out)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    return out


def compare(name: str, outputs: tuple[dict, dict], want_arrays: dict, want_meta: dict) -> None:
    arrays, meta = outputs
    keys = sorted(k for k in want_meta if k.startswith(name + "/"))
    assert keys and keys == sorted(meta), f"{name}: outputs {sorted(meta)} vs JAX {keys}"
    for key in keys:
        want, got = want_meta[key], meta[key]
        if isinstance(want, str):
            assert got == want, f"{key}: spmd {got!r}, JAX {want!r}"
            continue
        assert (got["dtype"], got["shape"]) == (want["dtype"], want["shape"]), key
        assert got["layout"] == want["layout"], (
            f"{key}: spmd lays it out {got['layout']}, JAX {want['layout']}"
        )
        np.testing.assert_allclose(
            arrays[key].astype(np.float64),
            want_arrays[key].astype(np.float64),
            rtol=2e-5,
            atol=2e-5,
            err_msg=key,
        )


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_matches_recorded_jax_outputs(name, spmd_outputs):
    compare(name, spmd_outputs[name], *load(HERE / "recorded"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_matches_a_fresh_jax_run(name, spmd_outputs, live_jax):
    compare(name, spmd_outputs[name], *load(live_jax))


def test_recording_names_its_jax_version():
    _, meta = load(HERE / "recorded")
    assert meta["jax_version"].count(".") == 2
