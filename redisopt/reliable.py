"""A reliable queue on Lists (8장, mistake 18): a job survives the consumer that dies holding it.

The article's queue pops with RPOP: the job lives only in the consumer's memory from then on, so
a consumer killed mid-job loses it. Here ``claim`` moves the job's id (LMOVE, or BLMOVE to wait)
into the consumer's own processing list and records a visibility deadline; ``ack`` removes it.
A job whose deadline passes (its consumer died or stalled) is taken over by the next ``claim`` or
put back by ``reap``; one delivered ``max_deliveries`` times goes to a dead-letter list instead
of crashing workers forever. That is at-least-once delivery: a consumer killed after its work but
before its ack makes the job run twice, so the work itself must be idempotent (a set of done ids).

Layout, every key inside one hash tag ``{name}`` so each script's keys share a cluster slot:
``…:ready`` (List of ids), ``…:processing:<consumer>`` (List per consumer), ``…:jobs`` (Hash
id → payload), ``…:deliveries`` (Hash id → count), ``…:deadlines`` (ZSet id → ms, server clock),
``…:owners`` (Hash id → consumer), ``…:consumers`` (Set), ``…:dead`` (List of ids), ``…:seq``.
Ids, not payloads, move between lists, so a payload is stored once and a job has a name.

Scripts build other consumers' processing keys from the ``…:processing:`` prefix they are given
(a consumer that died is known only by name); those keys carry the same hash tag, so a cluster
still serves them from the script's slot. The one crash window outside a script — between BLMOVE
and the script that records the deadline — leaves an id in a processing list without a deadline;
``reap`` gives such ids a deadline, so they too come back.

Non-I/O parts (keys, scripts, arguments, replies) are ``ReliableCore``, shared with the asyncio
twin ``redisopt.aio.ReliableQueue``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import redis
from redis.client import NEVER_DECODE
from redis.commands.core import Script

from redisopt.bulk import CHUNK, chunked
from redisopt.codecs import Codec
from redisopt.connection import PackedCommand, pack_command, send_packed
from redisopt.errors import check_timeout
from redisopt.keyspace import KeySpace
from redisopt.queue import DEFAULT_SPACE, MIN_SLICE, WINDOW, QueueCore, wait_slices
from redisopt.scripts import unbound_script

__all__ = ["Job", "ReliableCore", "ReliableQueue", "run_script"]

RAW = {NEVER_DECODE: True}
REAP_LIMIT = 1000  # overdue jobs per reap script: bounds how long one script holds the server

# --------------------------------------------------------------------------- scripts

# Shared head of the claim scripts. KEYS[1] ready, [2] jobs, [3] deliveries, [4] deadlines,
# [5] owners, [6] dead, [7] consumers, [8] our processing list, [9] the processing-key prefix;
# ARGV[1] consumer, [2] visibility ms, [3] max deliveries.
_CLAIM_HEAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local function accept(id)
  local payload = redis.call('HGET', KEYS[2], id)
  if not payload then  -- its data is gone (the queue was cleared meanwhile): forget the id
    redis.call('LREM', KEYS[8], 1, id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    return
  end
  local d = redis.call('HINCRBY', KEYS[3], id, 1)
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), id)
  redis.call('HSET', KEYS[5], id, ARGV[1])
  out[#out + 1] = id
  out[#out + 1] = payload
  out[#out + 1] = d
end
redis.call('SADD', KEYS[7], ARGV[1])
"""

# ARGV[4] how many. Jobs stalled past their deadline first (taken from their owner's list, or
# dead-lettered once delivered max-deliveries times), then from the ready list with LMOVE.
# Returns a flat array id, payload, deliveries, ...
CLAIM_LUA = _CLAIM_HEAD + """
local n = tonumber(ARGV[4])
local stalled = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, n)
for _, id in ipairs(stalled) do
  local owner = redis.call('HGET', KEYS[5], id)
  if owner then redis.call('LREM', KEYS[9] .. owner, 1, id) end
  if tonumber(redis.call('HGET', KEYS[3], id) or '0') >= tonumber(ARGV[3]) then
    redis.call('ZREM', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('RPUSH', KEYS[6], id)
  else
    redis.call('RPUSH', KEYS[8], id)
    accept(id)
  end
end
while #out < 3 * n do
  local id = redis.call('LMOVE', KEYS[1], KEYS[8], 'LEFT', 'RIGHT')
  if not id then break end
  accept(id)
end
return out
"""

# ARGV[4] the id BLMOVE just moved into our list. Returns id, payload, deliveries, or an empty
# array when the id is no longer ours (reap returned it meanwhile).
ACCEPT_LUA = _CLAIM_HEAD + """
if redis.call('LPOS', KEYS[8], ARGV[4]) then accept(ARGV[4]) end
return out
"""

