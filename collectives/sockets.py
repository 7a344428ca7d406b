"""Socket transport: point-to-point messages over direct TCP connections, used by Ray actors and
by the tcp runtime's processes. Every connection starts with an HMAC handshake on the job's
secret (collectives.auth); messages are collectives.wire's fixed binary header, then raw bytes
(never pickle). Peers that introduce themselves are watched, so that one dying fails the
others' collectives fast; a peer that breaks the wire format fails them naming that peer.

Imports nothing of ours except spmd.errors and collectives.
"""

from __future__ import annotations

import hmac
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from collectives import auth, wire
from collectives.messages import Key, Mailbox, MessageCommunicator
from spmd import config
from spmd.errors import LaunchError, RemoteError

UNREACHABLE_GRACE_SECONDS = 1.0  # a failed send waits this long for the peer's goodbye
# A host that vanishes without closing its connections (power loss, a cut link) is noticed by
# the kernel's keepalive probes: after KEEPALIVE_IDLE_S of silence, one probe per
# KEEPALIVE_INTERVAL_S, lost after KEEPALIVE_PROBES unanswered (about 5 s). The kernel answers
# probes, so a busy but live peer is never taken for dead.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 2, 1, 3
LOOPBACK = "127.0.0.1"
Connection = tuple[socket.socket, threading.Lock, "auth.MessageMac | None"]


