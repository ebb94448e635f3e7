"""The asyncio twin of ``redisopt.StreamQueue`` (8장): same stream, group, scripts and replies.

Everything but the sending is ``redisopt.streamqueue.StreamCore``, so the two cannot drift.
Differences forced by asyncio: ``await q.length()`` where the sync queue has ``len(q)``, and the
group is created by the first awaited call (a constructor cannot wait).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis.asyncio
from redis.commands.core import Script

from redisopt.aio.connection import send_packed
from redisopt.aio.reliable import run_script
from redisopt.errors import check_timeout
from redisopt.reliable import RAW, REAP_LIMIT, Job, _text, claim_slices, note_wait_failure
from redisopt.streamqueue import StreamCore, _no_group

__all__ = ["StreamQueue"]


class StreamQueue(StreamCore):
    """``StreamQueue(client, stream, group, visibility=30.0, max_deliveries=5)`` on a
    ``redis.asyncio`` client: ``await`` put, put_many, claim, claim_many, ack, reap, dead_letters, length."""

    async def ensure_group(self) -> None:
        """XGROUP CREATE … MKSTREAM, idempotent (BUSYGROUP means it exists)."""
        try:
            await self.client.execute_command(*self._group_command())
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _run(self, call: tuple[Script, list[str], list[Any]]) -> Any:
        if not self._group_ready:
            await self.ensure_group()
        try:
            return await run_script(self.client, *call)
        except redis.exceptions.ResponseError as exc:
            if not _no_group(exc):
                raise
            await self.ensure_group()
            return await run_script(self.client, *call)

    async def put(self, item: Any) -> str:
        """Append one item (one XADD); returns its entry ID. A bad item raises before sending."""
        return _text(await self.client.execute_command("XADD", self.key, "*", "d", self._encode([item])[0], **RAW))

    async def put_many(self, items: Iterable[Any]) -> int:
        """As ``redisopt.StreamQueue.put_many``: all encoded first, ``chunk`` XADDs per round trip."""
        try:
            parts, done = self._put_commands(items)
        except TypeError as exc:
            exc.sent = 0  # type: ignore[attr-defined]
            raise
        for part in parts:
            await send_packed(self.client, part)
        return done

    async def claim_many(self, consumer: str, n: int) -> list[Job]:
        """Up to ``n`` jobs in one round trip (one script), stalled ones first; never waits."""
        return self._jobs(consumer, await self._run(self._claim_call(consumer, n)))

    async def claim(self, consumer: str, timeout: float | None = None) -> Job | None:
        """One job, or None once ``timeout`` ran out (None: wait forever, 0: do not wait)."""
        check_timeout(timeout)
        jobs = await self.claim_many(consumer, 1)
        if jobs or timeout == 0:
            return jobs[0] if jobs else None
        for wait in claim_slices(timeout, self._socket_timeout(), self.visibility):
            try:
                reply = await self.client.execute_command(*self._read_command(consumer, wait), **RAW)
            except redis.exceptions.ResponseError as exc:
                if not _no_group(exc):
                    raise
                await self.ensure_group()
                continue
            except redis.exceptions.ConnectionError as exc:
                note_wait_failure(exc, self, consumer)
                raise
            jobs = self._read_jobs(consumer, reply) or await self.claim_many(consumer, 1)
            if jobs:
                return jobs[0]
        return None

    async def ack(self, job: Job) -> bool:
        """XACK + XDEL: True if the entry was pending, False if acked already or requeued."""
        return bool(await self._run(self._ack_call(job)))

    async def reap(self) -> int:
        """Requeue entries idle past ``visibility`` (or dead-letter them); how many moved."""
        moved = total = int(await self._run(self._reap_call()))
        while moved == REAP_LIMIT:
            total += (moved := int(await self._run(self._reap_call())))
        return total

    async def dead_letters(self) -> list[Job]:
        """Entries given up after ``max_deliveries`` deliveries, oldest first."""
        return self._dead_jobs(await self.client.execute_command("XRANGE", self.dead_key, "-", "+", **RAW) or [])

    async def in_flight(self) -> int:
        """Entries delivered and not yet acked (the group's PEL)."""
        if not self._group_ready:
            await self.ensure_group()
        return int((await self.client.xpending(self.key, self.group))["pending"])

    async def length(self) -> int:
        """Entries waiting to be read: the sync queue's ``len(q)``."""
        if not self._group_ready:
            await self.ensure_group()
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.key)
        pipe.xpending(self.key, self.group)
        length, pending = await pipe.execute()
        return int(length) - int(pending["pending"])

    async def clear(self) -> int:
        """Drop the stream (and its group) and the dead letters (UNLINK); how many keys existed."""
        self._group_ready = False
        return int(await self.client.unlink(self.key, self.dead_key))
