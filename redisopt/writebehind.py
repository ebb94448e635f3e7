"""Write-behind (6장; the article names it and never shows it, mistake 16): a stream drained into the store.

``Cache.write_behind(key, value)`` puts the value in the cache and appends ``k``/``v``/``c`` (key,
payload, codec name) to the namespace's stream in one MULTI, so the caller waits for Redis only. A
``WriteBehindFlusher`` reads the stream through a consumer group in batches, writes each batch to
the store in one transaction (one slow query instead of one per write), and only then acknowledges
and deletes the entries (XACK + XDEL in one MULTI). A flusher killed anywhere in between — after
reading, during the write, after it — leaves the batch in its pending entries list; restarted under
the same consumer name it reads those first (``XREADGROUP … 0``), and under another name it claims
them once they have been idle ``claim_idle`` seconds (XAUTOCLAIM). So nothing is lost; a batch may
be written twice, which is harmless because each row carries its entry ID as a version and an older
version never overwrites a newer one (``SQLiteStore.put_many``).

The price of write-behind, which the chapter must say: until the flusher catches up, the store
is behind the cache, so a read that misses the cache (expiry, eviction) can load an old value,
and writes not yet flushed live only in Redis (on a server without persistence, a crash loses them).
Nothing trims the stream but the flusher (a MAXLEN would drop unflushed writes): with no flusher
running, it holds every write.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
import weakref
from typing import Any

import redis
from redis.client import NEVER_DECODE

from redisopt.codecs import Codec, get_codec
from redisopt.keyspace import KeySpace
from redisopt.store import SQLiteStore

__all__ = ["WriteBehindFlusher", "entry_version"]

GROUP = "flusher"
RAW = {NEVER_DECODE: True}


def entry_version(entry_id: bytes | str) -> str:
    """A stream entry ID (``ms-seq``) as text that sorts like the ID: both parts zero-padded."""
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return f"{int(ms):020d}-{int(seq or 0):020d}"


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """``[(id, fields)]`` from an XREADGROUP reply (RESP2 list or RESP3 map), or []."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [s[1] for s in reply]
    out = []
    for entries in streams:
        for entry in entries or []:
            if isinstance(entry, dict):  # RESP3 may give {id: fields}
                out += list(entry.items())
            else:
                out.append((entry[0], entry[1]))
    return [(i, f) for i, f in out if f is not None]  # an entry deleted while pending has no fields


