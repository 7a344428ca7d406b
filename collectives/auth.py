"""Peer authentication for the socket transport and the tcp rendezvous: a per-job secret and an
HMAC-SHA256 challenge-response handshake on every connection (both sides prove they hold the
secret; nonces from both make a recorded handshake useless), then an optional MAC per message.

    client -> server   "SPMDAUTH", version, client id (u32), client nonce (32 bytes)
    server -> client   server nonce (32), HMAC(secret, "server" | nonces | id)
    client -> server   HMAC(secret, "client" | nonces | id)
    server -> client   ACCEPTED, and whether every message carries a MAC

Imports nothing of ours except spmd.errors.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
import struct
from collections.abc import Mapping

from spmd import config
from spmd.errors import LaunchError

SECRET_VARIABLE = "SPMD_JOB_SECRET"
MAC_VARIABLE = "SPMD_WIRE_MAC"  # "1": a MAC on every message too (measured: benchmarks/RESULTS)
MIN_SECRET_CHARS = 16
HANDSHAKE_TIMEOUT_S = 10.0  # a connection that does not finish the handshake by then is dropped
PREFACE = struct.Struct("!8sBI32s")
MAGIC = b"SPMDAUTH"
VERSION = 1
NONCE_BYTES = 32
MAC_BYTES = 32
ACCEPTED = b"\x01"
ACCEPTED_WITH_MAC = b"\x02"
ANONYMOUS = 0xFFFFFFFF
LOG = logging.getLogger("spmd.security")
_refusals = [0]
LOGGED_REFUSALS = 20  # then one line per 1000, so a flood of probes cannot flood the log


class AuthenticationError(ConnectionError):
    """The other end of a connection did not prove it holds the job's secret."""


def new_secret() -> str:
    """A fresh per-job secret (what spmd-launch gives its processes)."""
    return secrets.token_hex(32)


def job_secret(environ: Mapping[str, str] = os.environ, required_by: str = "") -> bytes | None:
    """SPMD_JOB_SECRET as bytes; None when unset, unless required_by names who needs it."""
    text = config.env(SECRET_VARIABLE, environ)
    if not text:
        if not required_by:
            return None
        raise LaunchError(
            f"{required_by} needs a per-job secret in {SECRET_VARIABLE} (every "
            "process of the job sets the same one); it is not set",
            hint=f"export {SECRET_VARIABLE}=$(python -c 'import secrets; "
            "print(secrets.token_hex(32))') on every host before starting "
            "the ranks (spmd-launch sets it itself)",
        )
    if len(text) < MIN_SECRET_CHARS:
        raise LaunchError(
            f"{SECRET_VARIABLE} has {len(text)} characters; a guessable secret "
            f"lets anyone join the job",
            hint="use at least 16 random characters, "
            "e.g. python -c 'import secrets; print(secrets.token_hex(32))'",
        )
    return text.encode("utf-8")


def mac_every_message(environ: Mapping[str, str] = os.environ) -> bool:
    return config.env(MAC_VARIABLE, environ)


def _proof(
    secret: bytes, role: bytes, client_nonce: bytes, server_nonce: bytes, client: int
) -> bytes:
    message = role + client_nonce + server_nonce + struct.pack("!I", client)
    return hmac.new(secret, message, hashlib.sha256).digest()


