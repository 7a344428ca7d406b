"""GPU backend: fused CUDA C kernels compiled through cupy, cuBLAS dots, NCCL collectives.

Imports only the compiler core and the CPU backend's device-independent fusion and memory
planning; cupy is imported lazily, when an executable or communicator is built.
"""

from backends.gpu.device import available
from backends.gpu.executable import Executable, compile_program, kernel_sources
from backends.gpu.lower import LOWERINGS, Lowering

__all__ = ["LOWERINGS", "Executable", "Lowering", "available", "compile_program", "kernel_sources"]
