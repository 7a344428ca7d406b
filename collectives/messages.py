"""Collectives built on point-to-point messages: a Mailbox of arrived messages and a
Communicator that sends through any channel with send(actor, key, array) (sockets, Ray calls).

Imports nothing of ours except spmd.errors and collectives.base.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from collectives.base import (
    Axes,
    Communicator,
    block,
    collective_timeout,
    reduce_ufunc,
    timeout_message,
)
from collectives.wire import collective_id
from spmd.errors import CollectiveTimeoutError, RemoteError

# Up to this many bytes an all_reduce sends its whole operand to every member (one round);
# above, it reduce-scatters then all-gathers chunks (two rounds, 2(n-1)/n of the bytes).
ONE_ROUND_BYTES = 1 << 16
Key = tuple[Any, ...]


class Mailbox:
    """Messages that arrived for one actor, keyed by (collective id, step, sender's position)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: dict[Key, np.ndarray] = {}
        self.error: str | None = None
        self.departed: dict[int, str] = {}  # sender -> why: it said goodbye, nothing more comes

    def put(self, key: Key, value: np.ndarray) -> None:
        with self.cond:
            self.items[key] = value
            self.cond.notify_all()

    def abort(self, message: str) -> None:
        """Wakes every waiting take() with a RemoteError (another device failed)."""
        with self.cond:
            self.error = message
            self.cond.notify_all()

    def depart(self, sender: int, message: str) -> None:
        """sender left: a take() still waiting for it raises RemoteError (messages arrive in
        order, so nothing it sent is still on the way)."""
        with self.cond:
            self.departed[sender] = message
            self.cond.notify_all()

    def take(
        self,
        key: Key,
        deadline: float | None,
        sender: int | None = None,
    ) -> np.ndarray | None:
        """The message for key (from channel member sender); None once the deadline passes."""
        with self.cond:
            while key not in self.items:
                if self.error is not None:
                    raise RemoteError(self.error)
                if sender in self.departed:
                    raise RemoteError(self.departed[sender])
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self.cond.wait(remaining)
            return self.items.pop(key)


def _widened(x: np.ndarray) -> np.ndarray:
    """16-bit floats reduce in float32 (like the MPI transport)."""
    return x.astype(np.float32) if x.dtype.kind in "fV" and x.dtype.itemsize == 2 else x


class MessageCommunicator(Communicator):
    """One device of a mesh whose collectives are point-to-point messages through a channel.

    actors[p] is the channel address (actor or process index) of mesh position p; subclasses
    name what a member is (for errors).
    """

    member = "device"
    hint = "another device died, is stuck, or called a different collective"

    def __init__(
        self,
        rank: int,
        mesh_shape: Sequence[int],
        axis_names: Sequence[str],
        channel: Any,
        mailbox: Mailbox,
        actors: Sequence[int],
        tag: Any = 0,
        timeout: float | None = None,
    ):
        super().__init__(rank, mesh_shape, axis_names)
        self.channel = channel
        self.mailbox = mailbox
        self.actors = list(actors)
        self.tag = tag
        # Keys are three ints, the same in every process: (collective id, step, sender's
        # position), which the socket wire's fixed header carries.
        self.tag_id = collective_id(tag)
        self.timeout = collective_timeout() if timeout is None else float(timeout)
        self.sequence = 0

    def _exchange(
        self,
        kind: str,
        axes: Axes,
        outgoing: dict[int, np.ndarray],
        incoming: Sequence[int],
        where: str | None,
    ) -> dict[int, np.ndarray]:
        """Sends outgoing[j] to group member j; returns what each member in incoming sent."""
        self.sequence += 1
        members = self.group_members(axes)
        for index, value in outgoing.items():
            self.channel.send(
                self.actors[members[index]], (self.tag_id, self.sequence, self.rank), value
            )
        deadline = None if self.timeout <= 0 else time.monotonic() + self.timeout
        received = {}
        for index in incoming:
            sender = self.actors[members[index]]
            value = self.mailbox.take(
                (self.tag_id, self.sequence, members[index]), deadline, sender
            )
            if value is None:
                raise CollectiveTimeoutError(
                    timeout_message(kind, axes, where, self.timeout)
                    + f" on {self._who(self.actors[self.rank])}; {self._who(sender)} (member "
                    f"{index} of the group) never sent",
                    loc=where,
                    hint=self.hint,
                )
            received[index] = value
        return received

    def _who(self, actor: int) -> str:
        """'process 3 (host:port)': the member and, where the channel knows it, its address."""
        addresses = getattr(self.channel, "addresses", None) or []
        if actor == self.actors[self.rank]:
            return f"{self.member} {actor} (pid {os.getpid()})"
        where = f" at {addresses[actor][0]}:{addresses[actor][1]}" if actor < len(addresses) else ""
        return f"{self.member} {actor}{where}"

    def _everyone(self, axes: Axes) -> tuple[int, int, list[int]]:
        """(my index, group size, the other members' indices)."""
        index = self.group_index(axes)
        count = self.group_size(axes)
        return index, count, [j for j in range(count) if j != index]

    def _all_reduce(self, x: np.ndarray, axes: Axes, op: str, where: str | None) -> np.ndarray:
        index, count, others = self._everyone(axes)
        if count == 1:
            return x.copy()
        wide = _widened(x)
        ufunc = reduce_ufunc(op, wide.dtype)
        if x.nbytes <= ONE_ROUND_BYTES:
            got = self._exchange("all_reduce", axes, {j: wide for j in others}, others, where)
            got[index] = wide
            return _reduce_in_order(got, count, ufunc).astype(x.dtype, copy=False)
        chunks = np.array_split(np.ascontiguousarray(wide).reshape(-1), count)
        got = self._exchange("all_reduce", axes, {j: chunks[j] for j in others}, others, where)
        got[index] = chunks[index]
        mine = _reduce_in_order(got, count, ufunc)
        parts = self._exchange("all_reduce", axes, {j: mine for j in others}, others, where)
        parts[index] = mine
        flat = np.concatenate([parts[j] for j in range(count)])
        return flat.reshape(x.shape).astype(x.dtype, copy=False)

    def _all_gather(self, x: np.ndarray, axes: Axes, dim: int, where: str | None) -> np.ndarray:
        index, count, others = self._everyone(axes)
        if count == 1:
            return x.copy()
        got = self._exchange("all_gather", axes, {j: x for j in others}, others, where)
        got[index] = x
        return np.concatenate([got[j] for j in range(count)], axis=dim)

    def _reduce_scatter(
        self, x: np.ndarray, axes: Axes, dim: int, op: str, where: str | None
    ) -> np.ndarray:
        index, count, others = self._everyone(axes)
        if count == 1:
            return x.copy()
        wide = _widened(x)
        ufunc = reduce_ufunc(op, wide.dtype)
        outgoing = {j: np.ascontiguousarray(block(wide, dim, j, count)) for j in others}
        got = self._exchange("reduce_scatter", axes, outgoing, others, where)
        got[index] = block(wide, dim, index, count)
        return _reduce_in_order(got, count, ufunc).astype(x.dtype, copy=False)

    def _all_to_all(
        self, x: np.ndarray, axes: Axes, split_dim: int, concat_dim: int, where: str | None
    ) -> np.ndarray:
        index, count, others = self._everyone(axes)
        if count == 1:
            return x.copy()
        outgoing = {j: np.ascontiguousarray(block(x, split_dim, j, count)) for j in others}
        got = self._exchange("all_to_all", axes, outgoing, others, where)
        got[index] = block(x, split_dim, index, count)
        return np.concatenate([got[j] for j in range(count)], axis=concat_dim)

    def _permute(
        self, x: np.ndarray, axes: Axes, pairs: list[tuple[int, int]], where: str | None
    ) -> np.ndarray:
        index = self.group_index(axes)
        source = {dst: src for src, dst in pairs}.get(index)
        target = {src: dst for src, dst in pairs}.get(index)
        outgoing = {} if target is None or target == index else {target: x}
        incoming = [] if source is None or source == index else [source]
        got = self._exchange("permute", axes, outgoing, incoming, where)
        if source is None:
            return np.zeros_like(x)
        return x.copy() if source == index else np.array(got[source])

    def _broadcast(self, x: np.ndarray, axes: Axes, root: int, where: str | None) -> np.ndarray:
        index, count, others = self._everyone(axes)
        if count == 1:
            return x.copy()
        if index == root:
            self._exchange("broadcast", axes, {j: x for j in others}, [], where)
            return x.copy()
        return np.array(self._exchange("broadcast", axes, {}, [root], where)[root])

    def _barrier(self, axes: Axes, where: str | None) -> None:
        _, count, others = self._everyone(axes)
        if count > 1:
            token = np.zeros(0, np.uint8)
            self._exchange("barrier", axes, {j: token for j in others}, others, where)


def _reduce_in_order(parts: dict[int, np.ndarray], count: int, ufunc: np.ufunc) -> np.ndarray:
    """parts[0] op parts[1] op ... in member order, so every member gets the same bits."""
    out = np.array(parts[0], copy=True)
    for j in range(1, count):
        ufunc(out, parts[j], out=out)
    return out