def session_key(secret: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """The key of this connection's per-message MACs (fresh per connection)."""
    return hmac.new(secret, b"session" + client_nonce + server_nonce, hashlib.sha256).digest()


def read_exactly(connection: socket.socket, count: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < count:
        data = connection.recv(count - len(chunks))
        if not data:
            raise ConnectionError("peer closed the connection")
        chunks += data
    return bytes(chunks)


def client_handshake(
    connection: socket.socket,
    secret: bytes,
    me: int | None,
) -> bytes | None:
    """Proves we hold the secret and checks that the server does; returns the session key
    when the server asks for a MAC on every message, else None. AuthenticationError if not."""
    client = ANONYMOUS if me is None else me
    nonce = secrets.token_bytes(NONCE_BYTES)
    previous = connection.gettimeout()
    connection.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        connection.sendall(PREFACE.pack(MAGIC, VERSION, client, nonce))
        answer = read_exactly(connection, NONCE_BYTES + MAC_BYTES)
        server_nonce, proof = answer[:NONCE_BYTES], answer[NONCE_BYTES:]
        if not hmac.compare_digest(proof, _proof(secret, b"server", nonce, server_nonce, client)):
            raise AuthenticationError(
                "the peer does not hold this job's secret "
                f"({SECRET_VARIABLE} differs, or it is not ours)"
            )
        connection.sendall(_proof(secret, b"client", nonce, server_nonce, client))
        verdict = read_exactly(connection, 1)
    except ConnectionError as exc:
        if isinstance(exc, AuthenticationError):
            raise
        raise AuthenticationError(
            f"the peer refused our handshake ({exc}): does every "
            f"process have the same {SECRET_VARIABLE}?"
        ) from None
    except TimeoutError:
        raise AuthenticationError(
            f"the peer did not answer the handshake within {HANDSHAKE_TIMEOUT_S:g} s"
        ) from None
    finally:
        connection.settimeout(previous)
    if verdict not in (ACCEPTED, ACCEPTED_WITH_MAC):
        raise AuthenticationError(f"the peer answered the handshake with {verdict!r}")
    return session_key(secret, nonce, server_nonce) if verdict == ACCEPTED_WITH_MAC else None


def server_handshake(
    connection: socket.socket,
    secret: bytes,
    mac: bool = False,
) -> tuple[int | None, bytes | None]:
    """Checks that the client holds the secret (and proves we do); returns its claimed id
    (None: it did not say) and the session key if every message is to carry a MAC.
    AuthenticationError (the caller closes the connection and logs it) if it does not."""
    previous = connection.gettimeout()
    connection.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        magic, version, client, nonce = PREFACE.unpack(read_exactly(connection, PREFACE.size))
        if magic != MAGIC or version != VERSION:
            raise AuthenticationError(f"no spmd handshake (it began {magic!r})")
        server_nonce = secrets.token_bytes(NONCE_BYTES)
        connection.sendall(server_nonce + _proof(secret, b"server", nonce, server_nonce, client))
        proof = read_exactly(connection, MAC_BYTES)
        if not hmac.compare_digest(proof, _proof(secret, b"client", nonce, server_nonce, client)):
            raise AuthenticationError("wrong handshake proof (it does not hold the job's secret)")
        connection.sendall(ACCEPTED_WITH_MAC if mac else ACCEPTED)
    except TimeoutError:
        raise AuthenticationError(f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s") from None
    except AuthenticationError:
        raise
    except (ConnectionError, OSError, struct.error) as exc:
        raise AuthenticationError(f"the handshake broke off ({exc})") from None
    finally:
        connection.settimeout(previous)
    key = session_key(secret, nonce, server_nonce) if mac else None
    return (None if client == ANONYMOUS else client), key


def log_refusal(where: str, peer: object, why: object) -> None:
    """One warning line (to stderr unless logging is configured) per refused connection."""
    _refusals[0] += 1
    count = _refusals[0]
    if count <= LOGGED_REFUSALS or count % 1000 == 0:
        LOG.warning(
            "spmd: %s refused a connection from %s: %s (%d refused so far)", where, peer, why, count
        )


class MessageMac:
    """HMAC-SHA256 of each message under the connection's session key and a per-direction
    counter, so a message cannot be altered, injected, replayed or reordered on the way."""

    def __init__(self, key: bytes):
        self.key = key
        self.counter = 0

    def tag(self, *parts: bytes | memoryview) -> bytes:
        digest = hmac.new(self.key, struct.pack("!Q", self.counter), hashlib.sha256)
        self.counter += 1
        for part in parts:
            digest.update(part)
        return digest.digest()


__all__ = [
    "AuthenticationError",
    "MessageMac",
    "client_handshake",
    "job_secret",
    "log_refusal",
    "new_secret",
    "server_handshake",
]
