"""A work queue on a Redis List (chapter 2, 2장): FIFO, variadic bulk enqueue, blocking get.

``put`` is one RPUSH; ``put_many`` sends variadic RPUSH of ``chunk`` values per command, a window
of commands per round trip (mistake 9: one command with many values beats many commands; mistake 8:
no MULTI/EXEC when no atomicity is needed). ``get`` blocks on the server (BLPOP), never polls.

Also here, for the chapter to plot side by side as the queue grows (mistake 7): the article's
"update one request inside the queue" Lua, which scans the whole list (O(N) while the server does
nothing else), and the fix, a hash per request (O(1)).

Non-I/O parts (key names, Lua text, encoding, commands, reply decoding, the wait slices) are plain
functions, constants and ``QueueCore``, which the asyncio twin (``redisopt.aio.WorkQueue``) shares.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import redis
from redis.client import NEVER_DECODE

from redisopt.bulk import CHUNK, chunked  # values per RPUSH: amortises the command, keeps buffers small
from redisopt.codecs import Codec, encode_many, get_codec, json_dumps
from redisopt.connection import PackedCommand, pack_command, send_packed
from redisopt.errors import EncodeError, check_timeout
from redisopt.keyspace import WORKBOOK, KeySpace
from redisopt.scripts import unbound_script

# RPUSH commands per round trip when put_many sends its own. Encoded values no longer pile up per
# window (each is framed into its chunk's RESP bytes and dropped at once), so the window only trades
# round trips (at 1 ms RTT each costs ~1 µs per item of a 1,000 chunk) against bytes in flight (~0.4 MB).
WINDOW = 10
MAX_SLICE = 30.0  # seconds: longest single BLPOP, kept under redis-py's socket timeout (60 s here)
MIN_SLICE = 0.001  # seconds: BLPOP truncates to ms, and a 0 ms timeout would block forever

DEFAULT_SPACE = KeySpace(WORKBOOK)


def queue_key(name: str, keyspace: KeySpace | None = None) -> str:
    """``<prefix>:queue:<name>``: every queue key goes through a KeySpace (``redisopt:queue:<name>`` by default)."""
    return (keyspace or DEFAULT_SPACE).key("queue", name)


def wait_slices(timeout: float | None, socket_timeout: float | None) -> Iterator[float]:
    """The BLPOP timeouts to send for a wait of ``timeout`` seconds (None: forever), one per call.

    Each slice stays below the socket timeout (a read that outlasts it would raise TimeoutError),
    is at least MIN_SLICE, and the slices end only once the deadline has passed on our clock.
    """
    longest = MAX_SLICE if socket_timeout is None else max(MIN_SLICE, min(MAX_SLICE, socket_timeout / 2))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if deadline is None:
            yield longest
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        yield min(longest, max(MIN_SLICE, remaining))


class QueueCore:
    """What a WorkQueue does besides I/O, shared with its asyncio twin (``redisopt.aio.WorkQueue``):
    checks, key, codec, encoding and packing by chunk, commands and replies."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        codec: str | Codec = "orjson",
        *,
        keyspace: KeySpace | None = None,
        chunk: int = CHUNK,
        window: int = WINDOW,
    ) -> None:
        if chunk < 1 or window < 1:
            raise ValueError(f"chunk ({chunk!r}) and window ({window!r}) must be >= 1")
        self.client, self.name = client, name
        self.codec = get_codec(codec)
        self.key = queue_key(name, keyspace)
        self.chunk, self.window = chunk, window
        self._null = self.codec.encode(None)  # an encoded None, to refuse it after encoding (cheap)
        self._null_framed = b"$%d\r\n%b\r\n" % (len(self._null), self._null)  # the same, inside packed RPUSH

    def _encode(self, items: list[Any], offset: int = 0) -> list[bytes]:
        """Encode one chunk; errors name the item's position in the whole batch (``offset`` + i)."""
        try:
            payloads = encode_many(self.codec, items)
        except EncodeError as exc:
            exc.index = offset + (exc.index or 0)
            raise
        if self._null in payloads:
            raise TypeError(f"item {offset + payloads.index(self._null)} of the batch encodes like None "
                            "(None, or NaN/inf under orjson): None is not a queue item, get() returns it for a timeout")
        return payloads

    def _encode_all(self, items: Iterable[Any]) -> tuple[list[list[bytes]], int]:
        """Every chunk encoded before any joins a caller's pipeline; and how many items."""
        parts, done = [], 0
        for batch in chunked(items, self.chunk):
            parts.append(self._encode(batch, done))
            done += len(batch)
        return parts, done

    def _packed(self, items: Iterable[Any]) -> tuple[list[PackedCommand], int]:
        """Every chunk as one RPUSH packed to RESP, all before any is sent; and how many items.

        Each value is encoded, framed and dropped in turn (``pack_command``), so what is kept is
        the wire bytes (~1.1 × the payloads), not one ~4 KiB orjson buffer per item. A bad item
        raises EncodeError naming it (re-encoding that one chunk item by item to find it).
        """
        dumps = getattr(self.codec, "fast_encode", None) or self.codec.encode
        head = (b"RPUSH", self.key.encode())
        commands, done = [], 0
        for batch in chunked(items, self.chunk):
            try:
                command = pack_command(head, map(dumps, batch))
            except Exception:
                self._encode(batch, done)  # raises EncodeError (a TypeError) naming the item
                raise  # the codec failed on this chunk only (it should not): its own error
            # an encoded None frames as $4\r\nnull\r\n (orjson); found in the bytes, confirmed item by item
            if self._null_framed in command.data:
                self._encode(batch, done)
            commands.append(command)
            done += len(batch)
        return commands, done

    def _decode(self, payload: bytes | None) -> Any:
        return None if payload is None else self.codec.decode(payload)

    def _socket_timeout(self) -> float | None:
        return self.client.connection_pool.connection_kwargs.get("socket_timeout")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r}, codec={self.codec.name!r})"


