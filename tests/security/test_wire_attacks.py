"""Attacks on the socket transport from the same host (loopback), replayed against two channels in
this process: each is refused or blamed on the peer that sent it, nothing it sends is executed or
reaches a collective, and the collectives' results stay those of numpy."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import threading
import time

import numpy as np
import pytest

from collectives import auth, wire
from collectives.messages import Mailbox
from collectives.sockets import SocketChannel, SocketCommunicator
from spmd.errors import LaunchError, RemoteError

SECRET = b"security-suite-secret-0123456789abcdef"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def fresh_refusal_log(monkeypatch):
    """Every test sees its refusals logged (the log keeps only the first 20 per process)."""
    monkeypatch.setattr(auth, "_refusals", [0])


class Evil:
    """Unpickling this creates `path`: proof that the reader ran an attacker's code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def world(mac: bool = False, secret: bytes = SECRET):
    """Two connected channels (processes 0 and 1) and a (2,) mesh's communicators over them."""
    boxes = [Mailbox(), Mailbox()]
    channels = [SocketChannel(b, label="process", secret=secret, mac=mac) for b in boxes]
    table = [("127.0.0.1", c.port) for c in channels]
    for rank, channel in enumerate(channels):
        channel.connect(table, me=rank)
    comms = [SocketCommunicator(r, (2,), ("x",), channels[r], boxes[r], [0, 1]) for r in range(2)]
    return channels, comms


def all_reduce_both(comms, values):
    """Both members' all_reduce results (member 1 on a thread)."""
    results = [None, None]

    def member(rank: int) -> None:
        results[rank] = comms[rank].all_reduce(values[rank], "x")

    thread = threading.Thread(target=member, args=(1,))
    thread.start()
    member(0)
    thread.join(10)
    return results


def check_results_unchanged(comms) -> None:
    for _ in range(3):
        a, b = np.arange(6.0), np.full(6, 1000.0)
        for got in all_reduce_both(comms, [a, b]):
            np.testing.assert_array_equal(got, a + b)


