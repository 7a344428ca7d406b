"""Socket transport: point-to-point messages over direct TCP connections (a header, then the
array's bytes), used by Ray actors and by the tcp runtime's processes; peers that introduce
themselves are watched, so that one dying fails the others' collectives fast.

Imports nothing of ours except spmd.errors and collectives.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from collectives.messages import Key, Mailbox, MessageCommunicator
from spmd.errors import RemoteError

_HEADER = struct.Struct("!I")
# First element of a control message's key (never a mesh tag): (CONTROL, what, sender, text).
CONTROL = "__spmd_control__"
EMPTY = np.zeros(0, np.uint8)
UNREACHABLE_GRACE_SECONDS = 1.0  # a failed send waits this long for the peer's goodbye


class SocketChannel:
    """Direct TCP connections between members: a header (pickled key, dtype, shape), then bytes.

    With connect(addresses, me=...) every connection opens at once and says who sent it; a peer
    whose connection then closes without a goodbye, or who announces an abort, is lost:
    the mailbox aborts (waiting collectives raise RemoteError naming it) and on_lost is called.
    """

    name = "sockets"

    def __init__(self, mailbox: Mailbox, host: str = "0.0.0.0", label: str = "actor",
                 on_lost: Callable[[int, str], None] | None = None):
        self.mailbox = mailbox
        self.label = label
        self.on_lost = on_lost
        self.server = socket.create_server((host, 0), backlog=64)
        self.port = self.server.getsockname()[1]
        self.addresses: list[tuple[str, int]] = []
        self.me: int | None = None
        self.lost: tuple[int, str] | None = None
        self._connections: dict[int, tuple[socket.socket, threading.Lock]] = {}
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="spmd-socket-accept").start()

    def connect(self, addresses: Sequence[tuple[str, int]], me: int | None = None) -> None:
        """Records every member's (host, port); connections open on first send, or now with me."""
        self.addresses = [tuple(a) for a in addresses]
        self.me = me
        if me is None:
            return
        for member in range(len(self.addresses)):
            if member != me:
                self._connection(member)

    def send(self, actor: int, key: Key, value: np.ndarray) -> None:
        value = np.asarray(value, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        header = pickle.dumps((key, value.dtype, value.shape))
        try:
            connection, lock = self._connection(actor)
            with lock:
                connection.sendall(_HEADER.pack(len(header)) + header)
                if value.nbytes:
                    connection.sendall(memoryview(value.reshape(-1).view(np.uint8)))
        except OSError as exc:
            raise RemoteError(self._why_unreachable(actor, exc)) from None

    def _why_unreachable(self, actor: int, exc: OSError) -> str:
        """Why a send to actor failed: the goodbye or the loss its reader records (given a
        moment: the connection reset can reach this thread before the reader has read the
        goodbye already in the socket), else the socket error."""
        box = self.mailbox
        deadline = time.monotonic() + UNREACHABLE_GRACE_SECONDS
        with box.cond:
            while actor not in box.departed and box.error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                box.cond.wait(remaining)
            if actor in box.departed:
                return box.departed[actor]
            if box.error is not None:
                return box.error
        return f"sending to {self.label} {actor} failed ({exc}); it has probably died"

    def announce(self, what: str, text: str = "") -> None:
        """Sends a control message (goodbye, abort) to every member; dead members are skipped."""
        for member in range(len(self.addresses)):
            if member == self.me:
                continue
            try:
                self.send(member, (CONTROL, what, self.me, text), EMPTY)
            except RemoteError:
                continue

    def _connection(self, actor: int) -> tuple[socket.socket, threading.Lock]:
        with self._lock:
            found = self._connections.get(actor)
            if found is not None:
                return found
            connection = socket.create_connection(self.addresses[actor])
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.me is not None:  # before any other thread can send on it
                hello = pickle.dumps(((CONTROL, "hello", self.me, ""), EMPTY.dtype, EMPTY.shape))
                connection.sendall(_HEADER.pack(len(hello)) + hello)
            found = (connection, threading.Lock())
            self._connections[actor] = found
            return found

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._read, args=(connection,), daemon=True,
                             name="spmd-socket-read").start()

    def _read(self, connection: socket.socket) -> None:
        peer: int | None = None
        said_goodbye = False
        try:
            while True:
                key, value = _receive(connection)
                if key[0] != CONTROL:
                    self.mailbox.put(key, value)
                    continue
                _, what, sender, text = key
                peer = sender if what == "hello" else peer
                if what == "goodbye":
                    said_goodbye = True
                    self.mailbox.depart(sender, f"{self.label} {sender} exited while "
                                                f"{self.label} {self.me} still waits for it")
                if what == "abort":
                    self._lose(sender, text)
        except (ConnectionError, OSError):
            connection.close()
        except Exception as exc:  # noqa: BLE001 - a dead reader must not leave peers waiting
            self.mailbox.abort(f"the socket reader failed: {exc!r}")
            connection.close()
            return
        if peer is not None and not said_goodbye and not self._closed:
            self._lose(peer, f"{self.label} {peer} closed its connection without a goodbye "
                             f"(it died or was killed)")

    def _lose(self, peer: int, text: str) -> None:
        """The first lost peer aborts the mailbox and is reported to on_lost."""
        with self._lock:
            if self.lost is not None:
                return
            self.lost = (peer, text)
        self.mailbox.abort(text)
        if self.on_lost is not None:
            self.on_lost(peer, text)

    def close(self) -> None:
        """Says goodbye (to introduced peers) and closes every connection."""
        if self.me is not None and not self._closed:
            self.announce("goodbye")
        self._closed = True
        self.server.close()
        for connection, _ in self._connections.values():
            connection.close()


def _receive(connection: socket.socket) -> tuple[Key, np.ndarray]:
    """One message: (key, array)."""
    length = _HEADER.unpack(_read_exactly(connection, _HEADER.size))[0]
    key, dtype, shape = pickle.loads(_read_exactly(connection, length))
    value = np.empty(shape, dtype)
    if value.nbytes:
        view = memoryview(value.reshape(-1).view(np.uint8))
        received = 0
        while received < value.nbytes:
            count = connection.recv_into(view[received:])
            if not count:
                raise ConnectionError("peer closed the connection")
            received += count
    return key, value


def _read_exactly(connection: socket.socket, count: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < count:
        data = connection.recv(count - len(chunks))
        if not data:
            raise ConnectionError("peer closed the connection")
        chunks += data
    return bytes(chunks)


class SocketCommunicator(MessageCommunicator):
    """One process of the tcp runtime as one device; actors[p] is the rank of mesh position p."""

    member = "process"
    hint = "another process died, is stuck, or called a different collective"
