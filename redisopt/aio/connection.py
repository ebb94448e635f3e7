"""asyncio twins of the instrumented connections: the same Tap counts, the same guard.

``redis.asyncio`` connections send a command as ``send_command`` → ``pack_command`` →
``send_packed_command`` and a pipeline as one ``send_packed_command(pack_commands(...))``, exactly
as the sync ones do, so the counting rules of ``redisopt.connection`` carry over unchanged: one
write burst is one round trip, one packed command is one command, the handshake is apart.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.asyncio

from redisopt import connection as sync
from redisopt.connection import PackedCommand, Tap


class _AsyncInstrumented:
    """Mixin over a redis.asyncio connection class; needs ``tap=`` among the pool's kwargs."""

    def __init__(self, *args: Any, tap: Tap, **kwargs: Any) -> None:
        self.tap = tap
        self._in_handshake = False
        super().__init__(*args, **kwargs)

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        self._in_handshake = True
        try:
            await super().on_connect_check_health(check_health)  # type: ignore[misc]
            guard = self.tap.guard
            if guard is not None and guard.rules is None:  # once per server: not counted
                started = time.perf_counter()
                await super().send_command("COMMAND")  # type: ignore[misc]
                try:
                    guard.accept(await self.read_response(), started)  # type: ignore[attr-defined]
                except redis.exceptions.ResponseError as exc:
                    guard.accept(exc, started)
        finally:
            self._in_handshake = False
        self.tap.add(connects=1)

    async def _check(self, commands: Iterable[Sequence[Any]]) -> None:
        """Refuse before anything is sent, on the argument vector the packer will produce."""
        guard = self.tap.guard
        if guard.rules is None:  # type: ignore[union-attr]
            await self.connect()  # type: ignore[attr-defined]  # the handshake fetches the rules
        for args in commands:
            guard.check_call(args, self.pack_command)  # type: ignore[union-attr,attr-defined]

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        if not self._in_handshake:
            if self.tap.guard is not None:
                await self._check([args])
            self.tap.add(commands=1)
        await super().send_command(*args, **kwargs)  # type: ignore[misc]

    def pack_commands(self, commands: Iterable[Sequence[Any]]) -> list[bytes]:
        commands = list(commands)
        if self.tap.guard is not None:
            # The rules are fetched by the handshake, which an async pipeline always runs first.
            for args in commands:
                self.tap.guard.check_call(args, self.pack_command)  # type: ignore[attr-defined]
        self.tap.add(commands=len(commands))
        return super().pack_commands(commands)  # type: ignore[misc]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._in_handshake:
            self.tap.add(round_trips=1)
        await super().send_packed_command(command, check_health)  # type: ignore[misc]


class TCPConnection(_AsyncInstrumented, redis.asyncio.Connection):
    """Plain TCP asyncio connection with counters and guard."""


class SSLConnection(_AsyncInstrumented, redis.asyncio.SSLConnection):
    """TLS asyncio connection (``rediss://``) with counters and guard."""


class UnixConnection(_AsyncInstrumented, redis.asyncio.UnixDomainSocketConnection):
    """Unix-socket asyncio connection (``unix://``) with counters and guard."""


# The async twin of each sync class a Server may name.
ASYNC_CLASSES: dict[type, type] = {
    sync.TCPConnection: TCPConnection,
    sync.SSLConnection: SSLConnection,
    sync.UnixConnection: UnixConnection,
}


async def send_packed(client: redis.asyncio.Redis, commands: Sequence[PackedCommand]) -> list[Any]:
    """``redisopt.connection.send_packed`` on an asyncio client: ``commands`` in one write (one round
    trip), each counted and (on a user's server) checked by the guard before any byte is sent; every
    reply read, then the first error reply raised. A connection left out of step (cancelled between
    the write and its replies) is dropped, never handed to the next caller."""
    pool = client.connection_pool
    conn = await pool.get_connection()  # connected: the handshake has fetched the guard's rules
    try:
        tap = getattr(conn, "tap", None)
        if isinstance(tap, Tap):
            if tap.guard is not None:
                for command in commands:
                    tap.guard.check_packed(command.name, command.data)
            tap.add(commands=len(commands))
        replies: list[Any] = []
        try:
            await conn.send_packed_command([command.data for command in commands])
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except redis.exceptions.ResponseError as exc:  # parsed: the connection is still in step
                    replies.append(exc)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
    finally:
        await pool.release(conn)
    error = next((r for r in replies if isinstance(r, redis.exceptions.ResponseError)), None)
    if error is not None:
        raise error
    return replies