def attack(port: int, payload: bytes, wait_s: float = 0.3) -> bytes:
    """Connects to a channel's port, sends payload, and returns whatever comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        try:
            connection.sendall(payload)
        except OSError:
            return b""
        connection.settimeout(wait_s)
        try:
            return connection.recv(1 << 16)
        except (TimeoutError, OSError):
            return b""


def legacy_message(key, array: np.ndarray) -> bytes:
    """A message in the old pickled-header format (what the exploit targeted)."""
    header = pickle.dumps((key, array.dtype, array.shape))
    return struct.pack("!I", len(header)) + header + array.tobytes()


def teardown(channels) -> None:
    for channel in channels:
        channel.close()


def test_a_pickle_payload_is_never_unpickled(tmp_path, caplog) -> None:
    channels, comms = world()
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Evil(str(marker)))
    with caplog.at_level(logging.WARNING, logger="spmd.security"):
        for port in (c.port for c in channels):
            attack(port, struct.pack("!I", len(evil)) + evil)
            attack(port, legacy_message(Evil(str(marker)), np.zeros(2)))
        time.sleep(0.3)
    assert not marker.exists()
    assert "refused a connection from 127.0.0.1" in caplog.text
    assert "no spmd handshake" in caplog.text
    check_results_unchanged(comms)
    teardown(channels)


@pytest.mark.parametrize("payload", [b"\x00garbage\xff", os.urandom(4096), b"", b"SPMDAUTH"])
def test_garbage_bytes_are_refused_and_the_job_goes_on(payload) -> None:
    channels, comms = world()
    for channel in channels:
        attack(channel.port, payload, wait_s=0.1)
    check_results_unchanged(comms)
    assert channels[0].lost is None and channels[1].lost is None
    teardown(channels)


def test_spoofed_abort_and_goodbye_from_an_outsider_do_nothing() -> None:
    channels, comms = world()
    for kind, text in (
        (wire.ABORT, "process 1 failed with FakeError: run rm -rf"),
        (wire.GOODBYE, ""),
    ):
        message = wire.encode_text(kind, 1, text)
        attack(channels[0].port, message)
        attack(
            channels[0].port,
            auth.PREFACE.pack(auth.MAGIC, auth.VERSION, 1, b"n" * 32) + b"\0" * 32 + message,
        )  # a preface without the secret, then the message
    check_results_unchanged(comms)
    assert channels[0].mailbox.error is None and not channels[0].mailbox.departed
    teardown(channels)


def test_injected_all_reduce_data_never_reaches_a_collective() -> None:
    channels, comms = world()
    for step in range(1, 40):  # the steps the next collectives will use, from member 1
        head, payload = wire.encode_array(
            wire.DATA, 1, (comms[0].tag_id, step, 1), np.full(6, 1001.0)
        )
        attack(channels[0].port, head + bytes(payload), wait_s=0.0)
        attack(
            channels[0].port,
            legacy_message((comms[0].tag, step, 1), np.full(6, 1001.0)),
            wait_s=0.0,
        )
    check_results_unchanged(comms)
    teardown(channels)


def test_a_wrong_secret_is_refused_on_both_sides(caplog) -> None:
    channels, comms = world()
    box = Mailbox()
    impostor = SocketChannel(box, label="process", secret=b"not-the-job-secret-0123456789")
    impostor.connect([("127.0.0.1", c.port) for c in channels])
    with pytest.raises(RemoteError, match="does not hold this job's secret"):
        impostor.send(0, (comms[0].tag_id, 1, 1), np.full(6, 1001.0))
    with caplog.at_level(logging.WARNING, logger="spmd.security"):  # a client that guesses
        with socket.create_connection(("127.0.0.1", channels[0].port), timeout=5) as client:
            client.sendall(auth.PREFACE.pack(auth.MAGIC, auth.VERSION, 1, os.urandom(32)))
            auth.read_exactly(client, 64)
            client.sendall(os.urandom(32))
            assert client.recv(1) == b""  # closed, no verdict
        deadline = time.monotonic() + 5
        while "wrong handshake proof" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "wrong handshake proof" in caplog.text
    check_results_unchanged(comms)
    teardown([*channels, impostor])


def test_a_member_that_breaks_the_wire_format_is_named_not_a_reader_crash() -> None:
    channels, comms = world()
    connection, lock, _ = channels[1]._connection(0)  # process 1's authenticated connection
    head = bytearray(wire.encode_array(wire.DATA, 1, (comms[0].tag_id, 1, 1), np.zeros(2))[0])
    head[6] = 99  # a dtype code off the allow-list
    with lock:
        connection.sendall(bytes(head))
    with pytest.raises(
        RemoteError,
        match=r"process 1 at 127.0.0.1 sent a malformed message "
        r"\(WireError: dtype code 99 is not one of the allowed",
    ):
        comms[0].all_reduce(np.ones(2), "x")
    teardown(channels)


@pytest.mark.parametrize(
    "field,value,error",
    [
        (0, b"XXXX", "not an spmd message"),
        (1, 7, "wire format version 7"),
        (2, 42, "unknown message kind 42"),
        (4, 33, "33 dimensions"),
        (9, 1 << 50, "but 1125899906842624 payload bytes"),
        (5, 0, "claims sender 0, its connection authenticated as 1"),
    ],
)
def test_every_header_field_is_checked_before_the_payload(field, value, error) -> None:
    head = bytearray(wire.encode_array(wire.DATA, 1, (5, 1, 1), np.zeros((2, 3)))[0])
    fields = list(wire.HEADER.unpack_from(head))
    fields[field] = value
    head[: wire.HEADER.size] = wire.HEADER.pack(*fields)
    channels, comms = world()
    connection, lock, _ = channels[1]._connection(0)
    with lock:
        connection.sendall(bytes(head))  # no payload follows: a check that waited would hang
    with pytest.raises(RemoteError, match=error):
        comms[0].all_gather(np.ones(2), "x", 0)
    teardown(channels)


def test_with_a_mac_on_every_message_results_match_and_altered_bytes_are_caught() -> None:
    channels, comms = world(mac=True)
    check_results_unchanged(comms)
    big = [np.arange(50_000.0), np.ones(50_000)]  # above the one-segment size: two rounds
    for got in all_reduce_both(comms, big):
        np.testing.assert_array_equal(got, big[0] + big[1])
    connection, lock, mac = channels[1]._connection(0)
    head, payload = wire.encode_array(wire.DATA, 1, (comms[0].tag_id, 99, 1), np.zeros(2))
    tag = mac.tag(head, payload)
    altered = bytearray(payload)
    altered[0] ^= 1
    with lock:
        connection.sendall(head + bytes(altered) + tag)
    with pytest.raises(RemoteError, match="MAC does not match"):
        comms[0].all_gather(np.ones(2), "x", 0)
    teardown(channels)


def test_a_transport_without_a_secret_refuses_to_start(monkeypatch) -> None:
    monkeypatch.delenv(auth.SECRET_VARIABLE, raising=False)
    with pytest.raises(LaunchError, match="needs a per-job secret in SPMD_JOB_SECRET"):
        SocketChannel(Mailbox())
    monkeypatch.setenv(auth.SECRET_VARIABLE, "short")
    with pytest.raises(LaunchError, match="has 5 characters"):
        SocketChannel(Mailbox())


def test_sockets_listen_on_loopback_unless_told_otherwise() -> None:
    channels, _ = world()
    assert all(c.server.getsockname()[0] == "127.0.0.1" for c in channels)
    teardown(channels)
