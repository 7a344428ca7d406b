"""Public training configs rebuilt as spmd programs for the simulator (issue 18 benchmarks):
a llama-style decoder (RMSNorm, fused causal attention with GQA, gated SiLU MLP), layers
under lax.scan with spmd.remat, FSDP (weights' embed dim and the batch on 'data', optional
'model' axis for tensor parallelism), AdamW state in float32 and bf16 compute.

MaxText 1B and 16B on v5e-256: MaxText/configs/v5e/16b.sh (global_parameter_scale=16,
per_device_batch_size=6, max_target_length=2048, remat_policy=full, attention=flash) over
base.yml (base_emb_dim 2048, base_num_query_heads 16, base_mlp_dim 7168,
base_num_decoder_layers 16, head_dim 128, vocab 32000), scaled by pyconfig's
get_individual_scales: emb 4096, 64 heads, mlp 28672, 32 layers. Measured (MaxText
configs/v5e/README.md): 120 TFLOP/s/chip, 61.1% MFU on 1x v5e-256; 117 on 2x v5e-256.

The loss is logsumexp(logits) - logits[..., 0] (a cross-entropy's cost without the label
gather; take_along_axis and one_hot have partitioner defects of their own, issue 18 item 6),
and the inputs are embedded activations (the embedding gather is not modelled).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import spmd
import spmd.numpy as snp
from spmd import lax
from spmd.sharding import NamedSharding, P


@dataclass(frozen=True)
class Model:
    """A decoder-only transformer and its per-device batch."""

    name: str
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    head_dim: int
    d_ff: int
    vocab: int
    batch_per_device: int
    seq: int
    remat: str = "full"  # "full" (nothing saveable), "dots", "projections", "offload", "none"
    fused_attention: bool = True  # False: einsum scores, softmax, einsum (S x S in HBM)

    @property
    def params(self) -> int:
        d, n, k, h, f = self.d_model, self.heads, self.kv_heads, self.head_dim, self.d_ff
        per_layer = d * n * h * 2 + d * k * h * 2 + 3 * d * f + 2 * d
        return self.layers * per_layer + d * self.vocab + d

    def model_flops(self, chips: int) -> float:
        """Per step: 6 x params x tokens + causal attention (MaxText's TFLOP/s count)."""
        tokens = self.batch_per_device * chips * self.seq
        attention = 6 * self.layers * self.heads * self.head_dim * self.seq * tokens  # causal: 1/2
        return 6.0 * self.params * tokens + attention

    def shapes(self) -> dict[str, tuple[int, ...]]:
        el, d, n, k, h, f = (
            self.layers,
            self.d_model,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.d_ff,
        )
        return {
            "wq": (el, d, n, h),
            "wk": (el, d, k, h),
            "wv": (el, d, k, h),
            "wo": (el, n, h, d),
            "w1": (el, d, f),
            "w3": (el, d, f),
            "w2": (el, f, d),
            "norm1": (el, d),
            "norm2": (el, d),
            "unembed": (d, self.vocab),
            "final_norm": (d,),
        }


MAXTEXT_16B = Model("maxtext-16b", 32, 4096, 64, 64, 128, 28672, 32000, 6, 2048)
# MaxText/configs/v5e/1b.sh: base.yml at global_parameter_scale=1, per_device_batch_size=1,
# remat full, flash attention; "works out of the box for any number of v5e-256 slices".
MAXTEXT_1B = Model("maxtext-1b", 16, 2048, 16, 16, 128, 7168, 32000, 1, 2048)
# tpu-recipes training/trillium (MaxText on v6e-256, FSDP over 256, flash attention), the
# architectures as MaxText's llama2-70b and llama3.1-8b configs. Llama2-70B `llama2_70b_4096`:
# pdbs 4, seq 4096, remat full; measured 17.373 s/step. Llama3.1-8B `llama3_1_8b_8192`: pdbs 4,
# seq 8192, remat "custom" offloading the q/k/v/out projections and the layer input to host
# (saved in host memory: spmd.checkpoint_policies.save_and_offload_only_these_names, the
# copies over each chip's host link priced); measured 4.546 s/step.
LLAMA2_70B = Model("llama2-70b", 80, 8192, 64, 8, 128, 28672, 32000, 4, 4096)
LLAMA31_8B = Model("llama3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, 4, 8192, "offload")


def specs(fsdp: str = "data", tp: str | None = None) -> dict[str, P]:
    """FSDP on the embed dim (MaxText's 'fsdp' rule); tp shards heads and the MLP width."""
    return {
        "wq": P(None, fsdp, tp),
        "wk": P(None, fsdp, tp),
        "wv": P(None, fsdp, tp),
        "wo": P(None, tp, None, fsdp),
        "w1": P(None, fsdp, tp),
        "w3": P(None, fsdp, tp),
        "w2": P(None, tp, fsdp),
        "norm1": P(),
        "norm2": P(),
        "unembed": P(fsdp),
        "final_norm": P(),
    }


def rms_norm(x: Any, scale: Any) -> Any:
    x32 = x.astype("float32")
    norm = x32 * lax.rsqrt(snp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
    return (norm * scale).astype(x.dtype)


def unfused_attention(q: Any, k: Any, v: Any) -> Any:
    """Causal attention as three ops (MHA only): the [b, n, s, t] scores go through HBM."""
    seq, head_dim = q.shape[1], q.shape[-1]
    scores = snp.einsum("bsnh,btnh->bnst", q, k) * (1.0 / math.sqrt(head_dim))
    causal = snp.tril(snp.ones((seq, seq), "bool"))
    scores = snp.where(causal, scores, -1e9)
    return snp.einsum("bnst,btnh->bsnh", spmd.nn.softmax(scores, axis=-1), v)


def layer(x: Any, w: dict[str, Any], fused: bool = True) -> tuple[Any, None]:
    """One pre-norm decoder block in bf16 (weights cast from their float32 masters)."""
    c = {k: v.astype("bfloat16") for k, v in w.items()}
    x = spmd.checkpoint_name(x, "decoder_layer_input")
    h = rms_norm(x, c["norm1"])
    q = spmd.checkpoint_name(snp.einsum("bsd,dnh->bsnh", h, c["wq"]), "projection")
    k = spmd.checkpoint_name(snp.einsum("bsd,dnh->bsnh", h, c["wk"]), "projection")
    v = spmd.checkpoint_name(snp.einsum("bsd,dnh->bsnh", h, c["wv"]), "projection")
    if fused:
        a = spmd.nn.dot_product_attention(q, k, v, is_causal=True)
    else:
        a = unfused_attention(q, k, v)
    x = x + spmd.checkpoint_name(snp.einsum("bsnh,nhd->bsd", a, c["wo"]), "projection")
    h = rms_norm(x, c["norm2"])
    gate = spmd.nn.silu(snp.einsum("bsd,df->bsf", h, c["w1"]))
    up = snp.einsum("bsd,df->bsf", h, c["w3"])
    return x + snp.einsum("bsf,fd->bsd", gate * up, c["w2"]), None


POLICIES = {
    "full": None,
    "dots": spmd.checkpoint_policies.dots_saveable,
    "projections": spmd.checkpoint_policies.save_only_these_names("projection"),
    # MaxText's remat "custom" with these names "offload": saved in host memory
    "offload": spmd.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=(),
        names_which_can_be_offloaded=("decoder_layer_input", "projection"),
    ),
}


def loss_fn(model: Model) -> Any:
    block = functools.partial(layer, fused=model.fused_attention)
    body = block if model.remat == "none" else spmd.remat(block, policy=POLICIES[model.remat])
    stacked = ("wq", "wk", "wv", "wo", "w1", "w3", "w2", "norm1", "norm2")

    def loss(params: dict[str, Any], x: Any) -> Any:
        y, _ = lax.scan(body, x, {k: params[k] for k in stacked})
        y = rms_norm(y, params["final_norm"].astype("bfloat16"))
        logits = snp.einsum("bsd,dv->bsv", y, params["unembed"].astype("bfloat16"))
        logits = logits.astype("float32")
        return snp.mean(spmd.nn.logsumexp(logits, axis=-1) - logits[..., 0])

    return loss


def train_step(model: Model) -> Any:
    """value_and_grad, then AdamW (float32 m and v) on float32 master weights."""
    loss = loss_fn(model)

    def step(params: Any, m: Any, v: Any, x: Any) -> Any:
        value, grads = spmd.value_and_grad(loss)(params, x)
        m = spmd.tree_map(lambda a, g: 0.9 * a + 0.1 * g, m, grads)
        v = spmd.tree_map(lambda a, g: 0.95 * a + 0.05 * g * g, v, grads)
        params = spmd.tree_map(
            lambda p, a, b: p - 1e-4 * (a / (lax.sqrt(b) + 1e-8) + 0.1 * p), params, m, v
        )
        return value, params, m, v

    return step


def abstract_args(
    model: Model, mesh: Any, fsdp: str = "data", tp: str | None = None, batch_axes: Any = "data"
) -> tuple[Any, ...]:
    """(params, m, v, x) as ShapeDtypeStructs laid out on `mesh`."""
    spec = specs(fsdp, tp)
    chips = (
        math.prod(mesh.shape.values())
        if isinstance(mesh.shape, dict)
        else math.prod(mesh.devices.shape)
    )
    params = {
        k: spmd.ShapeDtypeStruct(s, "float32", NamedSharding(mesh, spec[k]))
        for k, s in model.shapes().items()
    }
    x = spmd.ShapeDtypeStruct(
        (model.batch_per_device * chips, model.seq, model.d_model),
        "bfloat16",
        NamedSharding(mesh, P(batch_axes)),
    )
    return params, params, params, x
