"""What the CPU and GPU backends share, owned by neither: loop fusion into kernels
(fusion.py), a kernel's loop nest and its transforms (loop_nest.py), and buffer planning
(memory.py). Imports only the compiler core."""