def pop_command(key: str, wait: float | None) -> tuple[Any, ...]:
    """LPOP (``wait`` None: do not wait) or BLPOP of ``wait`` seconds."""
    return ("LPOP", key) if wait is None else ("BLPOP", key, wait)


def pop_payload(wait: float | None, reply: Any) -> bytes | None:
    """The raw payload from LPOP's value or BLPOP's ``[key, value]`` (None: nothing came)."""
    return reply if wait is None or reply is None else reply[1]


class WorkQueue(QueueCore):
    """A FIFO of codec-encoded items on one List. ``None`` is not an item, so ``get`` → None means "timed out".

    ``pipeline=`` on writes joins a caller's pipeline (MULTI or not): the caller executes it, and
    the queue never does. Without one, each call runs and executes its own.
    """

    # ------------------------------------------------------------------ writes

    def put(self, item: Any, pipeline: redis.client.Pipeline | None = None) -> None:
        """Append one item (one RPUSH); encoded first, so a bad item raises before anything is sent."""
        self.do_push(self._encode([item]), pipeline)

    def put_many(self, items: Iterable[Any], pipeline: redis.client.Pipeline | None = None) -> int:
        """Append ``items`` in order with variadic RPUSH of ``chunk`` values; returns how many.

        Every item is encoded before anything is sent, so a bad item raises EncodeError (a
        TypeError naming it, ``.sent`` 0) with the queue untouched. The price is memory: the whole
        batch waits as wire bytes (1 M small items: 43 MB, +41 MB peak RSS, measured); feed an
        endless stream in batches. Encoding twice instead (check, then send) would cost ~2 × CPU.
        Own round trips: each chunk is packed to RESP here (``connection.pack_command``: ~3 × faster
        than redis-py's per-argument packing, and it keeps only the wire bytes, never one orjson
        buffer per item), then ``window`` commands per round trip; every reply is checked.
        Caller's pipeline: the chunks join it as ordinary RPUSH; the caller executes it.
        """
        if pipeline is not None:
            parts, done = self._encode_all(items)
            for part in parts:
                self.do_push(part, pipeline)
            return done
        try:
            commands, done = self._packed(items)
        except TypeError as exc:
            exc.sent = 0  # type: ignore[attr-defined]
            raise
        for window in chunked(commands, self.window):
            send_packed(self.client, window, self.key)
        return done

    def do_push(self, payloads: list[bytes], pipeline: redis.client.Pipeline | None = None) -> None:
        """One RPUSH of encoded payloads, queued on ``pipeline`` or sent at once."""
        (pipeline if pipeline is not None else self.client).rpush(self.key, *payloads)

    # ------------------------------------------------------------------ reads

    def get(self, timeout: float | None = None) -> Any:
        """The oldest item, or None if ``timeout`` ran out first.

        ``None`` waits without limit, ``0`` does not wait (LPOP), ``t`` waits up to t seconds
        (BLPOP, in slices shorter than the client's socket timeout; never less than t).
        """
        check_timeout(timeout)
        if timeout == 0:
            return self._decode(self.do_pop(None))
        for wait in wait_slices(timeout, self._socket_timeout()):
            payload = self.do_pop(wait)
            if payload is not None:
                return self._decode(payload)
        return None

    def do_pop(self, wait: float | None) -> bytes | None:
        """One LPOP (``wait`` None) or one BLPOP of ``wait`` seconds; the raw payload, undecoded."""
        reply = self.client.execute_command(*pop_command(self.key, wait), **{NEVER_DECODE: True})
        return pop_payload(wait, reply)

    def __len__(self) -> int:
        return int(self.client.llen(self.key))

    def clear(self) -> int:
        """Drop every item (UNLINK); returns 1 if the queue existed."""
        return int(self.client.unlink(self.key))


