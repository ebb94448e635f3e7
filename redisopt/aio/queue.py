"""The asyncio twin of ``redisopt.WorkQueue`` (chapter 2, 2장): same List, same codecs, same commands.

Everything but the sending is ``redisopt.queue.QueueCore`` and its functions (checks, key, encoding
by chunk and window, LPOP/BLPOP and their replies, the wait slices), so the two cannot drift.
Differences forced by asyncio: ``await q.length()`` where the sync queue has ``len(q)``, and every
call is awaited. ``get`` blocks on the server (BLPOP), never polls: a waiting task costs the event
loop nothing, but holds one pooled connection for as long as it waits.

``put_many`` packs its RPUSH commands with the sync queue's ``QueueCore._packed`` (every item
encoded before anything is sent, only wire bytes kept) and writes ``window`` of them per round trip
through ``redisopt.aio.connection.send_packed``, the asyncio counterpart of ``redisopt.connection.send_packed``
(counted, guarded, every reply read).

Cancelling a task inside ``get`` drops its connection; an item the server popped for it in that
instant is lost with the reply (as with any client that dies mid-BLPOP). Use BLMOVE to a
processing list where that matters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis.asyncio
from redis.client import NEVER_DECODE

from redisopt.aio.connection import send_packed
from redisopt.bulk import chunked
from redisopt.errors import check_timeout
from redisopt.queue import QueueCore, pop_command, pop_payload, wait_slices

__all__ = ["WorkQueue", "send_packed"]


class WorkQueue(QueueCore):
    """``WorkQueue(client, name, codec="orjson")`` on a ``redis.asyncio`` client: ``await q.put(item)``,
    ``await q.put_many(items)``, ``await q.get(timeout)``, ``await q.length()``.

    ``None`` is not an item, so ``get`` → None means "timed out". ``pipeline=`` on writes joins a
    caller's ``redis.asyncio`` pipeline (MULTI or not), which the caller executes.
    """

    # ------------------------------------------------------------------ writes

    async def put(self, item: Any, pipeline: redis.asyncio.client.Pipeline | None = None) -> None:
        """Append one item (one RPUSH); encoded first, so a bad item raises before anything is sent."""
        await self.do_push(self._encode([item]), pipeline)

    async def put_many(self, items: Iterable[Any], pipeline: redis.asyncio.client.Pipeline | None = None) -> int:
        """Append ``items`` in order with variadic RPUSH of ``chunk`` values; returns how many.

        As ``redisopt.WorkQueue.put_many``: every item is encoded before anything is sent, so a bad
        item raises EncodeError (a TypeError naming it, ``.sent`` 0) with the queue untouched; then
        ``window`` packed commands per round trip, every reply checked. With a caller's pipeline
        the chunks join it as ordinary RPUSH, and the caller executes it.
        """
        if pipeline is not None:
            parts, done = self._encode_all(items)
            for part in parts:
                await self.do_push(part, pipeline)
            return done
        try:
            commands, done = self._packed(items)
        except TypeError as exc:
            exc.sent = 0  # type: ignore[attr-defined]
            raise
        for window in chunked(commands, self.window):
            await send_packed(self.client, window)
        return done

    async def do_push(self, payloads: list[bytes], pipeline: redis.asyncio.client.Pipeline | None = None) -> None:
        """One RPUSH of encoded payloads, queued on ``pipeline`` or sent at once."""
        # A pipeline queues without I/O and returns itself, which is awaitable (immediate under WATCH).
        await (pipeline if pipeline is not None else self.client).rpush(self.key, *payloads)

    # ------------------------------------------------------------------ reads

    async def get(self, timeout: float | None = None) -> Any:
        """The oldest item, or None if ``timeout`` ran out first.

        ``None`` waits without limit, ``0`` does not wait (LPOP), ``t`` waits up to t seconds
        (BLPOP, in slices shorter than the client's socket timeout; never less than t).
        """
        check_timeout(timeout)
        if timeout == 0:
            return self._decode(await self.do_pop(None))
        for wait in wait_slices(timeout, self._socket_timeout()):
            payload = await self.do_pop(wait)
            if payload is not None:
                return self._decode(payload)
        return None

    async def do_pop(self, wait: float | None) -> bytes | None:
        """One LPOP (``wait`` None) or one BLPOP of ``wait`` seconds; the raw payload, undecoded."""
        reply = await self.client.execute_command(*pop_command(self.key, wait), **{NEVER_DECODE: True})
        return pop_payload(wait, reply)

    async def length(self) -> int:
        """How many items wait (one LLEN): the sync queue's ``len(q)``."""
        return int(await self.client.llen(self.key))

    async def clear(self) -> int:
        """Drop every item (UNLINK); returns 1 if the queue existed."""
        return int(await self.client.unlink(self.key))