# KEYS[1] jobs, [2] deliveries, [3] deadlines, [4] owners, [5] our processing list; ARGV[1] id.
# Returns 1 when the job was ours and is now gone, 0 when it was not in our list (taken over).
ACK_LUA = """
if redis.call('LREM', KEYS[5], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""

# KEYS[1] ready, [2] deliveries, [3] deadlines, [4] owners, [5] dead, [6] consumers,
# [7] the processing-key prefix; ARGV[1] visibility ms, [2] max deliveries, [3] limit.
# Ids in a processing list with no deadline (their consumer died between BLMOVE and the claim
# script) get one; overdue ids go back to the front of ready in deadline order, or to dead
# after max deliveries.
# Returns how many overdue jobs were moved.
REAP_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, c in ipairs(redis.call('SMEMBERS', KEYS[6])) do
  local ids = redis.call('LRANGE', KEYS[7] .. c, 0, -1)
  if #ids == 0 then redis.call('SREM', KEYS[6], c) end
  for _, id in ipairs(ids) do
    if not redis.call('ZSCORE', KEYS[3], id) then
      redis.call('ZADD', KEYS[3], now + tonumber(ARGV[1]), id)
      redis.call('HSET', KEYS[4], id, c)
    end
  end
end
local overdue = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local back = {}
for _, id in ipairs(overdue) do
  local owner = redis.call('HGET', KEYS[4], id)
  if owner then redis.call('LREM', KEYS[7] .. owner, 1, id) end
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  if tonumber(redis.call('HGET', KEYS[2], id) or '0') >= tonumber(ARGV[2]) then
    redis.call('RPUSH', KEYS[5], id)
  else
    back[#back + 1] = id
  end
end
for i = #back, 1, -1 do
  redis.call('LPUSH', KEYS[1], back[i])
end
return #overdue
"""

# KEYS[1] ready, [2] jobs, [3] seq; ARGV payloads. Returns the first new id (ids are consecutive).
PUT_LUA = """
local last = redis.call('INCRBY', KEYS[3], #ARGV)
local first = last - #ARGV + 1
local ids = {}
for i, payload in ipairs(ARGV) do
  local id = first + i - 1
  redis.call('HSET', KEYS[2], id, payload)
  ids[i] = id
end
redis.call('RPUSH', KEYS[1], unpack(ids))
return first
"""

SCRIPTS = {"claim": CLAIM_LUA, "accept": ACCEPT_LUA, "ack": ACK_LUA, "reap": REAP_LUA, "put": PUT_LUA}


# --------------------------------------------------------------------------- without I/O


@dataclass(frozen=True)
class Job:
    """A claimed job: ``id`` names it, ``item`` is the decoded payload, ``deliveries`` counts this
    one (1 the first time), ``consumer`` is who holds it (empty for a dead letter)."""

    id: str
    item: Any
    deliveries: int
    consumer: str = ""


def _ms(seconds: float) -> int:
    return max(1, int(round(seconds * 1000)))


def check_queue_args(visibility: float, max_deliveries: int) -> None:
    if isinstance(visibility, bool) or not isinstance(visibility, (int, float)) or not visibility > 0:
        raise ValueError(f"visibility must be a number of seconds > 0, not {visibility!r}")
    if isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int) or max_deliveries < 1:
        raise ValueError(f"max_deliveries must be an int >= 1, not {max_deliveries!r}")


def check_consumer(consumer: str) -> str:
    if not isinstance(consumer, str) or not consumer:
        raise ValueError(f"consumer must be a non-empty name, not {consumer!r}")
    return consumer


def check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, not {n!r}")
    return n


def tagged_base(kind: str, name: str, keyspace: KeySpace | None) -> str:
    """``<prefix>:<kind>:{<name>}``: the name is the hash tag every key of the queue shares."""
    if not name or "{" in name or "}" in name:
        raise ValueError(f"queue name {name!r} must be non-empty and without braces (it becomes the hash tag)")
    return f"{(keyspace or DEFAULT_SPACE).key(kind)}:{{{name}}}"


def claim_slices(timeout: float | None, socket_timeout: float | None, visibility: float) -> Iterator[float]:
    """The blocking waits of one claim: ``wait_slices`` cut to ``visibility``, so a job stalled
    meanwhile is taken over within about one visibility period."""
    for wait in wait_slices(timeout, socket_timeout):
        yield max(MIN_SLICE, min(wait, visibility))