# ---------------------------------------------------------------------- updating one request (mistake 7)


class ArticleQueueUpdate:
    """THE MISTAKE (article, mistake 7): update one request by scanning the whole queue inside Lua.

    Kept faithful to the article: LRANGE 0 -1 copies the entire list, every entry is JSON-decoded
    until ``idx`` matches, then LSET (itself O(N) to walk there). The server runs nothing else
    meanwhile, so its cost grows with the queue and stalls every client. Requires JSON payloads with
    an ``idx`` field. Compare ``RequestTable.update`` (a hash per request, O(1)).
    """

    # KEYS[1] queue list; ARGV[1] request idx (number); ARGV[2] the updated request, JSON
    # returns 1 if found and replaced, 0 if no entry has that idx
    LUA: ClassVar[str] = """
local queue_key = KEYS[1]
local request_idx = tonumber(ARGV[1])
local updated_data = ARGV[2]

local requests = redis.call('lrange', queue_key, 0, -1)
for i, request in ipairs(requests) do
    local request_data = cjson.decode(request)
    if request_data.idx == request_idx then
        redis.call('lset', queue_key, i-1, updated_data)
        return 1
    end
end
return 0
"""
    _script: ClassVar[Any] = None

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client, self.key = client, key
        if type(self)._script is None:
            type(self)._script = unbound_script(self.LUA)

    def update(self, idx: int, request: Mapping[str, Any]) -> bool:
        """Replace the request whose ``idx`` matches with ``request`` (JSON); False if none matches."""
        return bool(self._script(keys=[self.key], args=[idx, json_dumps(dict(request))], client=self.client))


class RequestTable:
    """The fix for mistake 7: each request in its own hash, the queue holding only ids.

    ``update`` touches one hash, O(1) whatever the queue length; ``add`` writes the hash and
    enqueues the id in one round trip (pipeline=None joins or runs its own, like WorkQueue).
    """

    # KEYS[1] the request's hash; ARGV field, value, field, value, ...
    # returns 1 if the request existed and was updated, 0 if not (no half-made ghost request)
    UPDATE_LUA: ClassVar[str] = """
if redis.call('exists', KEYS[1]) == 0 then
    return 0
end
redis.call('hset', KEYS[1], unpack(ARGV))
return 1
"""
    _script: ClassVar[Any] = None

    def __init__(self, client: redis.Redis, name: str, *, keyspace: KeySpace | None = None) -> None:
        self.client = client
        self.space = keyspace or DEFAULT_SPACE
        self.queue_key = queue_key(name, keyspace)
        self.name = name
        if type(self)._script is None:
            type(self)._script = unbound_script(self.UPDATE_LUA)

    def request_key(self, idx: int | str) -> str:
        return self.space.key("request", self.name, idx)

    def add(self, idx: int | str, fields: Mapping[str, Any], pipeline: redis.client.Pipeline | None = None) -> None:
        if not fields:
            raise ValueError("a request needs at least one field")
        pipe = pipeline if pipeline is not None else self.client.pipeline(transaction=False)
        pipe.hset(self.request_key(idx), mapping=dict(fields))
        pipe.rpush(self.queue_key, idx)
        if pipeline is None:
            pipe.execute()

    def update(self, idx: int | str, fields: Mapping[str, Any]) -> bool:
        """Set ``fields`` on request ``idx``: one hash, O(1). False if there is no such request."""
        if not fields:
            raise ValueError("nothing to update")
        args = [x for kv in fields.items() for x in kv]
        return bool(self._script(keys=[self.request_key(idx)], args=args, client=self.client))

    def get(self, idx: int | str) -> dict[str, Any]:
        return self.client.hgetall(self.request_key(idx))
