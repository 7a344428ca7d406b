"""The tcp runtime (multi-controller, like mpi): processes started by hand or by torchrun with
RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and SPMD_JOB_SECRET meet at rank 0, then run
collectives over direct TCP sockets (collectives.sockets). Every connection, the rendezvous's
included, proves the job's secret (collectives.auth); sockets listen only on the interface that
reaches MASTER_ADDR. A process that raises or dies stops the others fast.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from collectives import auth
from collectives.messages import Mailbox
from collectives.sockets import SocketChannel, SocketCommunicator, bind_address
from launch.multicontroller import MultiControllerRuntime
from spmd import config
from spmd.errors import LaunchError, RemoteError
from spmd.mesh import Mesh

RETRY_S = 0.05
# After a peer is lost, how long this process may go on (to raise from a collective and print
# why) before it is ended anyway: a process computing or sleeping outside collectives.
PEER_LOST_GRACE_S = 2.0
HINT = (
    "start every rank with the same WORLD_SIZE, MASTER_ADDR, MASTER_PORT and SPMD_JOB_SECRET "
    "(rank 0 first or within SPMD_RENDEZVOUS_TIMEOUT seconds)"
)
MAX_LINE = 1 << 20  # a rendezvous message longer than this is not ours
# Exit status of a process stopped because another one failed: the launcher looks past these
# to name the process that failed first.
PEER_STOPPED_CODE = 87
VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Launch:
    """torchrun's variables for this process."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    local_rank: int


def read_launch(environ: Any = os.environ) -> Launch:
    """The torchrun variables; LaunchError naming any that is missing or malformed."""
    missing = [name for name in VARIABLES if not environ.get(name)]
    if missing:
        raise LaunchError(
            f"the tcp runtime needs {', '.join(VARIABLES)}; {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set",
            hint="launch with torchrun, or set them by hand (MASTER_ADDR=127.0.0.1 "
            "MASTER_PORT=29500 RANK=r WORLD_SIZE=n python train.py)",
        )
    numbers = {}
    for name in ("RANK", "WORLD_SIZE", "MASTER_PORT", "LOCAL_RANK"):
        text = environ.get(name, environ.get("RANK"))  # LOCAL_RANK is optional: one host
        if not text.isdigit():
            raise LaunchError(f"{name}={text!r} is not a non-negative integer")
        numbers[name] = int(text)
    if numbers["RANK"] >= numbers["WORLD_SIZE"]:
        raise LaunchError(
            f"RANK={numbers['RANK']} is not below WORLD_SIZE={numbers['WORLD_SIZE']}",
            hint="ranks count from 0",
        )
    return Launch(
        numbers["RANK"],
        numbers["WORLD_SIZE"],
        environ["MASTER_ADDR"],
        numbers["MASTER_PORT"],
        numbers["LOCAL_RANK"],
    )


def rendezvous_timeout() -> float:
    return config.env("SPMD_RENDEZVOUS_TIMEOUT")


def rendezvous(
    launch: Launch, port: int, timeout: float, secret: bytes, host: str | None = None
) -> list[tuple[str, int]]:
    """Every rank's (host, port) of its message socket, in rank order: each rank proves the
    job's secret to rank 0 (listening on MASTER_ADDR:MASTER_PORT) and sends its own; rank 0
    answers with the table. host: where this rank's socket listens (default: the interface
    that reaches MASTER_ADDR)."""
    deadline = time.monotonic() + timeout
    host = host or bind_address(launch.master_addr)
    if launch.rank == 0:
        return _serve(launch, port, deadline, timeout, secret, host)
    return _join(launch, port, deadline, timeout, secret, host)


