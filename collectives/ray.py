"""Ray transport: collectives between Ray actors (one per device) built on point-to-point
messages (collectives.messages), over direct TCP sockets between actors (collectives.sockets)
or over Ray's object store (actor calls).

Imports nothing of ours except spmd.errors and collectives; needs no Ray import itself
(the object-store channel is given the actors' handles).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from collectives.messages import Key, Mailbox, MessageCommunicator
from collectives.sockets import SocketChannel

__all__ = ["Mailbox", "ObjectChannel", "RayCommunicator", "SocketChannel"]


class ObjectChannel:
    """Sends through Ray actor calls: arrays travel by Ray's object store (plasma when large)."""

    name = "objects"

    def __init__(self, handles: Sequence[Any]):
        self.handles = list(handles)

    def send(self, actor: int, key: Key, value: np.ndarray) -> None:
        self.handles[actor].deliver.remote(key, value)

    def close(self) -> None:
        self.handles = []


class RayCommunicator(MessageCommunicator):
    """One actor's device of a mesh; actors[p] is the actor index of mesh position p."""

    member = "Ray actor"
    hint = "another actor died, is stuck, or called a different collective"
