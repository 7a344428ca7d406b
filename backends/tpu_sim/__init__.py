"""TPU pod simulator: chip specs, torus topology, cost model, timeline and memory tracking.

Imports only spmd.errors, the stdlib and numpy (never the spmd top-level package).
"""
