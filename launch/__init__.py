"""Runtimes that place executables on devices and drive them (local, mpi, ray), and the
spmd-launch command line."""
