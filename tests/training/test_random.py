"""spmd.random: threefry known answers, values independent of mesh and sharding, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

import spmd
import spmd.random as rnd
from spmd.errors import DTypeError

# Random123's known-answer vectors for threefry2x32_20: (key, counter) -> output.
KNOWN_ANSWERS = [
    ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


def numpy_threefry(key: tuple[int, int], counter: tuple[int, int]) -> tuple[int, int]:
    """An independent Python-int implementation of threefry2x32_20 (the oracle)."""
    mask = 0xFFFFFFFF
    schedule = (key[0], key[1], key[0] ^ key[1] ^ 0x1BD11BDA)
    x0, x1 = (counter[0] + schedule[0]) & mask, (counter[1] + schedule[1]) & mask
    rotations = (13, 15, 26, 6, 17, 29, 16, 24)
    for r in range(20):
        x0 = (x0 + x1) & mask
        rot = rotations[r % 8]
        x1 = ((x1 << rot) | (x1 >> (32 - rot))) & mask
        x1 ^= x0
        if r % 4 == 3:
            s = (r + 1) // 4
            x0 = (x0 + schedule[s % 3]) & mask
            x1 = (x1 + schedule[(s + 1) % 3] + s) & mask
    return x0, x1


@pytest.mark.parametrize("key,counter,want", KNOWN_ANSWERS)
def test_threefry_matches_random123_known_answers(key, counter, want):
    c0, c1 = (np.array([c], np.uint32) for c in counter)
    got = rnd.threefry2x32(key[0], key[1], c0, c1)
    assert (int(np.asarray(got[0])[0]), int(np.asarray(got[1])[0])) == want
    assert numpy_threefry(key, counter) == want


def test_threefry_matches_python_oracle_on_many_counters_under_jit():
    counters = np.arange(64, dtype=np.uint32) * np.uint32(2654435761)
    f = spmd.jit(lambda c: rnd.threefry2x32(0xDEADBEEF, 12345, c, c ^ np.uint32(7)))
    y0, y1 = (np.asarray(v) for v in f(counters))
    want = [numpy_threefry((0xDEADBEEF, 12345), (int(c), int(c) ^ 7)) for c in counters]
    np.testing.assert_array_equal(y0, [w[0] for w in want])
    np.testing.assert_array_equal(y1, [w[1] for w in want])


def test_keys_split_and_fold_in_follow_jax():
    assert np.asarray(rnd.key(42)).tolist() == [0, 42]
    assert np.asarray(rnd.key(2**40 + 3)).tolist() == [0, 3]  # JAX 0.10.2, x64 off
    assert np.asarray(rnd.key(-1)).tolist() == [0, 2**32 - 1]
    with spmd.enable_x64():
        assert np.asarray(rnd.key(2**40 + 3)).tolist() == [256, 3]
        assert np.asarray(rnd.key(-1)).tolist() == [2**32 - 1, 2**32 - 1]
    # jax.random.key_data(jax.random.split(jax.random.key(0))), JAX 0.10.2 (partitionable
    # threefry): key i is threefry of counter (0, i), Random123's first vector for i = 0
    assert np.asarray(rnd.split(rnd.key(0))).tolist() == [
        [1797259609, 2579123966],
        [928981903, 3453687069],
    ]
    assert tuple(np.asarray(rnd.split(rnd.key(0)))[0]) == KNOWN_ANSWERS[0][2]
    folded = np.asarray(rnd.fold_in(rnd.key(5), 9)).tolist()
    assert folded == list(numpy_threefry((0, 5), (0, 9)))


def test_split_keys_are_distinct_equal_folded_keys_and_give_independent_streams():
    keys = np.asarray(rnd.split(rnd.key(1), 16))
    folded = np.stack([np.asarray(rnd.fold_in(rnd.key(1), i)) for i in range(16)])
    assert len({tuple(k) for k in keys}) == 16
    np.testing.assert_array_equal(keys, folded)  # as JAX 0.10: split(k, n)[i] == fold_in(k, i)
    draws = np.stack([np.asarray(rnd.uniform(keys[i], (2000,))) for i in range(4)])
    correlation = np.corrcoef(draws)
    assert np.all(np.abs(correlation[np.triu_indices(4, 1)]) < 0.08)


def test_traced_seed_gives_the_same_key_as_a_python_seed():
    got = spmd.jit(rnd.key)(np.int32(77))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(rnd.key(77)))


MESHES = [
    ((8,), ("data",), ("data", None)),
    ((2, 4), ("data", "model"), ("data", "model")),
    ((4, 2), ("data", "model"), ("model", "data")),
    ((2, 4), ("data", "model"), (None, ("data", "model"))),
]


def draw_all(k):
    return {
        "bits": rnd.bits(k, (16, 12)),
        "uniform": rnd.uniform(k, (16, 12), minval=-2.0, maxval=3.0),
        "normal": rnd.normal(k, (16, 12)),
        "bernoulli": rnd.bernoulli(k, 0.25, (16, 12)),
        "randint": rnd.randint(k, (16, 12), -5, 17),
    }


@pytest.mark.parametrize("mesh_shape,names,spec", MESHES)
def test_values_do_not_depend_on_mesh_or_sharding(mesh_shape, names, spec):
    k = rnd.key(2024)
    single = {name: np.asarray(v) for name, v in draw_all(k).items()}
    mesh = spmd.make_mesh(mesh_shape, names)
    sharding = spmd.NamedSharding(mesh, spmd.P(*spec))
    sharded = spmd.jit(draw_all, out_shardings=sharding)(k)
    for name, value in sharded.items():
        assert value.sharding == sharding, name
        np.testing.assert_array_equal(np.asarray(value), single[name], err_msg=name)
        for shard in value.addressable_shards:
            np.testing.assert_array_equal(shard.data, single[name][shard.index], err_msg=name)


def test_permutation_is_the_same_sharded_and_is_a_permutation():
    k = rnd.key(3)
    single = np.asarray(rnd.permutation(k, 40))
    assert sorted(single.tolist()) == list(range(40))
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    sharding = spmd.NamedSharding(mesh, spmd.P("data"))
    sharded = spmd.jit(lambda key: rnd.permutation(key, 40), out_shardings=sharding)(k)
    np.testing.assert_array_equal(np.asarray(sharded), single)
    rows = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    np.testing.assert_array_equal(np.asarray(rnd.permutation(k, rows)), rows[single])
    cols = np.asarray(rnd.permutation(k, rows.T, axis=1))
    np.testing.assert_array_equal(cols, rows.T[:, single])


def test_a_prefix_of_a_larger_draw_is_the_smaller_draw():
    k = rnd.key(11)
    np.testing.assert_array_equal(
        np.asarray(rnd.bits(k, (10,))), np.asarray(rnd.bits(k, (50,)))[:10]
    )


def ks_statistic(samples: np.ndarray, cdf) -> float:
    x = np.sort(samples.astype(np.float64))
    n = len(x)
    f = cdf(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


def normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


N = 20000
KS_BOUND = 1.63 / math.sqrt(N)  # the 1% critical value


def test_uniform_statistics_and_range():
    u = np.asarray(rnd.uniform(rnd.key(0), (N,)))
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    assert ks_statistic(u, lambda x: x) < KS_BOUND
    scaled = np.asarray(rnd.uniform(rnd.key(0), (N,), minval=-3.0, maxval=5.0))
    assert scaled.min() >= -3.0 and scaled.max() < 5.0


def test_normal_statistics():
    z = np.asarray(rnd.normal(rnd.key(1), (N,)))
    assert z.dtype == np.float32
    assert abs(z.mean()) < 0.03 and abs(z.var() - 1) < 0.04
    assert ks_statistic(z, normal_cdf) < KS_BOUND


def test_truncated_normal_statistics_and_bounds():
    z = np.asarray(rnd.truncated_normal(rnd.key(2), -1.0, 2.0, (N,)))
    assert z.min() >= -1.0 and z.max() <= 2.0
    mass = normal_cdf(np.array([2.0]))[0] - normal_cdf(np.array([-1.0]))[0]
    cdf = lambda x: (normal_cdf(x) - normal_cdf(np.array([-1.0]))[0]) / mass
    assert ks_statistic(z, cdf) < KS_BOUND


def test_erfinv_inverts_erf():
    x = np.linspace(-3.5, 3.5, 201)
    y = np.vectorize(math.erf)(x).astype(np.float32)
    np.testing.assert_allclose(np.asarray(rnd.erfinv(y)), x, rtol=2e-3, atol=2e-3)


def test_bernoulli_randint_and_bits_statistics():
    b = np.asarray(rnd.bernoulli(rnd.key(4), 0.3, (N,)))
    assert b.dtype == np.bool_ and abs(b.mean() - 0.3) < 0.015
    p = np.array([0.0, 1.0, 0.5], np.float32)
    assert np.asarray(rnd.bernoulli(rnd.key(4), p)).tolist()[:2] == [False, True]
    r = np.asarray(rnd.randint(rnd.key(5), (N,), 3, 10))
    assert r.dtype == np.int32 and r.min() == 3 and r.max() == 9
    counts = np.bincount(r - 3, minlength=7)
    assert np.all(np.abs(counts / N - 1 / 7) < 0.015)
    word = np.asarray(rnd.bits(rnd.key(6), (N,)))
    ones = np.unpackbits(word.view(np.uint8)).mean()
    assert abs(ones - 0.5) < 0.005
    small = np.asarray(rnd.bits(rnd.key(6), (N,), "uint8"))
    assert small.dtype == np.uint8 and abs(small.mean() - 127.5) < 2.0


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
def test_other_float_dtypes_stay_in_range(dtype):
    u = np.asarray(rnd.uniform(rnd.key(8), (4000,), dtype)).astype(np.float64)
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.03
    z = np.asarray(rnd.normal(rnd.key(8), (4000,), dtype)).astype(np.float64)
    assert abs(z.mean()) < 0.06 and abs(z.var() - 1) < 0.1


def test_bad_keys_and_dtypes_raise_clear_errors():
    with pytest.raises(DTypeError, match="uint32\\[2\\]"):
        rnd.uniform(np.zeros(3, np.uint32), (2,))
    with pytest.raises(DTypeError, match="unsigned"):
        rnd.bits(rnd.key(0), (2,), "int32")
    with pytest.raises(DTypeError, match="floating"):
        rnd.normal(rnd.key(0), (2,), "int32")
