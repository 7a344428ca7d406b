"""cupy behind one door: lazy import with a clear error, availability, device dtypes, the
RawModule cache (by source hash) and cuBLAS strided-batched GEMMs.

Nothing here imports cupy at module import time.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import numpy as np

from spmd import dtypes
from spmd.errors import LaunchError

_modules: dict[tuple[str, int], Any] = {}
_lock = threading.Lock()
STATS = {"compiles": 0, "hits": 0}
ACC_NUMPY = {
    "float": np.float32,
    "double": np.float64,
    "int": np.int32,
    "unsigned int": np.uint32,
    "long long": np.int64,
    "unsigned long long": np.uint64,
}
# cudaDataType / cublasComputeType values (cuda library_types.h, cublas_api.h).
CUDA_TYPE = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 14}
COMPUTE_32F, COMPUTE_64F, GEMM_DEFAULT_TENSOR_OP = 68, 70, 99


def cupy_module() -> Any:
    """The cupy module, or a LaunchError that says how to get a working one."""
    try:
        import cupy
    except ImportError as err:
        raise LaunchError(
            f"the GPU backend needs cupy, which does not import: {err}",
            hint="pip install 'spmd[gpu]' (cupy-cuda13x) on a machine with "
            "an NVIDIA driver, or use the cpu backend",
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except (RuntimeError, OSError) as err:  # CUDARuntimeError without a driver
        raise LaunchError(
            f"cupy imports but finds no CUDA device: {err}",
            hint="check nvidia-smi and CUDA_VISIBLE_DEVICES, or use the cpu backend",
        ) from None
    if count == 0:
        raise LaunchError("cupy finds no CUDA device", hint="use the cpu backend")
    return cupy


def available() -> bool:
    """Whether cupy imports and sees at least one GPU."""
    try:
        cupy_module()
    except LaunchError:
        return False
    return True


def device_dtype(dtype: str) -> np.dtype:
    """How a dtype is stored in a cupy array: bfloat16 as its uint16 bits (cupy has none)."""
    return np.dtype(np.uint16) if dtype == "bfloat16" else dtypes.to_numpy(dtype)


def to_device(cp: Any, value: Any, dtype: str) -> Any:
    """A C-contiguous device array of the value in the dtype's device storage."""
    if isinstance(value, cp.ndarray):
        return cp.ascontiguousarray(value)
    host = np.ascontiguousarray(np.asarray(value, dtype=dtypes.to_numpy(dtype)))
    return cp.asarray(host.view(device_dtype(dtype)))


def to_host(cp: Any, value: Any, dtype: str) -> np.ndarray:
    """A numpy array of the dtype from a device array in its device storage."""
    return cp.asnumpy(value).view(dtypes.to_numpy(dtype))


def compile_module(cp: Any, source: str, device_id: int) -> Any:
    """A cupy RawModule of the source, compiled once per (source hash, device)."""
    key = (hashlib.sha256(source.encode()).hexdigest(), device_id)
    with _lock:
        module = _modules.get(key)
        if module is not None:
            STATS["hits"] += 1
            return module
        with cp.cuda.Device(device_id):
            module = cp.RawModule(code=source, options=("-std=c++17",))
            module.compile()
        _modules[key] = module
        STATS["compiles"] += 1
        return module


def gemm(cp: Any, a: Any, b: Any, out: Any, in_dtype: str, out_dtype: str) -> None:
    """out[B,M,N] = a[B,M,K] @ b[B,K,N] (C-contiguous device arrays) through cuBLAS;
    bfloat16/float16 accumulate in float32 on tensor cores; integers through cupy.matmul."""
    mixed_double = (in_dtype == "float64") != (out_dtype == "float64")
    if in_dtype not in CUDA_TYPE or out_dtype not in CUDA_TYPE or mixed_double:
        wide = device_dtype(out_dtype)
        if in_dtype == "bfloat16":
            a, b = bfloat16_to_float32(cp, a), bfloat16_to_float32(cp, b)
        out[...] = cp.matmul(a.astype(wide), b.astype(wide))
        return
    batch, m, k = a.shape
    n = b.shape[2]
    if m == 0 or n == 0 or batch == 0:
        return
    if k == 0:
        out.fill(0)
        return
    from cupy.cuda import cublas

    double = in_dtype == "float64"
    scalar = np.float64 if double else np.float32
    one, zero = np.ones(1, scalar), np.zeros(1, scalar)
    kind, out_kind = CUDA_TYPE[in_dtype], CUDA_TYPE[out_dtype]
    compute = COMPUTE_64F if double else COMPUTE_32F
    handle = cp.cuda.device.get_cublas_handle()
    # Row-major C = A B is column-major C^T = B^T A^T: swap the operands, no transposes.
    cublas.gemmStridedBatchedEx(
        handle,
        0,
        0,
        n,
        m,
        k,
        one.ctypes.data,
        b.data.ptr,
        kind,
        n,
        k * n,
        a.data.ptr,
        kind,
        k,
        m * k,
        zero.ctypes.data,
        out.data.ptr,
        out_kind,
        n,
        m * n,
        batch,
        compute,
        GEMM_DEFAULT_TENSOR_OP,
    )


def bfloat16_to_float32(cp: Any, bits: Any) -> Any:
    """float32 values of bfloat16 stored as uint16 bits (exact)."""
    return (bits.astype(cp.uint32) << 16).view(cp.float32)