def _serve(
    launch: Launch, port: int, deadline: float, timeout: float, secret: bytes, host: str
) -> list[tuple[str, int]]:
    try:
        server = socket.create_server((host, launch.master_port), backlog=launch.world_size)
    except OSError as exc:
        raise LaunchError(
            f"rank 0 cannot listen on MASTER_PORT={launch.master_port}: {exc}",
            hint="choose a free MASTER_PORT",
        ) from None
    table: dict[int, tuple[str, int]] = {0: (launch.master_addr, port)}
    joined: list[socket.socket] = []
    try:
        while len(table) < launch.world_size:
            server.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                connection, address = server.accept()
            except TimeoutError:
                missing = sorted(set(range(launch.world_size)) - set(table))
                raise LaunchError(
                    f"rank 0 waited {timeout:g} s for ranks {missing} of "
                    f"WORLD_SIZE={launch.world_size} to join",
                    hint=HINT,
                ) from None
            if not _admitted(connection, address, secret):
                continue
            hello = _read_message(connection, deadline)
            if not hello:
                connection.close()
                continue
            joined.append(connection)
            problem = _check_hello(hello, launch, table)
            if problem:
                _answer(joined, {"error": problem})
                raise LaunchError(problem, hint=HINT)
            table[hello["rank"]] = (hello["host"], hello["port"])
        _answer(joined, {"table": [table[r] for r in range(launch.world_size)]})
    finally:
        server.close()
        for connection in joined:
            connection.close()
    return [table[r] for r in range(launch.world_size)]


def _admitted(connection: socket.socket, address: tuple, secret: bytes) -> bool:
    """Whether a connection to the rendezvous proves the job's secret; if not it is closed and
    logged, and rank 0 goes on waiting for the real ranks."""
    try:
        auth.server_handshake(connection, secret)
    except auth.AuthenticationError as exc:
        auth.log_refusal("the tcp rendezvous (rank 0)", f"{address[0]}:{address[1]}", exc)
        connection.close()
        return False
    return True


def _read_message(connection: socket.socket, deadline: float) -> dict:
    """One JSON line from connection; {} if none comes before the deadline or it is garbage."""
    connection.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        message = json.loads(connection.makefile("r").readline(MAX_LINE) or "{}")
    except (OSError, ValueError):
        return {}
    return message if isinstance(message, dict) else {}


def _check_hello(hello: dict, launch: Launch, table: dict[int, tuple[str, int]]) -> str | None:
    """Why rank 0 refuses a joining rank's hello; None if it fits."""
    if hello.get("world_size") != launch.world_size:
        return (
            f"rank {hello.get('rank')} has WORLD_SIZE={hello.get('world_size')} but rank 0 "
            f"has WORLD_SIZE={launch.world_size}"
        )
    if hello.get("rank") in table:
        return f"two processes have RANK={hello.get('rank')}"
    return None


def _answer(connections: list[socket.socket], message: dict) -> None:
    data = (json.dumps(message) + "\n").encode()
    for connection in connections:
        try:
            connection.sendall(data)
        except OSError:
            continue


def _join(
    launch: Launch, port: int, deadline: float, timeout: float, secret: bytes, host: str
) -> list[tuple[str, int]]:
    address = (launch.master_addr, launch.master_port)
    while True:
        try:
            connection = socket.create_connection(address, timeout=RETRY_S * 20)
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise LaunchError(
                    f"rank {launch.rank} could not reach rank 0 at "
                    f"{launch.master_addr}:{launch.master_port} within {timeout:g} s",
                    hint=HINT,
                ) from None
            time.sleep(RETRY_S)
    with connection:
        try:
            auth.client_handshake(connection, secret, launch.rank)
        except auth.AuthenticationError as exc:
            raise LaunchError(
                f"rank {launch.rank} refused the rendezvous at {launch.master_addr}"
                f":{launch.master_port}: {exc}",
                hint=HINT,
            ) from None
        hello = {"rank": launch.rank, "world_size": launch.world_size, "host": host, "port": port}
        connection.sendall((json.dumps(hello) + "\n").encode())
        answer = _read_message(connection, deadline) or {
            "error": f"rank 0 did not answer within {timeout:g} s (not every rank of "
            f"WORLD_SIZE={launch.world_size} joined, or rank 0 failed)"
        }
    if "table" not in answer:
        raise LaunchError(
            answer.get("error", "rank 0 closed the rendezvous without an answer"), hint=HINT
        )
    return [tuple(entry) for entry in answer["table"]]


