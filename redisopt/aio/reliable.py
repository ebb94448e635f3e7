"""The asyncio twins of ``redisopt.ReliableQueue`` (8장): same keys, scripts, arguments and replies.

Everything but the sending is ``redisopt.reliable.ReliableCore`` (and its functions), so the two
cannot drift. Differences forced by asyncio: ``await q.length()`` where the sync queue has
``len(q)``, and every call is awaited. ``claim`` waits with BLMOVE on one pooled connection.

Cancelling a task inside ``claim`` loses nothing: a job BLMOVE moved in that instant sits in the
consumer's processing list without a deadline, and ``reap`` gives it one, so it comes back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis.asyncio
from redis.commands.core import Script

from redisopt.aio.connection import send_packed
from redisopt.bulk import chunked
from redisopt.errors import check_timeout
from redisopt.reliable import (
    RAW,
    REAP_LIMIT,
    Job,
    ReliableCore,
    _text,
    check_count,
    claim_slices,
    note_wait_failure,
)

__all__ = ["ReliableQueue", "run_script"]


async def run_script(client: redis.asyncio.Redis, script: Script, keys: list[str], args: list[Any]) -> Any:
    """EVALSHA with raw (undecoded) replies; SCRIPT LOAD and again on NOSCRIPT (a restarted server)."""
    try:
        return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, **RAW)
    except redis.exceptions.NoScriptError:
        await client.script_load(script.script)
        return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, **RAW)


class ReliableQueue(ReliableCore):
    """``ReliableQueue(client, name, visibility=30.0, max_deliveries=5)`` on a ``redis.asyncio``
    client: ``await`` put, put_many, claim, claim_many, ack, reap, dead_letters, length."""

    async def put(self, item: Any) -> str:
        """Append one item (one script call); returns its job id. A bad item raises before sending."""
        first = await run_script(self.client, self._scripts["put"], [self.key, self.jobs_key, self.seq_key],
                                 self._encode([item]))
        return str(int(first))

    async def put_many(self, items: Iterable[Any]) -> int:
        """As ``redisopt.ReliableQueue.put_many``: all encoded first, ``chunk`` per script call,
        ``window`` calls per round trip."""
        try:
            commands, done = self._put_commands(items)
        except TypeError as exc:
            exc.sent = 0  # type: ignore[attr-defined]
            raise
        await self.client.script_load(self._scripts["put"].script)
        for window in chunked(commands, self.window):
            await send_packed(self.client, window)
        return done

    async def claim_many(self, consumer: str, n: int) -> list[Job]:
        """Up to ``n`` jobs in one round trip (one script), stalled ones first; never waits."""
        script, keys, args = self._claim_call("claim", consumer, check_count(n))
        return self._jobs(consumer, await run_script(self.client, script, keys, args))

    async def claim(self, consumer: str, timeout: float | None = None) -> Job | None:
        """One job, or None once ``timeout`` ran out (None: wait forever, 0: do not wait)."""
        check_timeout(timeout)
        jobs = await self.claim_many(consumer, 1)
        if jobs or timeout == 0:
            return jobs[0] if jobs else None
        for wait in claim_slices(timeout, self._socket_timeout(), self.visibility):
            try:
                moved = await self.client.execute_command(*self._move_command(consumer, wait), **RAW)
            except redis.exceptions.ConnectionError as exc:
                note_wait_failure(exc, self, consumer)
                raise
            if moved is not None:
                script, keys, args = self._claim_call("accept", consumer, _text(moved))
                jobs = self._jobs(consumer, await run_script(self.client, script, keys, args))
            else:
                jobs = await self.claim_many(consumer, 1)
            if jobs:
                return jobs[0]
        return None

    async def ack(self, job: Job) -> bool:
        """Done with ``job``: True if it was still ours, False if taken over or reaped meanwhile."""
        script, keys, args = self._ack_call(job)
        return bool(await run_script(self.client, script, keys, args))

    async def reap(self) -> int:
        """Return overdue jobs to the queue (or the dead letters); how many moved."""
        script, keys, args = self._reap_call()
        moved = total = int(await run_script(self.client, script, keys, args))
        while moved == REAP_LIMIT:
            total += (moved := int(await run_script(self.client, script, keys, args)))
        return total

    async def dead_letters(self) -> list[Job]:
        """Jobs given up after ``max_deliveries`` deliveries, oldest first."""
        ids = await self.client.execute_command("LRANGE", self.dead_key, 0, -1, **RAW)
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command("HMGET", self.jobs_key, *ids, **RAW)
        pipe.execute_command("HMGET", self.deliveries_key, *ids, **RAW)
        payloads, counts = await pipe.execute()
        return self._dead_jobs(ids, payloads, counts)

    async def in_flight(self) -> int:
        """Jobs claimed and not yet acked."""
        return int(await self.client.zcard(self.deadlines_key))

    async def length(self) -> int:
        """Jobs waiting (one LLEN): the sync queue's ``len(q)``."""
        return int(await self.client.llen(self.key))

    async def clear(self) -> int:
        """Drop every key of the queue (UNLINK); how many existed."""
        return int(await self.client.unlink(*self._all_keys(await self.client.smembers(self.consumers_key))))
