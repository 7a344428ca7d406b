"""Programs in the style of JAX's sharding docs, written once against a small `Api` that is
either JAX or spmd (only the imports differ). Each returns {name: value}; values are arrays
(compared by value, dtype and sharding) or strings (compared exactly).

Inputs are float32 so that JAX's 32-bit default and spmd agree on dtypes.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from jax_random_programs import random_numbers


class Api:
    """The names a JAX user imports, from JAX or from spmd."""

    def __init__(self, lib: str):
        self.lib = lib
        if lib == "jax":
            import jax
            import jax.numpy as jnp
            from jax.scipy.special import logsumexp
            from jax.sharding import AxisType, NamedSharding, PartitionSpec

            self.jax, self.jnp, self.lax = jax, jnp, jax.lax
            self.pvary = lambda x, axes: jax.lax.pcast(x, axes, to="varying")
        else:
            import spmd
            import spmd.numpy as jnp
            from spmd import AxisType, NamedSharding, PartitionSpec
            from spmd.scipy.special import logsumexp

            self.jax, self.jnp, self.lax = spmd, jnp, spmd.lax
            self.pvary = spmd.lax.pvary
        self.P, self.NamedSharding, self.AxisType = PartitionSpec, NamedSharding, AxisType
        self.logsumexp = logsumexp

    @contextlib.contextmanager
    def x64_off(self) -> Iterator[None]:
        """jax_enable_x64 off, whatever the environment says (both libraries' default)."""
        before = self.jax.config.read("jax_enable_x64")
        self.jax.config.update("jax_enable_x64", False)
        try:
            yield
        finally:
            self.jax.config.update("jax_enable_x64", before)

    def mesh(self, shape: tuple[int, ...], names: tuple[str, ...], auto: bool = True) -> Any:
        types = (self.AxisType.Auto,) * len(shape) if auto else None
        return self.jax.make_mesh(shape, names, types)


def _x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def sharded_elementwise(api: Api) -> dict[str, Any]:
    mesh = api.mesh((2, 4), ("x", "y"))
    x = api.jax.device_put(_x((8, 8)), api.NamedSharding(mesh, api.P("x", "y")))
    y = api.jnp.sin(x) * 2 + 1
    return {"x": x, "y": y, "jit_y": api.jax.jit(lambda v: api.jnp.cos(v) - v)(x)}


def jit_matmul_layouts(api: Api) -> dict[str, Any]:
    mesh = api.mesh((2, 4), ("x", "y"))
    a = api.jax.device_put(_x((8, 16)), api.NamedSharding(mesh, api.P("x", None)))
    b = api.jax.device_put(_x((16, 8), 1), api.NamedSharding(mesh, api.P(None, "y")))
    out = api.jax.jit(lambda u, v: u @ v)(a, b)
    colsum = api.jax.jit(lambda u: u.sum(axis=0))(a)
    pinned = api.jax.jit(lambda u, v: u @ v, out_shardings=api.NamedSharding(mesh, api.P()))(a, b)
    return {"out": out, "colsum": colsum, "pinned": pinned}


def sharding_constraint(api: Api) -> dict[str, Any]:
    mesh = api.mesh((2, 4), ("x", "y"))
    x = api.jax.device_put(_x((8, 8)), api.NamedSharding(mesh, api.P("x", "y")))

    @api.jax.jit
    def f(v):
        v = api.jnp.tanh(v)
        v = api.jax.lax.with_sharding_constraint(v, api.NamedSharding(mesh, api.P(None, "x")))
        return v * 3

    return {"out": f(x)}


def shard_map_psum(api: Api) -> dict[str, Any]:
    mesh = api.mesh((8,), ("i",))
    x = _x((16,))
    with api.jax.set_mesh(mesh):

        @api.jax.shard_map(in_specs=api.P("i"), out_specs=api.P())
        def total(block):
            return api.lax.psum(block.sum(keepdims=True), "i")

        @api.jax.shard_map(in_specs=api.P("i"), out_specs=api.P("i"))
        def centred(block):
            return block - api.lax.pmean(block.mean(keepdims=True), "i")

        return {"total": total(x), "centred": centred(x), "jit_total": api.jax.jit(total)(x)}


def shard_map_matmul(api: Api) -> dict[str, Any]:
    mesh = api.mesh((2, 4), ("x", "y"))
    a, b = _x((8, 16)), _x((16, 8), 1)
    with api.jax.set_mesh(mesh):

        @api.jax.shard_map(in_specs=(api.P("x", "y"), api.P("y", None)), out_specs=api.P("x", None))
        def matmul_reduce(u, v):
            return api.lax.psum(u @ v, "y")

        @api.jax.shard_map(in_specs=(api.P("x", "y"), api.P("y", None)), out_specs=api.P("x", "y"))
        def matmul_scatter(u, v):
            return api.lax.psum_scatter(u @ v, "y", scatter_dimension=1, tiled=True)

        # all_gather's result still counts as varying over 'x' (JAX): the check is off
        @api.jax.shard_map(in_specs=api.P("x", None), out_specs=api.P(None, None), check_vma=False)
        def gather(u):
            return api.lax.all_gather(u, "x", tiled=True)

        return {
            "reduce": matmul_reduce(a, b),
            "scatter": matmul_scatter(a, b),
            "gathered": gather(a),
        }


def shard_map_scan_carry(api: Api) -> dict[str, Any]:
    mesh = api.mesh((4,), ("i",))
    x = _x((8,))

    def body(c, xi):
        return c + xi, c * xi

    with api.jax.set_mesh(mesh):

        @api.jax.shard_map(in_specs=api.P("i"), out_specs=(api.P("i"), api.P("i")))
        def running(block):
            carry, ys = api.lax.scan(body, api.pvary(api.jnp.float32(0.0), "i"), block)
            return carry[None], ys

        last, ys = running(x)
    return {"last": last, "ys": ys}


def _mlp_loss(api: Api) -> Callable[..., Any]:
    jnp = api.jnp

    def layer(w, b, x):
        return jnp.maximum(jnp.dot(x, w) + b, 0)

    def loss(params, batch):
        inputs, targets = batch
        for w, b in params:
            inputs = layer(w, b, inputs)
        return jnp.mean(jnp.sum((inputs - targets) ** 2, axis=-1))

    return loss


def tensor_parallel_mlp(api: Api) -> dict[str, Any]:
    mesh = api.mesh((4, 2), ("batch", "model"))

    def put(v: np.ndarray, *spec: Any) -> Any:
        return api.jax.device_put(v, api.NamedSharding(mesh, api.P(*spec)))

    w1, b1 = put(_x((16, 32), 1) / 4, None, "model"), put(_x((32,), 2), "model")
    w2, b2 = put(_x((32, 8), 3) / 4, "model", None), put(_x((8,), 4), None)
    batch = (put(_x((8, 16), 5), "batch"), put(_x((8, 8), 6), "batch"))
    params = [(w1, b1), (w2, b2)]
    loss = _mlp_loss(api)
    (dw1, db1), (dw2, db2) = api.jax.jit(api.jax.grad(loss))(params, batch)
    return {
        "loss": api.jax.jit(loss)(params, batch),
        "dw1": dw1,
        "db1": db1,
        "dw2": dw2,
        "db2": db2,
    }


def vmapped(api: Api) -> dict[str, Any]:
    jnp = api.jnp
    w = _x((4, 3))
    xs = _x((6, 4), 1)

    def predict(w, x):
        return jnp.tanh(x @ w)

    def loss(w, x):
        return jnp.sum(predict(w, x) ** 2)

    per_example = api.jax.vmap(api.jax.grad(loss), in_axes=(None, 0))(w, xs)
    batched = api.jax.jit(api.jax.vmap(predict, in_axes=(None, 0)))(w, xs)
    moved = api.jax.vmap(lambda a, b: a * b, in_axes=(1, None), out_axes=1)(xs.T, w[:, 0])
    return {"per_example": per_example, "batched": batched, "moved": moved}


def numpy_names(api: Api) -> dict[str, Any]:
    jnp = api.jnp
    v = _x((3, 5)) * 30
    three = jnp.float32(3.0)
    return {
        "logsumexp": api.logsumexp(v, axis=1),
        "allclose": jnp.allclose(jnp.ones(3), jnp.ones(3) + 1e-9),
        "three": three,
        "three_dtype": str(three.dtype),
        "int_dtype": str(jnp.int32(3.7).dtype),
        "int_value": jnp.int32(3.7),
        "take_fill": jnp.take(jnp.arange(4.0), jnp.array([0, 9, -1])),
        "slice_in_dim": api.lax.dynamic_slice_in_dim(jnp.arange(10.0), 7, 4),
        "copy": jnp.copy(jnp.arange(3.0)),
        "sorted": jnp.sort(v, axis=0),
        "argsorted": jnp.argsort(v[0]),
    }


def default_dtypes(api: Api) -> dict[str, Any]:
    jnp = api.jnp
    x = np.arange(4.0)  # numpy's float64
    with api.x64_off():
        return {
            "floats": jnp.array([3.0]),
            "ints": jnp.array([3, 1]),
            "from_float64": jnp.asarray(x) * 2,
            "jit": api.jax.jit(lambda v: v + 1)(x),
            "sum_ints": jnp.sum(np.arange(5)),
            "mean_ints": jnp.mean(np.arange(5)),
            "asked_float64": jnp.zeros(2, dtype=np.float64),
            "grad": api.jax.grad(lambda v: jnp.sum(v**2))(x),
        }


def eager_layouts(api: Api) -> dict[str, Any]:
    """Ops outside jit on sharded arrays keep or drop shardings as jit would."""
    mesh = api.mesh((2, 4), ("x", "y"))
    with api.jax.set_mesh(mesh):
        x = api.jax.device_put(_x((8, 8)), api.P("x", "y"))
        v = api.jax.device_put(_x((8,), 1), api.P("y"))
        with api.jax.set_mesh(api.mesh((2, 4), ("x", "y"), auto=False)):  # out_sharding needs
            noise = api.jax.random.normal(
                api.jax.random.key(0),
                (8, 4),  # Explicit axes
                out_sharding=api.P("x", None),
            )
        return {
            "plus": x + 1,
            "scaled": x * v,
            "rowsum": x.sum(axis=1),
            "total": api.jnp.sum(x),
            "transposed": x.T,
            "zeros": api.jnp.zeros((8, 4), device=api.NamedSharding(mesh, api.P(None, "y"))),
            "noise_layout": str(layout(noise)),
            "noise_dtype": str(noise.dtype),
        }


def set_mesh_placement(api: Api) -> dict[str, Any]:
    """Under set_mesh, arrays made without a sharding live on the mesh, replicated."""
    jnp = api.jnp
    out: dict[str, Any] = {}
    for kind, auto in (("auto", True), ("explicit", False)):
        with api.jax.set_mesh(api.mesh((2, 4), ("x", "y"), auto)):
            x = api.jax.device_put(_x((8,)), api.P("x"))
            out.update(
                {
                    f"{kind}_zeros": jnp.zeros(4),
                    f"{kind}_arange": jnp.arange(4.0),
                    f"{kind}_asarray": jnp.asarray(_x((3,))),
                    f"{kind}_sum": jnp.ones(3) + 1,
                    f"{kind}_mixed": x + _x((8,), 1),
                    f"{kind}_put": api.jax.device_put(_x((2,))),
                }
            )
    return out


def bare_specs(api: Api) -> dict[str, Any]:
    """jit's in/out shardings and constraints as bare P under set_mesh."""
    mesh = api.mesh((4, 2), ("data", "model"))
    a, w = _x((16, 8)), _x((8, 4), 1)
    with api.jax.set_mesh(mesh):
        f = api.jax.jit(
            lambda u, v: api.jnp.tanh(u @ v),
            in_shardings=(api.P("data", None), api.P(None, "model")),
            out_shardings=api.P("data", "model"),
        )
        g = api.jax.jit(lambda u: api.jax.lax.with_sharding_constraint(u * 2, api.P("model")))
        return {"f": f(a, w), "g": g(a), "put": api.jax.device_put(a, api.P(None, "model"))}


def data_parallel_step(api: Api) -> dict[str, Any]:
    """A data-parallel SGD step written with shard_map: grads psum'd over the batch axis."""
    jnp = api.jnp
    mesh = api.mesh((8,), ("batch",))
    w = _x((4, 2), 1)
    xs, ys = _x((16, 4), 2), _x((16, 2), 3)

    def local_loss(w, x, y):
        return jnp.mean((jnp.tanh(x @ w) - y) ** 2)

    with api.jax.set_mesh(mesh):

        @api.jax.jit
        @api.jax.shard_map(
            in_specs=(api.P(), api.P("batch"), api.P("batch")), out_specs=(api.P(), api.P())
        )
        def step(w, x, y):
            loss, g = api.jax.value_and_grad(local_loss)(w, x, y)
            return api.lax.pmean(loss, "batch"), w - 0.1 * api.lax.pmean(g, "batch")

        loss, new_w = step(w, xs, ys)
    return {"loss": loss, "new_w": new_w}


def mnist_style_training(api: Api) -> dict[str, Any]:
    """The MNIST example's shape: relu MLP, log-softmax by logsumexp, jax.tree.map SGD,
    the batch sharded over a data axis and the params replicated."""
    jnp, nn = api.jnp, api.jax.nn
    sizes = (12, 16, 10)
    params = [
        (_x((m, n), i) * 0.3, _x((n,), 10 + i) * 0.1)
        for i, (m, n) in enumerate(itertools.pairwise(sizes))
    ]
    labels = np.random.default_rng(7).integers(0, 10, 32)
    mesh = api.mesh((8,), ("data",))
    images = api.jax.device_put(_x((32, 12), 20), api.NamedSharding(mesh, api.P("data")))
    targets = api.jax.device_put(nn.one_hot(labels, 10), api.NamedSharding(mesh, api.P("data")))

    def predict(params, x):
        for w, b in params[:-1]:
            x = nn.relu(x @ w + b)
        w, b = params[-1]
        logits = x @ w + b
        return logits - api.logsumexp(logits, axis=1, keepdims=True)

    def loss(params, batch):
        x, y = batch
        return -jnp.mean(jnp.sum(predict(params, x) * y, axis=1))

    @api.jax.jit
    def update(params, batch):
        grads = api.jax.grad(loss)(params, batch)
        return api.jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)

    for _ in range(3):
        params = update(params, (images, targets))
    right = jnp.argmax(predict(params, images), axis=1) == jnp.argmax(targets, axis=1)
    return {
        "w1": params[0][0],
        "b2": params[1][1],
        "loss": loss(params, (images, targets)),
        "accuracy": jnp.mean(right),
    }


