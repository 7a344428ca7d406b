"""The small GPT of examples/transformer.py: its settings, parameters (Megatron shardings over
'model', stage-major over 'pipe' when pipelined), forward pass, loss and size. Imports only spmd
and numpy; the training loop, data and command line stay in transformer.py."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

import spmd
import spmd.numpy as snp
import spmd.random
from spmd import NamedSharding, P


@dataclasses.dataclass(frozen=True)
class Config:
    """Model and optimiser settings (the defaults train in about a minute on 2 cores)."""

    vocab: int = 128
    context: int = 32
    width: int = 64
    heads: int = 4
    layers: int = 2
    mlp_ratio: int = 4
    steps: int = 60
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 6
    weight_decay: float = 0.01
    seed: int = 0
    pipeline: int = 1  # stages over the 'pipe' mesh axis (1: no pipeline)
    microbatches: int = 4  # per step, when pipelined

    @property
    def head_width(self) -> int:
        return self.width // self.heads


# -- shardings -------------------------------------------------------------------------------


def sharding(mesh: spmd.Mesh | None, *axes: str | None) -> NamedSharding | None:
    """NamedSharding over the axes this mesh has (the others replicate)."""
    if mesh is None:
        return None
    return NamedSharding(mesh, P(*[a if a in mesh.axis_names else None for a in axes]))


def param_shardings(mesh: spmd.Mesh | None) -> dict[str, Any]:
    """Megatron: q/k/v and the MLP's first layer split their outputs over 'model' (heads,
    hidden units); the attention output and the MLP's second layer split their inputs.
    Pipelined, the layers are [stage, layer of the stage, ...] with the stage dim on 'pipe'."""
    s = ("pipe",) if mesh is not None and "pipe" in mesh.axis_names else ()
    layer = {
        "ln1_scale": sharding(mesh, *s),
        "ln1_bias": sharding(mesh, *s),
        "qkv": sharding(mesh, *s, None, None, None, "model", None),  # [layer, in, qkv, head, e]
        "out": sharding(mesh, *s, None, "model", None, None),  # [layer, head, e, out]
        "ln2_scale": sharding(mesh, *s),
        "ln2_bias": sharding(mesh, *s),
        "mlp_in": sharding(mesh, *s, None, None, "model"),  # [layer, width, hidden]
        "mlp_in_bias": sharding(mesh, *s, None, "model"),
        "mlp_out": sharding(mesh, *s, None, "model", None),  # [layer, hidden, width]
        "mlp_out_bias": sharding(mesh, *s),
    }
    return {
        "embed": sharding(mesh),
        "position": sharding(mesh),
        "layers": layer,
        "final_scale": sharding(mesh),
        "final_bias": sharding(mesh),
        "unembed": sharding(mesh, None, "model"),
    }


# -- model -----------------------------------------------------------------------------------


def init_params(config: Config, mesh: spmd.Mesh | None) -> dict[str, Any]:
    """GPT-2 style initialisation from spmd.random: the same values on every mesh."""
    c = config
    names = ("embed", "position", "qkv", "out", "mlp_in", "mlp_out", "unembed")
    keys = dict(zip(names, spmd.random.split(spmd.random.key(c.seed), len(names))))
    hidden = c.mlp_ratio * c.width
    residual_scale = 0.02 / math.sqrt(2 * c.layers)

    def normal(name: str, shape: tuple[int, ...], scale: float = 0.02) -> np.ndarray:
        return np.asarray(spmd.random.normal(keys[name], shape, np.float32)) * np.float32(scale)

    def full(shape: tuple[int, ...], value: float) -> np.ndarray:
        return np.full(shape, value, np.float32)

    layers = {
        "ln1_scale": full((c.layers, c.width), 1.0),
        "ln1_bias": full((c.layers, c.width), 0.0),
        "qkv": normal("qkv", (c.layers, c.width, 3, c.heads, c.head_width)),
        "out": normal("out", (c.layers, c.heads, c.head_width, c.width), residual_scale),
        "ln2_scale": full((c.layers, c.width), 1.0),
        "ln2_bias": full((c.layers, c.width), 0.0),
        "mlp_in": normal("mlp_in", (c.layers, c.width, hidden)),
        "mlp_in_bias": full((c.layers, hidden), 0.0),
        "mlp_out": normal("mlp_out", (c.layers, hidden, c.width), residual_scale),
        "mlp_out_bias": full((c.layers, c.width), 0.0),
    }
    params = {
        "embed": normal("embed", (c.vocab, c.width)),
        "position": normal("position", (c.context, c.width), 0.01),
        "layers": layers,
        "final_scale": full((c.width,), 1.0),
        "final_bias": full((c.width,), 0.0),
        "unembed": normal("unembed", (c.width, c.vocab)),
    }
    if c.pipeline > 1:  # the same values, stage-major: [stage, layer of the stage, ...]
        params["layers"] = spmd.tree_map(
            lambda w: w.reshape((c.pipeline, c.layers // c.pipeline) + w.shape[1:]), layers
        )
    return spmd.tree_map(spmd.device_put, params, param_shardings(mesh))


def unstaged(params: dict[str, Any]) -> dict[str, Any]:
    """Pipelined parameters as numpy in the unpipelined layout ([layer, ...])."""
    flat = {k: np.asarray(v) for k, v in params.items() if k != "layers"}
    flat["layers"] = {k: np.asarray(v) for k, v in params["layers"].items()}
    if flat["layers"]["ln1_scale"].ndim == 3:
        flat["layers"] = {k: v.reshape((-1,) + v.shape[2:]) for k, v in flat["layers"].items()}
    return flat


def block(x: Any, layer: dict[str, Any], reduce: Any = lambda y: y) -> Any:
    """One pre-norm transformer block on x [batch, time, width]; `reduce` sums the partial
    products of the heads and hidden units (psum over 'model' inside the pipeline)."""
    h = spmd.nn.layer_norm(x, layer["ln1_scale"], layer["ln1_bias"])
    qkv = snp.einsum("btd,dkhe->kbthe", h, layer["qkv"])
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = snp.einsum("bthe,bshe->bhts", q, k) / math.sqrt(q.shape[-1])
    time_steps = x.shape[1]
    causal = snp.arange(time_steps)[:, None] >= snp.arange(time_steps)[None, :]
    scores = snp.where(causal, scores, -1e9)
    attention = snp.einsum("bhts,bshe->bthe", spmd.nn.softmax(scores, axis=-1), v)
    x = x + reduce(snp.einsum("bthe,hed->btd", attention, layer["out"]))
    h = spmd.nn.layer_norm(x, layer["ln2_scale"], layer["ln2_bias"])
    h = spmd.nn.gelu(h @ layer["mlp_in"] + layer["mlp_in_bias"])
    return x + reduce(h @ layer["mlp_out"]) + layer["mlp_out_bias"]


def layers_in_sequence(x: Any, layers: dict[str, Any], reduce: Any = lambda y: y) -> Any:
    def step(carry: Any, layer: dict[str, Any]) -> tuple[Any, None]:
        return block(carry, layer, reduce), None

    return spmd.lax.scan(step, x, layers)[0]


def forward(
    params: dict[str, Any], tokens: Any, mesh: spmd.Mesh | None = None, microbatches: int = 1
) -> Any:
    """Logits [batch, time, vocab] of the next character; the layers run under lax.scan,
    or, on a mesh with a 'pipe' axis, as pipeline stages (embedding and head outside)."""
    vocab = params["embed"].shape[0]
    x = spmd.nn.one_hot(tokens, vocab) @ params["embed"] + params["position"]
    if mesh is not None and "pipe" in mesh.axis_names:

        def stage(layers: dict[str, Any], h: Any) -> Any:  # one device's blocks (shard_map)
            return layers_in_sequence(h, layers, lambda y: spmd.lax.psum(y, "model"))

        specs = spmd.tree_map(lambda s: s.spec, param_shardings(mesh)["layers"])
        x = spmd.pipeline(
            stage,
            params["layers"],
            x,
            num_microbatches=microbatches,
            mesh=mesh,
            param_specs=specs,
            input_spec=P("data"),
        )
    else:
        x = layers_in_sequence(x, params["layers"])
    x = spmd.nn.layer_norm(x, params["final_scale"], params["final_bias"])
    return x @ params["unembed"]


def loss_fn(
    params: dict[str, Any], batch: Any, mesh: spmd.Mesh | None = None, microbatches: int = 1
) -> Any:
    """Mean cross-entropy of each next character."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = forward(params, inputs, mesh, microbatches)
    log_probs = spmd.nn.log_softmax(logits, axis=-1)
    return -snp.mean(snp.sum(log_probs * spmd.nn.one_hot(targets, logits.shape[-1]), axis=-1))


