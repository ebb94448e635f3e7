"""A reliable queue on a Stream with a consumer group (8장, mistake 18's other fix).

XREADGROUP hands an entry to one consumer and keeps it in the group's pending entries list (PEL)
until XACK, so a consumer killed mid-job loses nothing: ``claim`` first takes over entries idle
longer than ``visibility`` (XAUTOCLAIM), then reads new ones (``>``). The PEL counts deliveries;
an entry delivered ``max_deliveries`` times and stalled again goes to the dead-letter stream.

Trimming policy: ``ack`` is XACK + XDEL in one script, so the stream holds only entries not yet
acknowledged and its memory follows the backlog, not the history. MAXLEN/MINID trimming is not
used: it cuts by position or age, and would drop entries no consumer has read yet.

``reap`` puts overdue entries back at the tail as new entries (XADD with the deliveries so far in
field ``n``, then XACK + XDEL of the old one), or dead-letters them: the stream twin of the List
queue's reaper, found with XPENDING IDLE. A requeued job gets a new entry ID.

Entries carry ``d`` (payload) and ``n`` (deliveries before the last requeue). Both keys of a
queue share the hash tag ``{stream}``. Non-I/O parts are ``StreamCore``, shared with
``redisopt.aio.StreamQueue``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import redis
from redis.commands.core import Script

from redisopt.bulk import CHUNK
from redisopt.codecs import Codec
from redisopt.connection import PackedCommand, pack_command, send_packed
from redisopt.errors import check_timeout
from redisopt.keyspace import KeySpace
from redisopt.queue import WINDOW, QueueCore
from redisopt.reliable import (
    RAW,
    REAP_LIMIT,
    Job,
    _ms,
    _text,
    check_consumer,
    check_count,
    check_queue_args,
    claim_slices,
    note_wait_failure,
    run_script,
    tagged_base,
)
from redisopt.scripts import unbound_script

__all__ = ["StreamCore", "StreamQueue"]

_FIELD = """
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
"""

# KEYS[1] stream, [2] dead stream; ARGV[1] group, [2] consumer, [3] how many, [4] visibility ms,
# [5] max deliveries. Entries idle past visibility first (XAUTOCLAIM: their delivery count grows
# by one; past max deliveries they go to dead instead), then new ones (XREADGROUP >).
# Returns a flat array id, payload, deliveries, ...
CLAIM_LUA = _FIELD + """
local n = tonumber(ARGV[3])
local out = {}
local cursor = '0-0'
for _ = 1, 10 do
  local left = n - #out / 3
  if left <= 0 then break end
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[4], cursor, 'COUNT', left)
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    local id, fields = e[1], e[2]
    if fields then
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
      local d = tonumber(p[1][4]) + tonumber(field(fields, 'n') or '0')
      if d > tonumber(ARGV[5]) then
        redis.call('XADD', KEYS[2], '*', 'id', id, 'd', field(fields, 'd'), 'n', d - 1)
        redis.call('XACK', KEYS[1], ARGV[1], id)
        redis.call('XDEL', KEYS[1], id)
      else
        out[#out + 1] = id
        out[#out + 1] = field(fields, 'd')
        out[#out + 1] = d
      end
    else
      redis.call('XACK', KEYS[1], ARGV[1], id)
    end
  end
  if cursor == '0-0' then break end
end
local left = n - #out / 3
if left > 0 then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', left, 'STREAMS', KEYS[1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do
      out[#out + 1] = e[1]
      out[#out + 1] = field(e[2], 'd')
      out[#out + 1] = 1 + tonumber(field(e[2], 'n') or '0')
    end
  end
end
return out
"""

# KEYS[1] stream; ARGV[1] group, [2] entry id. Returns 1 if it was pending (now acked and
# deleted), 0 if not (already acked, or requeued by reap).
ACK_LUA = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 then redis.call('XDEL', KEYS[1], ARGV[2]) end
return acked
"""

# KEYS[1] stream, [2] dead stream; ARGV[1] group, [2] visibility ms, [3] max deliveries, [4] limit.
# Then forgets consumers holding nothing and idle past visibility (dead workers' names would pile
# up in the group otherwise; a live one is made again by its next XREADGROUP).
# Returns how many overdue entries were requeued or dead-lettered.
REAP_LUA = _FIELD + """
local moved = 0
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[2], '-', '+', ARGV[4])) do
  local id = p[1]
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if #e > 0 then
    local fields = e[1][2]
    local d = tonumber(p[4]) + tonumber(field(fields, 'n') or '0')
    if d >= tonumber(ARGV[3]) then
      redis.call('XADD', KEYS[2], '*', 'id', id, 'd', field(fields, 'd'), 'n', d)
    else
      redis.call('XADD', KEYS[1], '*', 'd', field(fields, 'd'), 'n', d)
    end
    moved = moved + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], id)
  redis.call('XDEL', KEYS[1], id)
end
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  if tonumber(field(c, 'pending')) == 0 and tonumber(field(c, 'idle')) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], field(c, 'name'))
  end
end
return moved
"""

SCRIPTS = {"claim": CLAIM_LUA, "ack": ACK_LUA, "reap": REAP_LUA}


def _flat(fields: Any) -> list[Any]:
    """An entry's fields as ``[f, v, f, v, …]`` (RESP3 may give a map; a deleted entry gives nil)."""
    if isinstance(fields, dict):
        return [x for kv in fields.items() for x in kv]
    return list(fields or [])


def stream_entries(reply: Any) -> list[tuple[Any, list[Any]]]:
    """``[(id, flat fields)]`` from a raw XREADGROUP reply (RESP2 list or RESP3 map), or []."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [s[1] for s in reply]
    out: list[tuple[Any, list[Any]]] = []
    for entries in streams:
        for entry in entries or []:
            pairs = entry.items() if isinstance(entry, dict) else [(entry[0], entry[1])]
            out += [(i, _flat(f)) for i, f in pairs]
    return out


def _field(fields: list[Any], name: bytes) -> Any:
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None


class StreamCore(QueueCore):
    """What a StreamQueue is besides I/O: checks, keys, scripts' calls, commands and replies."""

    _scripts: ClassVar[dict[str, Script]] = {}

    def __init__(self, client: Any, stream: str, group: str, visibility: float = 30.0, max_deliveries: int = 5, *,
                 codec: str | Codec = "orjson", keyspace: KeySpace | None = None, chunk: int = CHUNK,
                 window: int = WINDOW) -> None:
        super().__init__(client, stream, codec, keyspace=keyspace, chunk=chunk, window=window)
        check_queue_args(visibility, max_deliveries)
        if not isinstance(group, str) or not group:
            raise ValueError(f"group must be a non-empty name, not {group!r}")
        self.group, self.visibility, self.max_deliveries = group, float(visibility), max_deliveries
        self.key = tagged_base("sq", stream, keyspace)
        self.dead_key = f"{self.key}:dead"
        self._group_ready = False
        if not StreamCore._scripts:
            StreamCore._scripts = {k: unbound_script(v) for k, v in SCRIPTS.items()}

    def _claim_call(self, consumer: str, n: int) -> tuple[Script, list[str], list[Any]]:
        args = [self.group, check_consumer(consumer), check_count(n), _ms(self.visibility), self.max_deliveries]
        return self._scripts["claim"], [self.key, self.dead_key], args

    def _ack_call(self, job: Job) -> tuple[Script, list[str], list[Any]]:
        return self._scripts["ack"], [self.key], [self.group, job.id]

    def _reap_call(self) -> tuple[Script, list[str], list[Any]]:
        return self._scripts["reap"], [self.key, self.dead_key], [self.group, _ms(self.visibility),
                                                                 self.max_deliveries, REAP_LIMIT]

    def _jobs(self, consumer: str, reply: list[Any]) -> list[Job]:
        return [Job(_text(reply[i]), self.codec.decode(reply[i + 1]), int(reply[i + 2]), consumer)
                for i in range(0, len(reply), 3)]

    def _read_command(self, consumer: str, wait: float) -> tuple[Any, ...]:
        return ("XREADGROUP", "GROUP", self.group, consumer, "COUNT", 1, "BLOCK", _ms(wait),
                "STREAMS", self.key, ">")

    def _read_jobs(self, consumer: str, reply: Any) -> list[Job]:
        return [Job(_text(i), self.codec.decode(_field(f, b"d")), 1 + int(_field(f, b"n") or 0), consumer)
                for i, f in stream_entries(reply) if f]

    def _group_command(self) -> tuple[Any, ...]:
        return ("XGROUP", "CREATE", self.key, self.group, "0", "MKSTREAM")

    def _put_commands(self, items: Iterable[Any]) -> tuple[list[list[PackedCommand]], int]:
        """One XADD per item, packed before any is sent, ``chunk`` commands per round trip."""
        head = (b"XADD", self.key.encode(), b"*", b"d")
        parts, done = self._encode_all(items)
        return [[pack_command(head, [payload]) for payload in part] for part in parts], done

    def _dead_jobs(self, entries: list[Any]) -> list[Job]:
        out = []
        for _, fields in entries:
            fields = _flat(fields)
            out.append(Job(_text(_field(fields, b"id")), self._decode(_field(fields, b"d")),
                           int(_field(fields, b"n") or 0)))
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.key!r}, group={self.group!r}, visibility={self.visibility}, "
                f"max_deliveries={self.max_deliveries})")


def _no_group(exc: redis.exceptions.ResponseError) -> bool:
    return "NOGROUP" in str(exc)


class StreamQueue(StreamCore):
    """``StreamQueue(client, stream, group, visibility=30.0, max_deliveries=5)``: the verbs of
    ``ReliableQueue`` over a consumer group. The group is created (MKSTREAM, from ID 0, so items put
    before it exist are delivered) on first use, and again if the stream was deleted."""

    def ensure_group(self) -> None:
        """XGROUP CREATE … MKSTREAM, idempotent (BUSYGROUP means it exists)."""
        try:
            self.client.execute_command(*self._group_command())
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _run(self, call: tuple[Script, list[str], list[Any]]) -> Any:
        if not self._group_ready:
            self.ensure_group()
        try:
            return run_script(self.client, *call)
        except redis.exceptions.ResponseError as exc:
            if not _no_group(exc):
                raise
            self.ensure_group()
            return run_script(self.client, *call)

    def put(self, item: Any) -> str:
        """Append one item (one XADD); returns its entry ID. A bad item raises before sending."""
        return _text(self.client.execute_command("XADD", self.key, "*", "d", self._encode([item])[0], **RAW))

    def put_many(self, items: Iterable[Any]) -> int:
        """Append ``items`` in order, one XADD each, ``chunk`` XADDs per round trip; every item is
        encoded first, so a bad one raises (``.sent`` 0) with the stream untouched."""
        try:
            parts, done = self._put_commands(items)
        except TypeError as exc:
            exc.sent = 0  # type: ignore[attr-defined]
            raise
        for part in parts:
            send_packed(self.client, part, self.key)
        return done

    def claim_many(self, consumer: str, n: int) -> list[Job]:
        """Up to ``n`` jobs in one round trip (one script), stalled ones first; never waits."""
        return self._jobs(consumer, self._run(self._claim_call(consumer, n)))

    def claim(self, consumer: str, timeout: float | None = None) -> Job | None:
        """One job, or None once ``timeout`` ran out (None: wait forever, 0: do not wait); waits with
        XREADGROUP BLOCK in slices (under the socket timeout, at most ``visibility``), never polls."""
        check_timeout(timeout)
        jobs = self.claim_many(consumer, 1)
        if jobs or timeout == 0:
            return jobs[0] if jobs else None
        for wait in claim_slices(timeout, self._socket_timeout(), self.visibility):
            try:
                reply = self.client.execute_command(*self._read_command(consumer, wait), **RAW)
            except redis.exceptions.ResponseError as exc:
                if not _no_group(exc):
                    raise
                self.ensure_group()
                continue
            except redis.exceptions.ConnectionError as exc:
                note_wait_failure(exc, self, consumer)
                raise
            jobs = self._read_jobs(consumer, reply) or self.claim_many(consumer, 1)
            if jobs:
                return jobs[0]
        return None

    def ack(self, job: Job) -> bool:
        """XACK + XDEL: True if the entry was pending, False if acked already or requeued by reap."""
        return bool(self._run(self._ack_call(job)))

    def reap(self) -> int:
        """Requeue every entry idle past ``visibility`` (or dead-letter it after ``max_deliveries``);
        how many moved. ``claim`` takes stalled entries over by itself; this frees them for anyone."""
        moved = total = int(self._run(self._reap_call()))
        while moved == REAP_LIMIT:
            total += (moved := int(self._run(self._reap_call())))
        return total

    def dead_letters(self) -> list[Job]:
        """Entries given up after ``max_deliveries`` deliveries, oldest first; ``id`` is the original entry ID."""
        return self._dead_jobs(self.client.execute_command("XRANGE", self.dead_key, "-", "+", **RAW) or [])

    def in_flight(self) -> int:
        """Entries delivered and not yet acked (the group's PEL)."""
        if not self._group_ready:
            self.ensure_group()
        return int(self.client.xpending(self.key, self.group)["pending"])

    def __len__(self) -> int:
        """Entries waiting to be read: the stream's length (acked entries are deleted) minus the PEL."""
        if not self._group_ready:
            self.ensure_group()
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.key)
        pipe.xpending(self.key, self.group)
        length, pending = pipe.execute()
        return int(length) - int(pending["pending"])

    def clear(self) -> int:
        """Drop the stream (and its group) and the dead letters (UNLINK); how many keys existed."""
        self._group_ready = False
        return int(self.client.unlink(self.key, self.dead_key))