class WriteBehindFlusher:
    """Drains ``<namespace>:w`` into ``store``: ``flush_once()``, ``drain()``, or ``start()``/``stop()``
    a background thread. ``consumer`` names this flusher in the group (default host-pid)."""

    def __init__(self, client: redis.Redis, namespace: str | KeySpace, store: SQLiteStore,
                 codec: str | Codec = "orjson", *, group: str = GROUP, consumer: str | None = None,
                 batch: int = 100, block: float = 0.1, claim_idle: float = 30.0) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, not {batch!r}")
        if not block > 0 or not claim_idle >= 0:
            raise ValueError(f"block must be > 0 and claim_idle >= 0 seconds, not {block!r}, {claim_idle!r}")
        self.client, self.store, self.codec = client, store, get_codec(codec)
        prefix = namespace.prefix if isinstance(namespace, KeySpace) else str(namespace)
        self.stream = f"{prefix}:w"
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch, self.block, self.claim_idle = batch, block, claim_idle
        self.flushed = 0  # entries written to the store by this object (redeliveries included)
        self.batches = 0
        self._own_pending = True  # after a restart, our own unacknowledged entries come first
        self._claim_at = 0.0  # when to look for a dead consumer's entries next
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.ensure_group()

    def ensure_group(self) -> None:
        """Create the consumer group from the stream's start (``0``): entries written before any
        flusher existed are flushed too. Existing group: nothing to do."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ----- one batch

    def _read(self, block: float | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if self._own_pending:
            entries = _entries(self.client.execute_command(
                "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self.batch,
                "STREAMS", self.stream, "0", **RAW))
            if entries:
                return entries
            self._own_pending = False
        if time.monotonic() >= self._claim_at:
            self._claim_at = time.monotonic() + max(self.claim_idle, self.block)
            reply = self.client.execute_command(
                "XAUTOCLAIM", self.stream, self.group, self.consumer, round(self.claim_idle * 1000), "0-0",
                "COUNT", self.batch, **RAW)
            claimed = [(e[0], e[1]) for e in reply[1] if e and e[1] is not None] if reply else []
            if claimed:
                self._own_pending = True  # keep reading our list until it is empty
                return claimed
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self.batch]
        if block:
            args += ["BLOCK", max(1, round(block * 1000))]
        return _entries(self.client.execute_command(*args, "STREAMS", self.stream, ">", **RAW))

    def _codec_of(self, fields: dict[bytes, bytes]) -> Codec:
        """The codec an entry names (``c``: the writing cache's), else this flusher's."""
        name = fields.get(b"c")
        return self.codec if name is None or name.decode() == self.codec.name else get_codec(name.decode())

    def flush_once(self, block: float | None = None) -> int:
        """Read one batch (waiting up to ``block`` s for new entries), write it to the store in one
        query, then XACK + XDEL it. Returns the number of entries flushed (0: nothing to do)."""
        entries = self._read(block)
        if not entries:
            return 0
        rows = [(f[b"k"].decode(), self._codec_of(f).decode(f[b"v"]), entry_version(i)) for i, f in entries]
        self.store.put_many(rows)
        ids = [i for i, _ in entries]
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.execute()
        self.flushed += len(entries)
        self.batches += 1
        return len(entries)

    def drain(self) -> int:
        """Flush until the stream has nothing left for this group (pending or new); returns how many."""
        total = 0
        while n := self.flush_once():
            total += n
        return total

    def backlog(self) -> int:
        """Entries still in the stream: not yet flushed, or flushed and not yet acknowledged."""
        return int(self.client.xlen(self.stream))

    def pending(self) -> int:
        """Entries read by some flusher and not acknowledged (a batch in flight, or a dead flusher's)."""
        return int(self.client.xpending(self.stream, self.group)["pending"])

    # ----- in the background

    def start(self) -> WriteBehindFlusher:
        """Flush in a daemon thread until ``stop()``."""
        if self._thread is not None:
            raise RuntimeError("this flusher is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=_loop, args=(weakref.ref(self), self._stop),
                                         name=f"write-behind:{self.stream}", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain: bool = True) -> None:
        """Stop the thread (after flushing what is left, with ``drain``) and re-raise its error, if any."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error
        if drain:
            self.drain()

    def __enter__(self) -> WriteBehindFlusher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"WriteBehindFlusher({self.stream!r}, consumer={self.consumer!r}, batch={self.batch})"


def _loop(ref: weakref.ref[WriteBehindFlusher], stop: threading.Event) -> None:
    """The thread's body: holds the flusher only while flushing, so a forgotten one is collected."""
    while not stop.is_set():
        flusher = ref()
        if flusher is None:
            return
        try:
            flusher.flush_once(block=flusher.block)
        except BaseException as exc:  # noqa: BLE001 - handed to stop(), which re-raises
            flusher._error = exc
            return
        finally:
            del flusher


def main(argv: list[str] | None = None) -> int:
    """``python -m redisopt.writebehind STORE NAMESPACE``: a flusher in its own process (to kill)."""
    parser = argparse.ArgumentParser(prog="python -m redisopt.writebehind", description=main.__doc__)
    parser.add_argument("store", help="the SQLite file (SQLiteStore.path)")
    parser.add_argument("namespace", help="the Cache's namespace")
    parser.add_argument("--codec", default="orjson")
    parser.add_argument("--consumer", default=None)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.0, help="the store's per-query delay, s")
    parser.add_argument("--claim-idle", type=float, default=30.0)
    args = parser.parse_args(argv)
    from redisopt.server import connect

    client = connect()
    store = SQLiteStore(args.store, delay=args.delay)
    flusher = WriteBehindFlusher(client, args.namespace, store, args.codec, consumer=args.consumer,
                                 batch=args.batch, claim_idle=args.claim_idle)
    print(f"flushing {flusher.stream} as {flusher.consumer}", flush=True)
    while True:
        flusher.flush_once(block=1.0)


if __name__ == "__main__":
    sys.exit(main())
