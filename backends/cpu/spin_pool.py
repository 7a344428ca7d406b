"""Worker threads that spin (yielding) between a step's chunks instead of sleeping.

Handing a sub-millisecond chunk to a sleeping pool thread costs a futex wake on a core
that a BLAS's own idle worker is spinning on (OpenBLAS spins ~0.1 s after each threaded
GEMM): measured on the 2x4 transformer block, splitting kernels across a sleeping pool made
the step slower (24 -> 27 ms) once its dots ran on OpenBLAS's threads, and faster without
them. So, as OpenBLAS does, each worker waits for its next chunk in native code (no GIL),
yielding the core between polls, and only falls back to sleeping on an Event after
SPIN_POLLS idle polls (a few milliseconds). Each worker owns one slot: int64 words shared
with the submitting thread, the submitter's and the worker's on separate cache lines.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence

from llvmlite import ir

from backends.cpu import cache

SEQ, FN, START, END, ARGS, YIELD = 0, 1, 2, 3, 4, 5  # written by the submitter
DONE, SPINNING, SEEN, WAKE = 8, 9, 10, 11  # written by the worker (WAKE: by publish)
SLOT_WORDS = 16
SPIN_POLLS = 4000

I32, I64 = ir.IntType(32), ir.IntType(64)
_ENTRY = ir.FunctionType(ir.VoidType(), [I64, I64, ir.PointerType()])


def _word(b: ir.IRBuilder, slot: ir.Value, index: int) -> ir.Value:
    return b.gep(slot, [ir.Constant(I64, index)], inbounds=True, source_etype=I64)


def _load(b: ir.IRBuilder, slot: ir.Value, index: int, order: str = "acquire") -> ir.Value:
    return b.load_atomic(_word(b, slot, index), order, 8, typ=I64)


def _store(
    b: ir.IRBuilder, value: ir.Value, slot: ir.Value, index: int, order: str = "release"
) -> None:
    """An atomic store, as an exchange: llvmlite's store_atomic wants typed pointers."""
    b.atomic_rmw("xchg", _word(b, slot, index), value, order)


def _call_yield(b: ir.IRBuilder, slot: ir.Value) -> None:
    target = b.inttoptr(_load(b, slot, YIELD, "monotonic"), ir.FunctionType(I32, []).as_pointer())
    b.call(target, [])


def _worker(module: ir.Module, name: str) -> None:
    """worker(_, polls, slot): runs each chunk published to the slot; returns after `polls`
    idle polls, having said so (SPINNING = 0) and checked once more for a chunk published
    meanwhile (the submitter checks SPINNING after publishing: one of the two sees the
    other, both sides ordering with seq_cst)."""
    fn = ir.Function(module, _ENTRY, name)
    polls = fn.args[1]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    slot = fn.args[2]
    seen0 = b.load(_word(b, slot, SEEN), typ=I64)
    _store(b, ir.Constant(I64, 1), slot, SPINNING, "seq_cst")
    entry, loop = b.block, fn.append_basic_block("loop")
    b.branch(loop)
    b.position_at_end(loop)
    seen, idle = b.phi(I64), b.phi(I64)
    seen.add_incoming(seen0, entry)
    idle.add_incoming(ir.Constant(I64, 0), entry)
    current = _load(b, slot, SEQ)
    run, wait = fn.append_basic_block("run"), fn.append_basic_block("wait")
    b.cbranch(b.icmp_unsigned("!=", current, seen), run, wait)

    b.position_at_end(run)
    target = b.inttoptr(b.load(_word(b, slot, FN), typ=I64), _ENTRY.as_pointer())
    b.call(
        target,
        [
            b.load(_word(b, slot, START), typ=I64),
            b.load(_word(b, slot, END), typ=I64),
            b.inttoptr(b.load(_word(b, slot, ARGS), typ=I64), ir.PointerType()),
        ],
    )
    _store(b, current, slot, DONE)
    seen.add_incoming(current, run)
    idle.add_incoming(ir.Constant(I64, 0), run)
    b.branch(loop)

    b.position_at_end(wait)
    poll, leave = fn.append_basic_block("poll"), fn.append_basic_block("leave")
    b.cbranch(b.icmp_signed(">=", idle, polls), leave, poll)
    b.position_at_end(poll)
    _call_yield(b, slot)
    seen.add_incoming(seen, poll)
    idle.add_incoming(b.add(idle, ir.Constant(I64, 1)), poll)
    b.branch(loop)

    b.position_at_end(leave)
    _store(b, ir.Constant(I64, 0), slot, SPINNING, "seq_cst")
    b.fence("seq_cst")
    late, out = fn.append_basic_block("late"), fn.append_basic_block("out")
    b.cbranch(b.icmp_unsigned("!=", _load(b, slot, SEQ, "seq_cst"), seen), late, out)
    b.position_at_end(late)
    _store(b, ir.Constant(I64, 1), slot, SPINNING, "seq_cst")
    seen.add_incoming(seen, late)
    idle.add_incoming(ir.Constant(I64, 0), late)
    b.branch(loop)
    b.position_at_end(out)
    b.store(seen, _word(b, slot, SEEN))
    b.ret_void()


