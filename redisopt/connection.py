"""Instrumented redis-py connections: exact round-trip counts and the guard for user servers.

Every client redisopt hands out runs on these connection classes. Each write burst to the socket
is one network round trip (redis-py writes a whole pipeline at once, then reads every reply), and
each packed command is one command, so a block of code can be charged exactly. The connection
handshake (AUTH, HELLO, CLIENT SETINFO) is counted apart, so the counts do not depend on whether
the pool already had a connection open.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from redisopt.errors import DestructiveCommandError

# Commands that destroy data or change server configuration. On a server the user supplied
# (REDIS_URL) they are refused unless the user opts in: the workbook must never wipe it.
DESTRUCTIVE_COMMANDS: frozenset[tuple[str, ...]] = frozenset(
    {
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("DEBUG",),
        ("SHUTDOWN",),
        ("SWAPDB",),
        ("REPLICAOF",),
        ("SLAVEOF",),
        ("CONFIG", "SET"),
        ("CONFIG", "RESETSTAT"),
        ("CONFIG", "REWRITE"),
        ("SCRIPT", "FLUSH"),
        ("FUNCTION", "FLUSH"),
        ("SLOWLOG", "RESET"),
        ("LATENCY", "RESET"),
        ("CLUSTER", "RESET"),
        ("CLUSTER", "FLUSHSLOTS"),
    }
)
_CONTAINERS = frozenset(words[0] for words in DESTRUCTIVE_COMMANDS if len(words) == 2)

OPT_IN_HINT = (
    "set REDISOPT_ALLOW_DESTRUCTIVE=1 or call redisopt.connect(allow_destructive=True)"
)


def _word(arg: Any) -> str:
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg).decode("utf-8", "replace")
    return str(arg)


def command_name(args: Sequence[Any]) -> tuple[str, ...]:
    """The command's name, with its subcommand for container commands (``CONFIG SET``)."""
    words = _word(args[0]).upper().split()
    if len(words) == 1 and words[0] in _CONTAINERS and len(args) > 1:
        words.append(_word(args[1]).upper())
    return tuple(words[:2])


class Tap:
    """Counters shared by all connections of one pool, and the guard's switch.

    ``guard_label`` names the user's server in refusals; ``None`` means nothing is refused.
    """

    def __init__(self, guard_label: str | None = None) -> None:
        self.round_trips = 0
        self.commands = 0
        self.connects = 0
        self.guard_label = guard_label
        self._lock = threading.Lock()

    def add(self, round_trips: int = 0, commands: int = 0, connects: int = 0) -> None:
        with self._lock:
            self.round_trips += round_trips
            self.commands += commands
            self.connects += connects

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.round_trips, self.commands, self.connects

    def check(self, args: Sequence[Any]) -> None:
        """Refuse a destructive command when this pool talks to a user-supplied server."""
        if self.guard_label is None:
            return
        name = command_name(args)
        if name in DESTRUCTIVE_COMMANDS or name[:1] in DESTRUCTIVE_COMMANDS:
            raise DestructiveCommandError(
                f"{' '.join(name)} refused: {self.guard_label} is a server you supplied, and "
                f"redisopt never flushes or reconfigures it. To allow it anyway, {OPT_IN_HINT}."
            )


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
        finally:
            self._in_handshake = False
        self.tap.add(connects=1)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if not self._in_handshake:
            self.tap.check(args)
            self.tap.add(commands=1)
        super().send_command(*args, **kwargs)  # type: ignore[misc]

    def pack_commands(self, commands: Iterable[Sequence[Any]]) -> list[bytes]:
        commands = list(commands)
        for args in commands:
            self.tap.check(args)
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
