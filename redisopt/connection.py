"""Instrumented redis-py connections: exact round-trip counts, and the guard for user servers.

Every client redisopt hands out runs on these connection classes. Each write burst to the socket
is one network round trip (redis-py writes a whole pipeline at once, then reads every reply), and
each packed command is one command, so a block of code can be charged exactly. The connection
handshake (AUTH, HELLO, CLIENT SETINFO, and the guard's one COMMAND fetch per server) is counted
apart, so the counts do not depend on whether the pool already had a connection open.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from redisopt.guard import OPT_IN_HINT, Guard

__all__ = ["CONNECTION_CLASSES", "OPT_IN_HINT", "Guard", "Tap", "tap_of"]


class Tap:
    """Counters shared by all connections of one pool, and the pool's guard.

    ``guard`` is None for a private server: nothing is refused and nothing extra is done.
    """

    def __init__(self, guard: Guard | None = None) -> None:
        self.round_trips = 0
        self.commands = 0
        self.connects = 0
        self.guard = guard
        self._lock = threading.Lock()

    def add(self, round_trips: int = 0, commands: int = 0, connects: int = 0) -> None:
        with self._lock:
            self.round_trips += round_trips
            self.commands += commands
            self.connects += connects

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.round_trips, self.commands, self.connects


class _Instrumented:
    """Mixin over a redis-py connection class; needs ``tap=`` among the pool's kwargs."""

    def __init__(self, *args: Any, tap: Tap, **kwargs: Any) -> None:
        self.tap = tap
        self._in_handshake = False
        super().__init__(*args, **kwargs)

    def on_connect_check_health(self, check_health: bool = True) -> None:
        self._in_handshake = True
        try:
            super().on_connect_check_health(check_health)  # type: ignore[misc]
            if self.tap.guard is not None and self.tap.guard.rules is None:
                self.tap.guard.load(self)  # once per server, part of the handshake: not counted
        finally:
            self._in_handshake = False
        self.tap.add(connects=1)

    def _check(self, commands: Iterable[Sequence[Any]]) -> None:
        """Refuse before anything is sent; checks what redis-py's packer will put on the wire."""
        if self.tap.guard.rules is None:  # type: ignore[union-attr]
            self.connect()  # type: ignore[attr-defined]  # the handshake fetches the rules
        for args in commands:
            self.tap.guard.check_call(args, self._command_packer.pack)  # type: ignore[union-attr,attr-defined]

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if not self._in_handshake:
            if self.tap.guard is not None:
                self._check([args])
            self.tap.add(commands=1)
        super().send_command(*args, **kwargs)  # type: ignore[misc]

    def pack_commands(self, commands: Iterable[Sequence[Any]]) -> list[bytes]:
        commands = list(commands)
        if self.tap.guard is not None:
            self._check(commands)  # all of them first: one refused command sends none
        self.tap.add(commands=len(commands))
        return super().pack_commands(commands)  # type: ignore[misc]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._in_handshake:
            self.tap.add(round_trips=1)
        super().send_packed_command(command, check_health)  # type: ignore[misc]


class TCPConnection(_Instrumented, redis.Connection):
    """Plain TCP connection with counters and guard."""


class SSLConnection(_Instrumented, redis.SSLConnection):
    """TLS connection (``rediss://``) with counters and guard."""


class UnixConnection(_Instrumented, redis.UnixDomainSocketConnection):
    """Unix-socket connection (``unix://``) with counters and guard."""


CONNECTION_CLASSES = {"redis": TCPConnection, "rediss": SSLConnection, "unix": UnixConnection}


def tap_of(client: redis.Redis) -> Tap:
    """The Tap behind a client made by redisopt; a clear error for any other client."""
    tap = client.connection_pool.connection_kwargs.get("tap")
    if not isinstance(tap, Tap):
        raise TypeError(
            "this client was not made by redisopt, so its round trips cannot be counted: "
            "use redisopt.connect() (or Server.client()) to get one"
        )
    return tap
