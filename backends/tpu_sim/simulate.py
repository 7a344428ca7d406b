"""Walk ONE per-device program (every device runs the same SPMD program): schedule its cost
units on a timeline from data dependencies, track HBM liveness, and build a SimReport.

Imports only the IR core, spmd.errors and this package.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from spmd.ir.graph import Graph, Op

from .chips import ChipSpec
from .lower import costing
from .memory import MemoryTracker
from .report import OpRow, SimReport
from .timeline import Timeline
from .topology import Topology
from .units import Unit, build_units

MAX_EXPANDED_EVENTS = 20000  # beyond this a scan's iterations are one event each op, x length


class Simulator:
    """Simulates one per-device program on a chip of a torus slice."""

    def __init__(
        self,
        chip: ChipSpec,
        topology: Topology,
        axis_names: tuple[str, ...],
        axis_sizes: tuple[int, ...],
        *,
        overlap: bool = True,
        fuse: bool = True,
        check_memory: bool = True,
        while_iterations: int = 1,
        donate: tuple[bool, ...] = (),
    ) -> None:
        self.chip = chip
        self.topology = topology
        self.axis_names = tuple(axis_names)
        self.axis_sizes = tuple(axis_sizes)
        self.overlap = overlap
        self.fuse = fuse
        self.check_memory = check_memory
        self.while_iterations = while_iterations
        self.donate = tuple(bool(d) for d in donate)  # per program param: freed at last use
        self.timeline = Timeline(1, overlap=overlap)
        self.rows: dict[int, OpRow] = {}
        self.notes: list[str] = []
        self._units: dict[int, list[Unit]] = {}
        self._events: dict[int, int] = {}
        self._deps: dict[int, tuple[list[list[int]], list[int], list[tuple[float, int]]]] = {}
        self._repeat = 1  # events stand for this many executions (collapsed scans)
        self._host: dict[int, set[int]] = {}
        self.host_memory = MemoryTracker(1 << 62)  # offloaded residuals (pinned host)

    # -- units -----------------------------------------------------------------------------
    def units(self, graph: Graph) -> list[Unit]:
        """Cost units of a graph, built once per graph."""
        key = id(graph)
        if key not in self._units:
            self._units[key] = build_units(
                graph, self.chip, self.topology, self.axis_names, self.fuse
            )
        return self._units[key]

    def events(self, graph: Graph) -> int:
        """Timeline events one execution of `graph` adds (sub-graphs expanded)."""
        key = id(graph)
        if key in self._events:
            return self._events[key]
        count = 0
        for u in self.units(graph):
            if u.op is None:
                count += 1
                continue
            count += EVENTS[costing(u.op.name).walk](self, u.op)
        self._events[key] = count
        return count

    # -- scheduling ------------------------------------------------------------------------
    def schedule(self, graph: Graph, ready_in: list[float]) -> list[float]:
        """Schedule one execution of `graph`; returns when each result is ready.

        Without overlap, units run in program order on one clock. With it, a latency-hiding
        list schedule (as XLA's): whichever unit can start earliest goes next on its stream,
        so a collective runs on the ICI stream while compute that does not need it goes
        on, and a layer's weight all-gather starts as soon as its inputs exist.
        """
        ready = dict(zip(graph.params, ready_in))
        units = self.units(graph)
        order = self._order(graph, units, ready) if self.overlap else range(len(units))
        for i in order:
            self._run_unit(units[i], ready)
        return [ready.get(v, 0.0) for v in graph.results]

    def _run_unit(self, unit: Unit, ready: dict[int, float]) -> None:
        if unit.op is not None:
            outs = self.control(unit.op, [ready.get(v, 0.0) for v in unit.op.inputs])
            ready.update(zip(unit.op.outputs, outs))
            return
        get = ready.get
        start = max([get(v, 0.0) for v in unit.inputs]) if unit.inputs else 0.0
        if unit.time > 0.0 or unit.flops > 0.0:
            start = self.emit(unit, start)
        for v in unit.outputs:
            ready[v] = start

    def _order(self, graph: Graph, units: list[Unit], ready: dict[int, float]) -> Iterator[int]:
        """Units in list-schedule order: of those whose producers have run, the one whose
        inputs are ready first (program order breaks ties). Yields lazily: a unit's ready
        time is read off the timeline once its producers have been scheduled."""
        users, counts, roots = self._dependencies(graph, units)
        waiting = list(counts)
        heap = list(roots)
        while heap:
            _, i = heapq.heappop(heap)
            yield i
            for j in users[i]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    start = max((ready.get(v, 0.0) for v in units[j].inputs), default=0.0)
                    heapq.heappush(heap, (start, j))

    def _dependencies(
        self, graph: Graph, units: list[Unit]
    ) -> tuple[list[list[int]], list[int], list[tuple[float, int]]]:
        """Per unit: the units that read it, how many units it waits for, and the heap of
        units that wait for none; built once per graph (a scan body is scheduled per
        iteration)."""
        key = id(graph)
        if key in self._deps:
            return self._deps[key]
        producer: dict[int, int] = {}
        for i, u in enumerate(units):
            for v in u.op.outputs if u.op is not None else u.outputs:
                producer[v] = i
        users: list[list[int]] = [[] for _ in units]
        waiting = [0] * len(units)
        for i, u in enumerate(units):
            deps = {producer[v] for v in u.inputs if v in producer and producer[v] != i}
            waiting[i] = len(deps)
            for d in deps:
                users[d].append(i)
        heap = [(0.0, i) for i, w in enumerate(waiting) if w == 0]
        heapq.heapify(heap)
        self._deps[key] = (users, waiting, heap)
        return users, waiting, heap

    def emit(self, unit: Unit, start: float) -> float:
        """Put one unit on the timeline and into its report row; returns its end time."""
        category = HOST_KINDS.get(unit.kind, "compute")
        duration = unit.time * self._repeat
        args: dict[str, Any] = {"loc": unit.loc, "flops": unit.flops, "bytes": unit.bytes}
        if self._repeat > 1:
            args["repeat"] = self._repeat
        if unit.axes:
            args["axes"] = ",".join(unit.axes)
        event = self.timeline.add(0, unit.name, duration, category, args, ready=start)
        row = self.rows.get(id(unit))
        if row is None:
            row = OpRow(unit.name, unit.kind, 0.0, 0.0, 0.0, unit.loc, 0, unit.axes)
            self.rows[id(unit)] = row
        row.time_s += duration
        row.flops += unit.flops * self._repeat
        row.bytes += unit.bytes * self._repeat
        row.count += self._repeat
        return event.end

    def control(self, op: Op, ready_in: list[float]) -> list[float]:
        """Scan: the body x length (carries chain); cond: the costliest branch; while: the
        body x `while_iterations` (its trip count is data-dependent)."""
        return CONTROL[costing(op.name).walk](self, op, ready_in)

    def cond(self, op: Op, ready_in: list[float]) -> list[float]:
        costliest = max(op.attrs["branches"], key=self.static_time)
        return self.schedule(costliest, ready_in[1:])

    def body(self, op: Op, ready_in: list[float]) -> list[float]:
        return self.schedule(op.attrs["body"], ready_in)

    def scan(self, op: Op, ready_in: list[float]) -> list[float]:
        body = op.attrs["body"]
        length = int(op.attrs["length"])
        consts = ready_in[: op.attrs["num_consts"]]
        k = op.attrs["num_carry"]
        carry = ready_in[len(consts) : len(consts) + k]
        xs_ready = max(ready_in[len(consts) + k :], default=0.0)
        n_xs = len(body.params) - len(consts) - k
        ys = [0.0] * (len(body.results) - k)
        iterations = length
        if length * self.events(body) > MAX_EXPANDED_EVENTS:
            iterations = 1
            self._repeat *= length
        try:
            for _ in range(iterations):
                outs = self.schedule(body, consts + carry + [xs_ready] * n_xs)
                carry = outs[:k]
                ys = [max(a, b) for a, b in zip(ys, outs[k:])]
        finally:
            if iterations != length:
                self._repeat //= length
        return carry + ys

    def while_loop(self, op: Op, ready_in: list[float]) -> list[float]:
        n_cond = op.attrs["cond_num_consts"]
        n_body = op.attrs["body_num_consts"]
        cond_consts = ready_in[:n_cond]
        body_consts = ready_in[n_cond : n_cond + n_body]
        carry = ready_in[n_cond + n_body :]
        note = (
            f"while_loop at {op.loc or '?'}: trip count unknown, costed as "
            f"{self.while_iterations} iteration(s) (simulate(while_iterations=...))"
        )
        if note not in self.notes:
            self.notes.append(note)
        for _ in range(self.while_iterations):
            self.schedule(op.attrs["cond_graph"], cond_consts + carry)
            carry = self.schedule(op.attrs["body_graph"], body_consts + carry)
        return carry

    def static_time(self, graph: Graph) -> float:
        """Serial seconds of one execution of a graph (to pick a cond's costliest branch)."""
        total = 0.0
        for u in self.units(graph):
            if u.op is None:
                total += u.time
            else:
                total += STATIC[costing(u.op.name).walk](self, u.op)
        return total

    # -- memory ----------------------------------------------------------------------------
    def host_values(self, graph: Graph) -> set[int]:
        """Values in host memory: offloaded residuals, and a scan's stacked ys of them."""
        key = id(graph)
        if key in self._host:
            return self._host[key]
        host: set[int] = set()
        for u in self.units(graph):
            if u.kind == "to_host":
                host.update(u.outputs)
            elif u.op is not None and costing(u.op.name).walk == "scan":
                body = u.op.attrs["body"]
                inner = self.host_values(body)
                k = int(u.op.attrs["num_carry"])
                host.update(v for v, r in list(zip(u.op.outputs, body.results))[k:] if r in inner)
        self._host[key] = host
        return host

    def transient_peak(self, graph: Graph) -> int:
        """Peak bytes a graph's execution allocates beyond its params (sub-graph temporaries)."""
        tracker = MemoryTracker(1 << 62)
        self.track(graph, tracker, keep_params=False)
        return tracker.peak

    def track(
        self,
        graph: Graph,
        tracker: MemoryTracker,
        keep_params: bool = True,
        donated: tuple[bool, ...] = (),
    ) -> None:
        """Liveness over units: outputs allocate at their unit, inputs free at last use.

        A view's output aliases its input. Params stay live (the caller holds them) unless
        donated (jit's donate_argnums: XLA reuses their buffers, so they die at last use);
        a control op adds its sub-graph's transient peak while it runs.
        """
        types = graph.types
        units = self.units(graph)
        alias: dict[int, int] = {}
        last: dict[int, int] = {}
        for i, u in enumerate(units):
            for v in u.inputs:
                last[alias.get(v, v)] = i
            if u.kind == "view" and u.inputs:
                for v in u.outputs:
                    alias[v] = alias.get(u.inputs[0], u.inputs[0])
        end = len(units)
        for v in graph.results:
            last[alias.get(v, v)] = end
        live: dict[int, str] = {}
        if keep_params:
            for i, v in enumerate(graph.params):
                name = f"argument {i} {types[v]}"
                tracker.alloc(name, types[v].nbytes)
                if i < len(donated) and donated[i] and v not in alias:
                    live[v] = name
        params = set(graph.params) - set(live)
        for v in list(live):
            if last.get(v, -1) < 0:  # a donated argument nothing reads
                tracker.free(live.pop(v))
        host = self.host_values(graph)
        for i, u in enumerate(units):
            for v in u.outputs:
                if v in alias:
                    continue
                live[v] = f"%{v} {u.name} {types[v]}"
                # offloaded residuals live in host memory (counted there at the top level)
                owner = tracker if v not in host else self.host_memory if keep_params else None
                if owner is not None:
                    owner.alloc(live[v], types[v].nbytes, u.loc or None)
            if u.op is not None:
                self._transient(u.op, tracker)
            for v in {alias.get(x, x) for x in u.inputs} | set(u.outputs):
                if v in live and last.get(v, -1) <= i and v not in params:
                    name = live.pop(v)
                    if v not in host:
                        tracker.free(name)
                    elif keep_params:
                        self.host_memory.free(name)

    def _transient(self, op: Op, tracker: MemoryTracker) -> None:
        subs = [
            g
            for key in ("body", "body_graph", "cond_graph")
            if isinstance(g := op.attrs.get(key), Graph)
        ] + list(op.attrs.get("branches", ()))
        extra = max((self.transient_peak(g) for g in subs), default=0)
        if extra <= 0:
            return
        name = f"{op.name} temporaries at {op.loc or '?'} #{id(op)}"
        tracker.alloc(name, extra, op.loc or None)
        tracker.free(name)

    # -- the whole program -----------------------------------------------------------------
    def run(self, program: Graph) -> SimReport:
        """Simulate one call of `program` and report it."""
        tracker = MemoryTracker(self.chip.hbm_bytes if self.check_memory else 1 << 62)
        self.track(program, tracker, donated=self.donate)
        self.schedule(program, [0.0] * len(program.params))
        rows = list(self.rows.values())
        compute = sum(r.time_s for r in rows if r.kind not in HOST_KINDS)
        collective = sum(r.time_s for r in rows if r.kind == "collective")
        return SimReport(
            chip=self.chip.name,
            mesh=dict(zip(self.axis_names, self.axis_sizes)),
            topology=self.topology.shape,
            step_time_s=self.timeline.step_time(),
            compute_time_s=compute,
            collective_time_s=collective,
            flops=sum(r.flops for r in rows),
            peak_flops=self.chip.peak_flops_bf16,
            peak_memory_bytes=tracker.peak,
            peak_host_bytes=self.host_memory.peak,
            hbm_bytes=self.chip.hbm_bytes,
            ops=rows,
            timeline=self.timeline,
            peak_buffers=tracker.peak_live,
            overlap=self.overlap,
            notes=list(self.notes),
        )


# Timeline streams of the units that do not run on compute.
HOST_KINDS = {"collective": "collective", "to_host": "host", "from_host": "host"}


# Per control walk (backends/tpu_sim/lower.py rows): timeline events of one execution, the
# scheduler's method, and serial seconds.
EVENTS = {
    "scan": lambda sim, op: op.attrs["length"] * sim.events(op.attrs["body"]),
    "cond": lambda sim, op: max(sim.events(b) for b in op.attrs["branches"]),
    "while": lambda sim, op: (
        sim.while_iterations
        * (sim.events(op.attrs["cond_graph"]) + sim.events(op.attrs["body_graph"]))
    ),
    "body": lambda sim, op: sim.events(op.attrs["body"]),
}
CONTROL = {
    "scan": Simulator.scan,
    "cond": Simulator.cond,
    "while": Simulator.while_loop,
    "body": Simulator.body,
}
STATIC = {
    "scan": lambda sim, op: op.attrs["length"] * sim.static_time(op.attrs["body"]),
    "cond": lambda sim, op: max(sim.static_time(b) for b in op.attrs["branches"]),
    "while": lambda sim, op: sim.while_iterations * sim.static_time(op.attrs["body_graph"]),
    "body": lambda sim, op: sim.static_time(op.attrs["body"]),
}
