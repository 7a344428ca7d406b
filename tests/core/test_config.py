"""spmd.config: jax_enable_x64 off gives JAX's 32-bit dtypes; bad settings are errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd.errors import SpmdError


@pytest.fixture
def x64_off():
    with spmd.enable_x64(False):
        yield


def test_x64_off_narrows_64_bit_inputs_like_jax(x64_off):
    assert not spmd.config.jax_enable_x64 and not spmd.config.read("x64")
    assert snp.array([3.0]).dtype == np.float32 and snp.array([3, 1]).dtype == np.int32
    x = np.arange(4.0)
    out = spmd.jit(lambda v: v * 2)(x)
    assert out.dtype == np.float32 and np.asarray(out).dtype == np.float32
    np.testing.assert_array_equal(np.asarray(out), 2 * x)
    assert snp.zeros(2, dtype=np.float64).dtype == np.float32
    assert spmd.grad(lambda v: snp.sum(v**2))(x).dtype == np.float32
    mesh = spmd.make_mesh((4,), ("d",))
    placed = spmd.device_put(x, spmd.NamedSharding(mesh, spmd.P("d")))
    assert placed.dtype == np.float32 and np.asarray(placed).dtype == np.float32
    assert np.asarray(spmd.random.randint(spmd.random.key(0), (64,), 0, 10)).max() < 10


def test_x64_on_keeps_numpy_dtypes():
    with spmd.enable_x64(True):
        assert spmd.config.jax_enable_x64
        assert snp.asarray(np.arange(3.0)).dtype == np.float64
        assert snp.asarray(np.arange(3)).dtype == np.int64


def test_enable_x64_restores_the_setting_even_on_error():
    before = spmd.config.x64
    with pytest.raises(ZeroDivisionError), spmd.enable_x64(not before):
        assert spmd.config.x64 is (not before)
        1 / 0  # noqa: B018
    assert spmd.config.x64 is before
    with pytest.raises(SpmdError, match="True or False"), spmd.enable_x64(1):
        pass
    assert spmd.config.x64 is before


def test_bad_settings_are_errors():
    with pytest.raises(SpmdError, match="unknown setting"):
        spmd.config.update("jax_enable_x65", True)
    with pytest.raises(SpmdError, match="True or False"):
        spmd.config.update("jax_enable_x64", "yes")


@pytest.mark.slow  # three fresh interpreters import spmd
def test_default_is_jax_32_bit_and_the_environment_variable_opts_in():
    code = "import spmd, numpy as np; print(spmd.numpy.asarray(np.ones(2)).dtype)"
    env = {"PATH": ""}
    for value, want in (("", "float32"), ("1", "float64"), ("0", "float32")):
        env["SPMD_ENABLE_X64"] = value
        out = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.stdout.strip() == want, (value, out.stderr)
    env["SPMD_ENABLE_X64"] = "maybe"
    bad = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "SPMD_ENABLE_X64" in bad.stderr