def note_wait_failure(exc: BaseException, queue: Any, consumer: str) -> None:
    """Name the queue and consumer on an error raised while a claim waited (the server went away)."""
    exc.add_note(f"while consumer {consumer!r} waited in claim() on {queue!r}: the connection to the server "
                 "failed; jobs it had claimed come back after their visibility timeout if the server kept its data")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ReliableCore(QueueCore):
    """What a ReliableQueue is besides I/O: checks, keys, each script's keys and arguments, replies."""

    _scripts: ClassVar[dict[str, Script]] = {}

    def __init__(self, client: Any, name: str, visibility: float = 30.0, max_deliveries: int = 5, *,
                 codec: str | Codec = "orjson", keyspace: KeySpace | None = None, chunk: int = CHUNK,
                 window: int = WINDOW) -> None:
        super().__init__(client, name, codec, keyspace=keyspace, chunk=chunk, window=window)
        check_queue_args(visibility, max_deliveries)
        self.visibility, self.max_deliveries = float(visibility), max_deliveries
        self.base = tagged_base("rq", name, keyspace)
        self.key = f"{self.base}:ready"
        self.jobs_key, self.deliveries_key = f"{self.base}:jobs", f"{self.base}:deliveries"
        self.deadlines_key, self.owners_key = f"{self.base}:deadlines", f"{self.base}:owners"
        self.dead_key, self.consumers_key = f"{self.base}:dead", f"{self.base}:consumers"
        self.seq_key, self.processing_prefix = f"{self.base}:seq", f"{self.base}:processing:"
        if not ReliableCore._scripts:
            ReliableCore._scripts = {k: unbound_script(v) for k, v in SCRIPTS.items()}

    def processing_key(self, consumer: str) -> str:
        return self.processing_prefix + check_consumer(consumer)

    def _claim_call(self, step: str, consumer: str, last: Any) -> tuple[Script, list[str], list[Any]]:
        """The claim (``last`` = how many) or accept (``last`` = the moved id) script's call."""
        keys = [self.key, self.jobs_key, self.deliveries_key, self.deadlines_key, self.owners_key,
                self.dead_key, self.consumers_key, self.processing_key(consumer), self.processing_prefix]
        return self._scripts[step], keys, [consumer, _ms(self.visibility), self.max_deliveries, last]

    def _ack_call(self, job: Job) -> tuple[Script, list[str], list[Any]]:
        keys = [self.jobs_key, self.deliveries_key, self.deadlines_key, self.owners_key,
                self.processing_key(job.consumer)]
        return self._scripts["ack"], keys, [job.id]

    def _reap_call(self) -> tuple[Script, list[str], list[Any]]:
        keys = [self.key, self.deliveries_key, self.deadlines_key, self.owners_key, self.dead_key,
                self.consumers_key, self.processing_prefix]
        return self._scripts["reap"], keys, [_ms(self.visibility), self.max_deliveries, REAP_LIMIT]

    def _jobs(self, consumer: str, reply: list[Any]) -> list[Job]:
        """Jobs from a claim script's flat ``id, payload, deliveries, …`` reply."""
        return [Job(_text(reply[i]), self.codec.decode(reply[i + 1]), int(reply[i + 2]), consumer)
                for i in range(0, len(reply), 3)]

    def _move_command(self, consumer: str, wait: float) -> tuple[Any, ...]:
        return ("BLMOVE", self.key, self.processing_key(consumer), "LEFT", "RIGHT", wait)

    def _put_commands(self, items: Iterable[Any]) -> tuple[list[PackedCommand], int]:
        """Every chunk as one EVALSHA of the put script, packed before any is sent (as
        ``WorkQueue.put_many`` packs its RPUSH): a bad item raises EncodeError naming it first."""
        script = self._scripts["put"]
        head = (b"EVALSHA", script.sha.encode(), b"3", self.key.encode(), self.jobs_key.encode(),
                self.seq_key.encode())
        parts, done = self._encode_all(items)
        return [pack_command(head, part) for part in parts], done

    def _dead_jobs(self, ids: list[Any], payloads: list[Any], counts: list[Any]) -> list[Job]:
        return [Job(_text(i), self._decode(p), int(c or 0)) for i, p, c in zip(ids, payloads, counts, strict=True)
                if p is not None]

    def _all_keys(self, consumers: Iterable[Any]) -> list[str]:
        return [self.key, self.jobs_key, self.deliveries_key, self.deadlines_key, self.owners_key, self.dead_key,
                self.consumers_key, self.seq_key, *(self.processing_prefix + _text(c) for c in consumers)]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.base!r}, visibility={self.visibility}, "
                f"max_deliveries={self.max_deliveries})")


# --------------------------------------------------------------------------- the queue


