"""The SPMD partitioner: sharding propagation, per-device programs with collectives, the
resharding planner and collective optimisations. Imports only the compiler core (spmd)."""
