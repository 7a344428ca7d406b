"""Backends: one sub-package per device kind (cpu, gpu, tpu_sim), each turning a per-device
program into an executable."""
