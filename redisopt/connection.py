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
from typing import Any, NamedTuple

import redis

from redisopt.guard import OPT_IN_HINT, Guard

try:
    import hiredis
    from redis.connection import HiredisRespSerializer
except ImportError:  # redis-py then packs in pure Python, and so do we
    hiredis = HiredisRespSerializer = None  # type: ignore[assignment,misc]

__all__ = ["CONNECTION_CLASSES", "OPT_IN_HINT", "Guard", "PackedCommand", "Tap", "pack_command", "send_packed",
           "tap_of"]


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
        check, pack = self.tap.guard.check_call, self._command_packer.pack  # type: ignore[union-attr,attr-defined]
        for args in commands:
            check(args, pack)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if not self._in_handshake:
            if self.tap.guard is not None:
                self._check([args])
            self.tap.add(commands=1)
        self.send_packed_command(self._pack([args]), check_health=kwargs.get("check_health", True))  # type: ignore[attr-defined]

    def pack_commands(self, commands: Iterable[Sequence[Any]]) -> list[bytes]:
        commands = list(commands)
        if self.tap.guard is not None:
            self._check(commands)  # all of them first: one refused command sends none
        self.tap.add(commands=len(commands))
        return self._pack(commands)

    def _pack(self, commands: list[Sequence[Any]]) -> list[bytes]:
        """The bytes redis-py's hiredis packer makes, made ~3 × faster (a measured ~2.5 µs of the
        ~11 µs of CPU a pipelined SET costs here): the first argument's split is cached per word,
        and each command goes to ``hiredis.pack_command`` directly. Anything unusual (a first
        argument that splits into several words, bytearray, memoryview, a bad type) takes
        redis-py's own ``pack``, so the bytes (and the guard, which reads them) never differ."""
        packer = self._command_packer  # type: ignore[attr-defined]
        if hiredis is None or type(packer) is not HiredisRespSerializer:
            return super().pack_commands(commands)  # type: ignore[misc]
        cutoff, heads, pack = self._buffer_cutoff, _HEADS, hiredis.pack_command  # type: ignore[attr-defined]
        output: list[bytes] = []
        pieces: list[bytes] = []
        for args in commands:
            first = args[0] if args else None
            head = heads.get(first) if type(first) in (str, bytes) else None
            if head is None and type(first) in (str, bytes):
                head = _head(first)  # type: ignore[arg-type]
            packed = None
            if head is not None:
                try:
                    packed = pack((head, *args[1:]))
                except TypeError:
                    pass
            chunks = (packed,) if packed is not None else packer.pack(*args)
            for chunk in chunks:
                if len(chunk) > cutoff or type(chunk) is not bytes:  # a big value: sent apart, not copied
                    if pieces:
                        output.append(b"".join(pieces))
                        pieces = []
                    output.append(chunk)
                else:
                    pieces.append(chunk)
        if pieces:
            output.append(b"".join(pieces) if len(pieces) > 1 else pieces[0])
        return output

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._in_handshake:
            self.tap.add(round_trips=1)
        super().send_packed_command(command, check_health)  # type: ignore[misc]


_HEADS: dict[str | bytes, bytes] = {}  # a command's first argument -> the one word redis-py sends for it


def _head(first: str | bytes) -> bytes | None:
    """The single wire word redis-py's packer makes of ``first`` (None if it makes several or none), cached."""
    if type(first) is str:
        words = first.encode().split()
    else:
        words = first.split() if b" " in first else [first]  # type: ignore[list-item]
    if len(words) != 1:
        return None
    if len(_HEADS) < 4096:
        _HEADS[first] = words[0]
    return words[0]


class TCPConnection(_Instrumented, redis.Connection):
    """Plain TCP connection with counters and guard."""


class SSLConnection(_Instrumented, redis.SSLConnection):
    """TLS connection (``rediss://``) with counters and guard."""