def parameter_count(config: Config) -> int:
    c = config
    per_layer = (
        4 * c.width
        + 3 * c.width * c.width
        + c.width * c.width
        + 2 * c.width * c.mlp_ratio * c.width
        + c.mlp_ratio * c.width
        + c.width
    )
    return c.layers * per_layer + 2 * c.vocab * c.width + c.context * c.width + 2 * c.width


def flops_per_token(config: Config) -> float:
    """Training FLOPs per token: 6 x parameters + 12 x layers x context x width (attention)."""
    return 6 * parameter_count(config) + 12 * config.layers * config.context * config.width


def param_shapes(config: Config) -> Any:
    """The parameter pytree as ShapeDtypeStructs, without allocating it."""
    c = config
    hidden = c.mlp_ratio * c.width

    def f32(*shape: int) -> Any:
        return spmd.ShapeDtypeStruct(shape, "float32")

    layer = {
        "ln1_scale": f32(c.layers, c.width),
        "ln1_bias": f32(c.layers, c.width),
        "qkv": f32(c.layers, c.width, 3, c.heads, c.head_width),
        "out": f32(c.layers, c.heads, c.head_width, c.width),
        "ln2_scale": f32(c.layers, c.width),
        "ln2_bias": f32(c.layers, c.width),
        "mlp_in": f32(c.layers, c.width, hidden),
        "mlp_in_bias": f32(c.layers, hidden),
        "mlp_out": f32(c.layers, hidden, c.width),
        "mlp_out_bias": f32(c.layers, c.width),
    }
    return {
        "embed": f32(c.vocab, c.width),
        "position": f32(c.context, c.width),
        "layers": layer,
        "final_scale": f32(c.width),
        "final_bias": f32(c.width),
        "unembed": f32(c.width, c.vocab),
    }