class TCPRuntime(MultiControllerRuntime):
    """One device per process, collectives over TCP sockets between the processes."""

    kind = "tcp"
    world = "the tcp world"

    def __init__(
        self, platform: str = "cpu", install_excepthook: bool = True, timeout: float | None = None
    ):
        launch = read_launch()
        secret = auth.job_secret(required_by="the tcp runtime")
        host = bind_address(launch.master_addr)
        super().__init__(launch.rank, launch.world_size, platform)
        self.local_rank = launch.local_rank
        self.mailbox = Mailbox()
        self.channel = SocketChannel(
            self.mailbox, host=host, label="process", on_lost=self._peer_lost, secret=secret
        )
        try:
            table = rendezvous(
                launch,
                self.channel.port,
                rendezvous_timeout() if timeout is None else timeout,
                secret,
                host,
            )
            self.channel.connect(table, me=self.rank)
        except BaseException:
            self.channel.close()
            raise
        self._world = SocketCommunicator(
            self.rank,
            (self.size,),
            ("processes",),
            self.channel,
            self.mailbox,
            range(self.size),
            tag="world",
        )
        self._closed = False
        if install_excepthook:
            sys.excepthook = self._excepthook
        atexit.register(self.shutdown)
        self.barrier()

    def barrier(self) -> None:
        self._world.barrier()

    def shutdown(self) -> None:
        """Says goodbye to every peer and closes the sockets (also run at exit)."""
        if self._closed:
            return
        self._closed = True
        self._meshes.clear()
        self.channel.close()

    def _communicator(
        self,
        mesh: Mesh,
        ids: list[int],
        position: int | None,
    ) -> SocketCommunicator | None:
        if position is None:
            return None
        tag = (mesh.axis_names, mesh.axis_sizes, tuple(ids))
        return SocketCommunicator(
            position, mesh.axis_sizes, mesh.axis_names, self.channel, self.mailbox, ids, tag=tag
        )

    # -- faults ----------------------------------------------------------------------------
    def _excepthook(self, kind: type, value: BaseException, trace: Any) -> None:
        """An uncaught exception ends this process and, through an abort message, the others;
        a RemoteError caused by a peer's failure is one line (that peer prints its traceback)."""
        lost = self.channel.lost
        if isinstance(value, RemoteError) and lost is None:
            lost = self._awaited_abort()
        if isinstance(value, RemoteError) and lost is not None:
            self._stop(f"stopping: {lost[1]}", PEER_STOPPED_CODE)
        text = "".join(traceback.format_exception(value)).rstrip()
        sys.stderr.write(f"[spmd rank {self.rank}] {text}\n")
        summary = f"{kind.__name__}: {value}".splitlines()[0]
        self.channel.announce(
            "abort",
            f"process {self.rank} (pid {os.getpid()} on "
            f"{socket.gethostname()}) failed with {summary}",
        )
        self._stop(None, 130 if isinstance(value, KeyboardInterrupt) else 1)

    def _awaited_abort(self) -> tuple[int, str] | None:
        """The peer this process waited for may have left because a third process failed (it
        stops with a goodbye), and that failure's abort may still be on its way here: wait
        for it a moment before blaming this process."""
        with self.mailbox.cond:
            self.mailbox.cond.wait_for(
                lambda: self.channel.lost is not None, timeout=PEER_LOST_GRACE_S
            )
        return self.channel.lost

    def _peer_lost(self, peer: int, text: str) -> None:
        """Called by a socket reader: ends this process unless it ends by itself first."""

        def end_later() -> None:
            time.sleep(PEER_LOST_GRACE_S)
            self._stop(f"stopping: {text}", PEER_STOPPED_CODE)

        threading.Thread(target=end_later, daemon=True, name="spmd-tcp-peer-lost").start()

    def _stop(self, message: str | None, code: int) -> None:
        if message:  # stopped by a peer's failure: a goodbye, so that no third process
            # blames this one instead of the peer whose abort message it is still reading
            self.channel.announce("goodbye")
            sys.stderr.write(f"[spmd rank {self.rank}] {message}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)
