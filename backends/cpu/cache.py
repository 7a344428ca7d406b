"""Native code for kernels: LLVM O3 for the host CPU, object files cached on disk.

The cache key hashes the kernel's IR text, the target triple and the host CPU name and
features; a hit loads the cached object file and skips LLVM optimization entirely.
Cache dir: $SPMD_CACHE_DIR, else ~/.cache/spmd/cpu.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import llvmlite.binding as llvm
from llvmlite import ir

from spmd import config

KernelFn = Callable[[int, int, int], None]
_PROTOTYPE = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
STATS = {"hits": 0, "misses": 0, "memory_hits": 0}
_PLACEHOLDER = "spmd_kernel"  # every symbol of a built module starts with its name
# LLVM's new-pass-manager tuning. Loop unrolling is off: it fully unrolled short constant
# trip-count loops (a 64-wide row sum) into code that took 1-3 s to optimize and emit per
# kernel (0.05 s without), and the vectorizer's interleaving already unrolls the hot loops.
PIPELINE = {
    "speed_level": 3,
    "loop_vectorization": True,
    "slp_vectorization": True,
    "loop_unrolling": False,
}


class _Jit:
    """One MCJIT engine per process; kernels are added to it as object files."""

    def __init__(self) -> None:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        libm = ctypes.util.find_library("m")
        if libm:
            llvm.load_library_permanently(libm)
        target = llvm.Target.from_default_triple()
        self.triple = llvm.get_process_triple()
        self.cpu = llvm.get_host_cpu_name()
        self.features = llvm.get_host_cpu_features().flatten()
        self.machine = target.create_target_machine(cpu=self.cpu, features=self.features, opt=3)
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.machine)
        self.loaded: dict[str, KernelFn] = {}
        self.lock = threading.Lock()

    def optimize(self, text: str) -> bytes:
        module = llvm.parse_assembly(text)
        module.triple = self.triple
        module.data_layout = str(self.machine.target_data)
        module.verify()
        _run_pipeline(module, self.machine)
        return self.machine.emit_object(module)

    def load(self, name: str, obj: bytes) -> KernelFn:
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()
        address = self.engine.get_function_address(name)
        if not address:
            raise RuntimeError(f"kernel {name} did not load (this is a bug in spmd)")
        return _PROTOTYPE(address)


def _run_pipeline(module: llvm.ModuleRef, machine: llvm.TargetMachine) -> None:
    options = llvm.create_pipeline_tuning_options(speed_level=PIPELINE["speed_level"])
    for name, value in PIPELINE.items():
        if name != "speed_level":
            setattr(options, name, value)
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(module, builder)


_jit: _Jit | None = None
_jit_lock = threading.Lock()


def jit() -> _Jit:
    global _jit
    with _jit_lock:
        if _jit is None:
            _jit = _Jit()
        return _jit


def cache_dir() -> Path:
    return Path(config.env("SPMD_CACHE_DIR")).expanduser()


def kernel_key(text: str) -> str:
    j = jit()
    blob = (
        f"{text}\n{j.triple}\n{j.cpu}\n{j.features}\n{llvm.llvm_version_info}\n"
        f"{sorted(PIPELINE.items())}"
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def compile_kernel(build: Callable[[str], ir.Module]) -> tuple[KernelFn, str, bool]:
    """Compile (or load from cache) the module `build(name)` makes; returns (fn, name, hit).

    The key is taken from the IR built under a placeholder name, so identical kernels of
    different graphs share one cached object and one loaded symbol.
    """
    j = jit()
    text = str(build(_PLACEHOLDER))
    key = kernel_key(text)
    name = f"{_PLACEHOLDER}_{key}"
    with j.lock:
        if name in j.loaded:
            STATS["memory_hits"] += 1
            return j.loaded[name], name, True
        path = cache_dir() / f"{name}.o"
        obj = _read(path)
        hit = obj is not None
        if obj is None:
            # renamed in the text: building the module again costs more than LLVM's parse
            obj = j.optimize(text.replace(f'"{_PLACEHOLDER}', f'"{name}'))
            _write(path, obj)
        STATS["hits" if hit else "misses"] += 1
        fn = j.load(name, obj)
        j.loaded[name] = fn
        return fn, name, hit


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write(path: Path, data: bytes) -> None:
    """Atomic write (rename), so a concurrent reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache dir only costs recompiling


def optimized_ir(build: Callable[[str], ir.Module]) -> str:
    """The O3-optimized IR text of a kernel (for inspection and tests)."""
    j = jit()
    module = llvm.parse_assembly(str(build("spmd_kernel_inspect")))
    module.triple = j.triple
    _run_pipeline(module, j.machine)
    return str(module)