def run_script(client: redis.Redis, script: Script, keys: list[str], args: list[Any]) -> Any:
    """EVALSHA with raw (undecoded) replies; SCRIPT LOAD and again on NOSCRIPT (a restarted server)."""
    try:
        return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, **RAW)
    except redis.exceptions.NoScriptError:
        client.script_load(script.script)
        return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, **RAW)


class ReliableQueue(ReliableCore):
    """``ReliableQueue(client, name, visibility=30.0, max_deliveries=5)``: ``put``/``put_many``,
    ``claim(consumer, timeout)``, ``claim_many(consumer, n)``, ``ack(job)``, ``reap()``,
    ``dead_letters()``. ``None`` is not an item. A consumer is a name (e.g. host-pid): one
    processing list each; a restarted worker may take a new name, its old jobs come back anyway.
    """

    def put(self, item: Any) -> str:
        """Append one item (one script call); returns its job id. A bad item raises before sending."""
        first = run_script(self.client, self._scripts["put"], [self.key, self.jobs_key, self.seq_key],
                           self._encode([item]))
        return str(int(first))

    def put_many(self, items: Iterable[Any]) -> int:
        """Append ``items`` in order, ``chunk`` per script call and ``window`` calls per round trip;
        every item is encoded first, so a bad one raises (``.sent`` 0) with the queue untouched."""
        try:
            commands, done = self._put_commands(items)
        except TypeError as exc:
            exc.sent = 0  # type: ignore[attr-defined]
            raise
        self.client.script_load(self._scripts["put"].script)  # raw EVALSHA cannot reload by itself
        for window in chunked(commands, self.window):
            send_packed(self.client, window, self.key)
        return done

    def claim_many(self, consumer: str, n: int) -> list[Job]:
        """Up to ``n`` jobs in one round trip (one script), stalled ones first; never waits."""
        script, keys, args = self._claim_call("claim", consumer, check_count(n))
        return self._jobs(consumer, run_script(self.client, script, keys, args))

    def claim(self, consumer: str, timeout: float | None = None) -> Job | None:
        """One job, or None once ``timeout`` ran out (None: wait forever, 0: do not wait).

        Waits on the server (BLMOVE in slices under the socket timeout and at most ``visibility``
        long, re-checking stalled jobs between slices), never by polling.
        """
        check_timeout(timeout)
        jobs = self.claim_many(consumer, 1)
        if jobs or timeout == 0:
            return jobs[0] if jobs else None
        for wait in claim_slices(timeout, self._socket_timeout(), self.visibility):
            try:
                moved = self.client.execute_command(*self._move_command(consumer, wait), **RAW)
            except redis.exceptions.ConnectionError as exc:
                note_wait_failure(exc, self, consumer)
                raise
            if moved is not None:
                script, keys, args = self._claim_call("accept", consumer, _text(moved))
                jobs = self._jobs(consumer, run_script(self.client, script, keys, args))
            else:
                jobs = self.claim_many(consumer, 1)
            if jobs:
                return jobs[0]
        return None

    def ack(self, job: Job) -> bool:
        """Done with ``job``: True if it was still ours; False if it was taken over or reaped
        meanwhile (then it runs again elsewhere: keep the work idempotent)."""
        script, keys, args = self._ack_call(job)
        return bool(run_script(self.client, script, keys, args))

    def reap(self) -> int:
        """Return every overdue job to the front of the queue (or to the dead letters once delivered
        ``max_deliveries`` times); how many moved. Run it periodically from any process."""
        script, keys, args = self._reap_call()
        moved = total = int(run_script(self.client, script, keys, args))
        while moved == REAP_LIMIT:
            total += (moved := int(run_script(self.client, script, keys, args)))
        return total

    def dead_letters(self) -> list[Job]:
        """Jobs given up after ``max_deliveries`` deliveries, oldest first (they stay until cleared)."""
        ids = self.client.execute_command("LRANGE", self.dead_key, 0, -1, **RAW)
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command("HMGET", self.jobs_key, *ids, **RAW)
        pipe.execute_command("HMGET", self.deliveries_key, *ids, **RAW)
        payloads, counts = pipe.execute()
        return self._dead_jobs(ids, payloads, counts)

    def in_flight(self) -> int:
        """Jobs claimed and not yet acked (with a deadline)."""
        return int(self.client.zcard(self.deadlines_key))

    def __len__(self) -> int:
        return int(self.client.llen(self.key))

    def clear(self) -> int:
        """Drop every key of the queue (UNLINK), processing lists included; how many existed."""
        return int(self.client.unlink(*self._all_keys(self.client.smembers(self.consumers_key))))
