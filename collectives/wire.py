"""The socket transport's wire format: a fixed binary header checked before any payload is read,
then the array's raw bytes (or an abort's UTF-8 text). No pickle: a peer can only ever make us
allocate the bytes its header declares, as one of the allow-listed dtypes.

    header  !4sBBBBIIQQQ   magic "SPMD", version, kind, dtype code, ndim,
                           sender (channel member), position (the sender's mesh position),
                           step (the collective's sequence number), collective id, payload bytes
    shape   ndim x !Q      (ndim <= MAX_NDIM)
    payload payload bytes  (C order, little-endian)
    mac     32 bytes       only on connections that agreed to authenticate every message

Imports nothing of ours except spmd.errors.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from spmd.errors import DTypeError

MAGIC = b"SPMD"
VERSION = 1
HEADER = struct.Struct("!4sBBBBIIQQQ")
DIMENSION = struct.Struct("!Q")
MAX_NDIM = 32
# A declared payload above this is refused before anything is allocated (a corrupt or hostile
# length field); 1 TiB is far above any one collective's message.
MAX_PAYLOAD_BYTES = 1 << 40
MAX_TEXT_BYTES = 1 << 20  # an abort's message (a traceback summary)
NO_SENDER = 0xFFFFFFFF  # a connection that did not say who it is (Ray actors' channels)

DATA, GOODBYE, ABORT = 1, 2, 3
KINDS = {DATA: "data", GOODBYE: "goodbye", ABORT: "abort"}


def _dtype_table() -> dict[int, np.dtype]:
    names = [
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    ]
    table = {code: np.dtype(name).newbyteorder("<") for code, name in enumerate(names, 1)}
    try:
        import ml_dtypes  # bfloat16 travels as itself: the receiver reduces it in float32
    except ImportError:
        return table
    table[len(names) + 1] = np.dtype(ml_dtypes.bfloat16)
    return table


DTYPES = _dtype_table()
CODES = {dtype: code for code, dtype in DTYPES.items()}
NO_DTYPE = 0  # control messages and text carry bytes, not an array


class WireError(Exception):
    """A message that breaks the wire format; the reader names the peer that sent it."""


class Message:
    """One decoded message: its kind, who sent it, and the mailbox key and value it carries."""

    __slots__ = ("key", "kind", "sender", "text", "value")

    def __init__(
        self,
        kind: int,
        sender: int,
        key: tuple[int, int, int],
        value: np.ndarray | None = None,
        text: str = "",
    ):
        self.kind = kind
        self.sender = sender
        self.key = key
        self.value = value
        self.text = text


def collective_id(tag: Any) -> int:
    """A 64-bit id of a communicator's tag, the same in every process (repr of tuples of str
    and int is; Python's hash() of a str is not)."""
    digest = hashlib.blake2b(repr(tag).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def encode_array(
    kind: int,
    sender: int,
    key: tuple[int, int, int],
    value: np.ndarray,
) -> tuple[bytes, memoryview | None]:
    """(header and shape, payload view or None) of an array message."""
    if value.dtype.byteorder == ">":  # the wire is little-endian
        value = value.astype(value.dtype.newbyteorder("<"))
    code = CODES.get(value.dtype)
    if code is None:
        raise DTypeError(
            f"the socket transport cannot send dtype {value.dtype}",
            hint=f"use one of {sorted(str(d) for d in DTYPES.values())}",
        )
    if value.ndim > MAX_NDIM:
        raise DTypeError(
            f"the socket transport sends arrays of at most {MAX_NDIM} dimensions, got {value.ndim}"
        )
    _, step, position = key
    head = HEADER.pack(
        MAGIC, VERSION, kind, code, value.ndim, sender, position, step, key[0], value.nbytes
    )
    shape = struct.pack(f"!{value.ndim}Q", *value.shape)
    payload = memoryview(value.reshape(-1).view(np.uint8)) if value.nbytes else None
    return head + shape, payload


def encode_text(kind: int, sender: int, text: str) -> bytes:
    """A control message (goodbye, abort) with its text as length-prefixed UTF-8."""
    data = text.encode("utf-8", errors="replace")[:MAX_TEXT_BYTES]
    return HEADER.pack(MAGIC, VERSION, kind, NO_DTYPE, 0, sender, 0, 0, 0, len(data)) + data


def decode(
    read: Callable[[int], bytes], read_into: Callable[[memoryview], None], peer: int | None = None
) -> tuple[Message, bytes]:
    """One message from a stream: read(n) returns exactly n bytes, read_into fills a buffer;
    peer: the sender the connection authenticated as (None: it did not say).

    Everything the header declares is checked before the payload is read or allocated.
    Returns the message and the bytes its MAC covers besides an array's payload (header, shape
    or text).
    """
    head = read(HEADER.size)
    magic, version, kind, code, ndim, sender, position, step, ident, length = HEADER.unpack(head)
    if magic != MAGIC:
        raise WireError(f"not an spmd message (starts with {magic!r})")
    if version != VERSION:
        raise WireError(f"wire format version {version}, this process speaks {VERSION}")
    if kind not in KINDS:
        raise WireError(f"unknown message kind {kind}")
    if peer is not None and sender != peer:
        raise WireError(
            f"its header claims sender {sender}, its connection authenticated as {peer}"
        )
    if kind != DATA:
        if code != NO_DTYPE or ndim or length > MAX_TEXT_BYTES:
            raise WireError(
                f"malformed {KINDS[kind]} message (dtype {code}, ndim {ndim}, "
                f"{length} bytes of text)"
            )
        raw = read(length)
        return Message(kind, sender, (0, 0, 0), text=raw.decode("utf-8", "replace")), head + raw
    dtype = DTYPES.get(code)
    if dtype is None:
        raise WireError(f"dtype code {code} is not one of the allowed dtypes")
    if ndim > MAX_NDIM:
        raise WireError(f"{ndim} dimensions (at most {MAX_NDIM})")
    shape_bytes = read(DIMENSION.size * ndim)
    shape = struct.unpack(f"!{ndim}Q", shape_bytes)
    if (
        length > MAX_PAYLOAD_BYTES
        or max(shape, default=0) > MAX_PAYLOAD_BYTES
        or math.prod(shape) * dtype.itemsize != length
    ):
        raise WireError(f"header declares {dtype}{list(shape)} but {length} payload bytes")
    value = np.empty(shape, dtype)
    if length:
        read_into(memoryview(value.reshape(-1).view(np.uint8)))
    return Message(kind, sender, (ident, step, position), value), head + shape_bytes


__all__ = [
    "ABORT",
    "DATA",
    "DTYPES",
    "GOODBYE",
    "Message",
    "WireError",
    "collective_id",
    "decode",
    "encode_array",
    "encode_text",
]