class UnixConnection(_Instrumented, redis.UnixDomainSocketConnection):
    """Unix-socket connection (``unix://``) with counters and guard."""


CONNECTION_CLASSES = {"redis": TCPConnection, "rediss": SSLConnection, "unix": UnixConnection}


def tap_of(client: redis.Redis) -> Tap:
    """The Tap behind a client made by redisopt; a clear error for any other client."""
    pool = getattr(client, "connection_pool", None)  # a RedisCluster has one pool per node, none here
    tap = pool.connection_kwargs.get("tap") if pool is not None else None
    if not isinstance(tap, Tap):
        raise TypeError(
            f"this {type(client).__name__} was not made by redisopt, so its round trips cannot be counted: "
            "use redisopt.connect() (or Server.client()) to get one; on a cluster, count per node with "
            "redisopt.cluster_of(rc).commandstats()"
        )
    return tap


# --------------------------------------------------------------------------- hand-packed commands

_PREFIXES = [b"$%d\r\n" % n for n in range(1024)]  # RESP bulk-string headers of short values, made once


class PackedCommand(NamedTuple):
    """One command in RESP, made by ``pack_command``: its first argument (for the guard) and its bytes."""

    name: bytes
    data: bytes


def pack_command(head: Sequence[bytes], values: Iterable[bytes]) -> PackedCommand:
    """``head`` then ``values`` as one RESP command, framed here (a variadic write's fast path).

    redis-py packs argument by argument in Python (~0.7 µs each here); this frames each value as
    it comes, so with ``values=map(dumps, items)`` every encoded value is dropped as soon as it is
    framed (the orjson trap in ``codecs`` never builds up). Exceptions from ``values`` propagate.
    """
    pre = _PREFIXES
    framed = [(pre[n] if (n := len(v)) < 1024 else b"$%d\r\n" % n) + v for v in values]
    header = b"".join([b"*%d\r\n" % (len(head) + len(framed)),
                       *[b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in head]])
    body = b"\r\n".join(framed)
    return PackedCommand(bytes(head[0]), b"".join((header, body, b"\r\n")) if framed else header)


def node_client(client: Any, key: str | None) -> redis.Redis:
    """``client`` itself, or on a ``RedisCluster`` the client of the node serving ``key``."""
    if hasattr(client, "connection_pool"):
        return client
    if key is None or not hasattr(client, "get_node_from_key"):
        raise TypeError(f"a {type(client).__name__} has no single connection pool to send packed commands on")
    return client.get_redis_connection(client.get_node_from_key(key))


def send_packed(client: redis.Redis, commands: Sequence[PackedCommand], key: str | None = None) -> list[Any]:
    """Send ``commands`` in one write (one round trip) on a connection of ``client``'s pool; their replies.

    The instruments still see them on a redisopt client: each command is counted, the write is
    one round trip, and on a server the user supplied the guard checks every command before any
    byte is sent. Every reply is read (the connection stays in step), then the first error reply
    is raised as redis-py raises it (``ResponseError``). On a ``RedisCluster`` they go to the node
    serving ``key``; the caller's commands must all touch that key's slot.
    """
    pool = node_client(client, key).connection_pool
    try:
        conn = pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants a command name
        conn = pool.get_connection("_")
    try:
        tap = getattr(conn, "tap", None)
        if isinstance(tap, Tap):
            if tap.guard is not None:
                if tap.guard.rules is None:
                    conn.connect()  # the handshake fetches the rules
                for command in commands:
                    tap.guard.check_packed(command.name, command.data)
            tap.add(commands=len(commands))
        conn.send_packed_command([command.data for command in commands])
        replies: list[Any] = []
        error: redis.exceptions.ResponseError | None = None
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.exceptions.ResponseError as exc:  # parsed: the connection is still in step
                error = error or exc
                replies.append(exc)
        if error is not None:
            raise error
        return replies
    finally:
        pool.release(conn)