class SocketChannel:
    """Direct TCP connections between members, each opened with an authenticating handshake.

    Listens on host only (loopback by default: the interface that reaches the peers, never all
    interfaces unless asked). With connect(addresses, me=...) every connection opens at once
    and says who sent it; a peer whose connection then closes without a goodbye, or who
    announces an abort, is lost: the mailbox aborts (waiting collectives raise RemoteError
    naming it) and on_lost is called. Connections that fail the handshake are refused and
    logged; they never reach the mailbox.
    """

    name = "sockets"

    def __init__(
        self,
        mailbox: Mailbox,
        host: str = LOOPBACK,
        label: str = "actor",
        on_lost: Callable[[int, str], None] | None = None,
        secret: bytes | None = None,
        mac: bool | None = None,
    ):
        self.secret = (
            secret if secret is not None else auth.job_secret(required_by="the socket transport")
        )
        self.mac = auth.mac_every_message() if mac is None else mac
        self.mailbox = mailbox
        self.label = label
        self.on_lost = on_lost
        try:
            self.server = socket.create_server((host, 0), backlog=64)
        except OSError as exc:
            raise LaunchError(
                f"cannot listen on {host!r}: {exc}",
                hint="set SPMD_BIND_ADDR to an address of this host",
            ) from None
        self.host = host
        self.port = self.server.getsockname()[1]
        self.addresses: list[tuple[str, int]] = []
        self.me: int | None = None
        self.lost: tuple[int, str] | None = None
        self._connections: dict[int, Connection] = {}
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

    @property
    def _sender(self) -> int:
        return wire.NO_SENDER if self.me is None else self.me

    def send(self, actor: int, key: Key, value: np.ndarray) -> None:
        value = np.asarray(value, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        head, payload = wire.encode_array(wire.DATA, self._sender, key, value)
        self._send(actor, head, payload)

    def _send(self, actor: int, head: bytes, payload: memoryview | None) -> None:
        try:
            connection, lock, mac = self._connection(actor)
            with lock:
                tag = b"" if mac is None else mac.tag(head, payload if payload else b"")
                if payload is None or len(payload) < 1 << 16:  # one segment for small ones
                    connection.sendall(head + (bytes(payload) if payload else b"") + tag)
                    return
                connection.sendall(head)
                connection.sendall(payload)
                if tag:
                    connection.sendall(tag)
        except auth.AuthenticationError as exc:
            raise RemoteError(
                f"{self.label} {actor} at {self.addresses[actor]} refused "
                f"{self.label} {self.me}'s connection: {exc}"
            ) from None
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
        kind = wire.GOODBYE if what == "goodbye" else wire.ABORT
        message = wire.encode_text(kind, self._sender, text)
        for member in range(len(self.addresses)):
            if member == self.me:
                continue
            try:
                self._send(member, message, None)
            except RemoteError:
                continue

    def _connection(self, actor: int) -> Connection:
        with self._lock:
            found = self._connections.get(actor)
            if found is not None:
                return found
            connection = socket.create_connection(self.addresses[actor])
            try:
                _tune(connection)
                key = auth.client_handshake(connection, self.secret, self.me)
            except BaseException:
                connection.close()
                raise
            found = (connection, threading.Lock(), None if key is None else auth.MessageMac(key))
            self._connections[actor] = found
            return found

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection, address = self.server.accept()
            except OSError:
                return
            _tune(connection)
            threading.Thread(
                target=self._read, args=(connection, address), daemon=True, name="spmd-socket-read"
            ).start()

    def _read(self, connection: socket.socket, address: tuple) -> None:
        """Authenticates the connection, then files its messages until it closes."""
        try:
            peer, key = auth.server_handshake(connection, self.secret, self.mac)
        except auth.AuthenticationError as exc:
            auth.log_refusal(
                f"{self.label} {self.me if self.me is not None else os.getpid()}",
                f"{address[0]}:{address[1]}",
                exc,
            )
            connection.close()
            return
        mac = None if key is None else auth.MessageMac(key)
        said_goodbye = False
        try:
            said_goodbye = self._read_messages(connection, peer, mac)
        except TimeoutError:  # keepalive probes went unanswered
            connection.close()
            if peer is not None and not self._closed:
                self._lose(
                    peer, f"{self._name(peer)} stopped answering (its host is down or unreachable)"
                )
            return
        except (ConnectionError, OSError):
            connection.close()
        except Exception as exc:  # noqa: BLE001 - a broken message must not kill the reader
            connection.close()
            self._malformed(peer, address, exc)
            return
        if peer is not None and not said_goodbye and not self._closed:
            self._lose(
                peer,
                f"{self._name(peer)} closed its connection without a goodbye "
                f"(it died or was killed)",
            )

    def _read_messages(
        self, connection: socket.socket, peer: int | None, mac: auth.MessageMac | None
    ) -> bool:
        """Files messages until the connection closes (ConnectionError) or says goodbye."""

        def read(count: int) -> bytes:
            return auth.read_exactly(connection, count)

        def read_into(view: memoryview) -> None:
            received = 0
            while received < len(view):
                count = connection.recv_into(view[received:])
                if not count:
                    raise ConnectionError("peer closed the connection")
                received += count

        while True:
            message, covered = wire.decode(read, read_into, peer)
            if mac is not None:
                value = message.value
                body = memoryview(value.reshape(-1).view(np.uint8)) if value is not None else b""
                want = mac.tag(covered, body)
                if not hmac.compare_digest(read(auth.MAC_BYTES), want):
                    raise wire.WireError("a message's MAC does not match (altered on the way)")
            if message.kind == wire.DATA:
                self.mailbox.put(message.key, message.value)
            elif message.kind == wire.GOODBYE:
                self.mailbox.depart(
                    message.sender,
                    f"{self.label} {message.sender} exited "
                    f"while {self.label} {self.me} still waits "
                    "for it",
                )
                return True
            else:
                self._lose(message.sender, message.text)

    def _name(self, peer: int) -> str:
        """'process 3 at 10.0.0.2': a peer and the host it listens on."""
        if 0 <= peer < len(self.addresses):
            return f"{self.label} {peer} at {self.addresses[peer][0]}"
        return f"{self.label} {peer}"

    def _malformed(self, peer: int | None, address: tuple, exc: Exception) -> None:
        """A peer that passed the handshake broke the wire format: the job cannot trust what
        it has received, so collectives fail, naming that peer."""
        who = self._name(peer) if peer is not None else f"a {self.label}"
        text = (
            f"{who} sent a malformed message ({exc.__class__.__name__}: {exc}) on its "
            f"connection from {address[0]}:{address[1]}"
        )
        if peer is None:
            self.mailbox.abort(text)
            return
        self._lose(peer, text)

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
        for connection, _, _ in self._connections.values():
            connection.close()


def _tune(connection: socket.socket) -> None:
    """No Nagle delay (collectives wait on every message); keepalive probes (see above)."""
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    timing = (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    )
    for option, value in timing:
        if hasattr(socket, option):  # Linux; elsewhere the system's keepalive timing
            connection.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def bind_address(peer_host: str) -> str:
    """The address of this host's interface that reaches peer_host (loopback for a loopback
    peer): SPMD_BIND_ADDR if set, else what the routing table picks (no packet is sent)."""
    chosen = config.env("SPMD_BIND_ADDR")
    if chosen:
        return chosen
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((peer_host, 9))
            return probe.getsockname()[0]
    except OSError as exc:
        raise LaunchError(
            f"no route from this host to {peer_host!r}: {exc}",
            hint="check MASTER_ADDR, or set SPMD_BIND_ADDR to this host's "
            "address on the peers' network",
        ) from None


class SocketCommunicator(MessageCommunicator):
    """One process of the tcp runtime as one device; actors[p] is the rank of mesh position p."""

    member = "process"
    hint = "another process died, is stuck, or called a different collective"