def explicit_types(api: Api) -> dict[str, Any]:
    mesh = api.mesh((2, 4), ("x", "y"), auto=False)
    seen: dict[str, Any] = {}
    with api.jax.set_mesh(mesh):
        x = api.jax.device_put(_x((8, 8)), api.P("x", "y"))

        @api.jax.jit
        def f(v):
            seen["in"] = str(api.jax.typeof(v))
            seen["double"] = str(api.jax.typeof(v * 2))
            seen["sum0"] = str(api.jax.typeof(v.sum(axis=0)))
            seen["T"] = str(api.jax.typeof(v.T))
            return api.jax.reshard(v, api.P(None, "y"))

        out = f(x)
        dot = api.jnp.dot(x, x, out_sharding=api.P("x", None))
        seen.update(
            out=out,
            dot=dot,
            outside=str(api.jax.typeof(x)),
            mesh_types=str(api.jax.sharding.get_abstract_mesh().axis_types),
        )
    return seen


PROGRAMS: dict[str, Callable[[Api], dict[str, Any]]] = {
    f.__name__: f
    for f in (
        sharded_elementwise,
        jit_matmul_layouts,
        sharding_constraint,
        shard_map_psum,
        shard_map_matmul,
        shard_map_scan_carry,
        tensor_parallel_mlp,
        vmapped,
        numpy_names,
        default_dtypes,
        eager_layouts,
        set_mesh_placement,
        bare_specs,
        data_parallel_step,
        mnist_style_training,
        explicit_types,
        random_numbers,
    )
}


def layout(value: Any) -> list[list[str]] | str:
    """Where an array lives, in a form both libraries give: the mesh axes of each dim, or
    'single' for one device (numpy values: 'host')."""
    sharding = getattr(value, "sharding", None)
    if sharding is None:
        return "host"
    spec = getattr(sharding, "spec", None)
    if spec is None:
        return "single"
    ndim = np.ndim(value)
    dims: list[list[str]] = []
    for entry in tuple(spec) + (None,) * (ndim - len(spec)):
        dims.append([] if entry is None else [entry] if isinstance(entry, str) else list(entry))
    return dims


def run_program(name: str, api: Api) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays by 'program/name', {key: {dtype, shape, layout} or a string})."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for key, value in PROGRAMS[name](api).items():
        full = f"{name}/{key}"
        if isinstance(value, str):
            meta[full] = value
            continue
        arr = np.asarray(value)
        arrays[full] = arr
        meta[full] = {"dtype": str(arr.dtype), "shape": list(arr.shape), "layout": layout(value)}
    return arrays, meta