def _publish(module: ir.Module, name: str) -> None:
    """publish(_, _, slot): makes the chunk already written in FN..ARGS visible (SEQ + 1)
    and sets WAKE where the worker had stopped spinning."""
    fn = ir.Function(module, _ENTRY, name)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    slot = fn.args[2]
    _store(
        b, b.add(b.load(_word(b, slot, SEQ), typ=I64), ir.Constant(I64, 1)), slot, SEQ, "seq_cst"
    )
    b.fence("seq_cst")
    spinning = _load(b, slot, SPINNING, "seq_cst")
    b.store(b.sub(ir.Constant(I64, 1), spinning), _word(b, slot, WAKE))
    b.ret_void()


def _wait(module: ir.Module, name: str) -> None:
    """wait(seq, _, slot): returns once the worker has finished chunk `seq`."""
    fn = ir.Function(module, _ENTRY, name)
    target = fn.args[0]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    slot = fn.args[2]
    loop, poll, out = (fn.append_basic_block(n) for n in ("loop", "poll", "out"))
    b.branch(loop)
    b.position_at_end(loop)
    b.cbranch(b.icmp_signed(">=", _load(b, slot, DONE), target), out, poll)
    b.position_at_end(poll)
    _call_yield(b, slot)
    b.branch(loop)
    b.position_at_end(out)
    b.ret_void()


def _build(make: object) -> cache.KernelFn:
    def module(name: str) -> ir.Module:
        m = ir.Module(name=name)
        make(m, name)
        return m

    return cache.compile_kernel(module)[0]


class SpinPool:
    """`workers` spinning threads; `run` splits a kernel's chunks over them and the caller.
    One caller at a time: a second concurrent caller runs its chunks itself."""

    def __init__(self, workers: int) -> None:
        self._worker, self._publish, self._wait = (_build(f) for f in (_worker, _publish, _wait))
        sched_yield = ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value
        self.slots = [(ctypes.c_int64 * SLOT_WORDS)() for _ in range(workers)]
        self.wakes = [threading.Event() for _ in range(workers)]
        self.lock = threading.Lock()
        for slot, wake in zip(self.slots, self.wakes):
            slot[YIELD] = sched_yield
            threading.Thread(
                target=self._serve, args=(slot, wake), daemon=True, name="spmd-spin"
            ).start()

    def _serve(self, slot: ctypes.Array, wake: threading.Event) -> None:
        where = ctypes.addressof(slot)
        while True:
            self._worker(0, SPIN_POLLS, where)  # returns after SPIN_POLLS idle polls
            wake.wait()
            wake.clear()

    def run(
        self,
        fn: cache.KernelFn,
        address: int,
        chunks: Sequence[tuple[int, int]],
        wheres: Sequence[int],
    ) -> None:
        """fn(start, end, wheres[i]) for each chunk i, the first on the calling thread;
        `address` is fn's native address."""
        if len(chunks) - 1 > len(self.slots) or not self.lock.acquire(blocking=False):
            for (start, end), where in zip(chunks, wheres):
                fn(start, end, where)
            return
        try:
            used = self.slots[: len(chunks) - 1]
            for slot, wake, (start, end), where in zip(used, self.wakes, chunks[1:], wheres[1:]):
                slot[FN], slot[START], slot[END], slot[ARGS] = address, start, end, where
                self._publish(0, 0, ctypes.addressof(slot))
                if slot[WAKE]:
                    wake.set()
            fn(chunks[0][0], chunks[0][1], wheres[0])
            for slot in used:
                self._wait(slot[SEQ], 0, ctypes.addressof(slot))
        finally:
            self.lock.release()


def native_address(fn: cache.KernelFn) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value


_pools: dict[int, SpinPool] = {}
_pools_lock = threading.Lock()


def spin_pool(threads: int) -> SpinPool:
    """The process's pool for splits across `threads` threads (the caller is one)."""
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = SpinPool(threads - 1)
        return _pools[threads]


def _forget_pools() -> None:
    """A forked child has none of the parent's threads: it starts its own pools."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)
