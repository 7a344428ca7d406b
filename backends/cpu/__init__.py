"""CPU backend: fused native kernels (llvmlite), BLAS dots, buffer planning, compile cache.

Imports only the compiler core (spmd.ir, spmd.ops, spmd.dtypes, spmd.interpreter).
"""

from backends.cpu.executable import Executable, compile_program
from backends.cpu.lower import LOWERINGS, Lowering

__all__ = ["LOWERINGS", "Executable", "Lowering", "compile_program"]
