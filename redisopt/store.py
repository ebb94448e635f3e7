"""The slow database behind the cache (6장): real SQLite (stdlib), a per-query delay, a query counter.

A cache chapter needs a database whose load can be *counted*: "100 concurrent cold requests cost
1 query, not 100" is a claim about ``store.queries``, an exact number, not a timing. So every data
statement executed adds one to a counter that all threads and all processes opening the same
file share (one byte appended to a side file per statement: an ``O_APPEND`` write is atomic on a
local POSIX file system, so processes need no lock, and the count is the file's size).

``delay`` makes each statement slow the way a real database is (network, planning, disk): it
sleeps *before* the statement and outside every lock, so 100 threads waiting on a slow query
wait side by side, as they would on a real server, instead of queueing behind one lock.

``SQLiteStore()`` with no path writes to a fresh temp directory, removed by ``close()``, on
garbage collection or at exit, by the process that created it only; another process (a
write-behind flusher, a ``multiprocessing`` worker) opens the same ``store.path``, or receives the
store pickled, which reopens the file without owning it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

__all__ = ["SQLiteStore"]

SCHEMA = """CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,      -- the value as JSON
    version TEXT              -- a write-behind stream entry ID, zero-padded; NULL for a direct put
)"""
# A versioned write lands only if it is newer than what the row has: a flusher that is killed
# after writing a batch but before acknowledging it writes the batch again on restart, and a
# second flusher may hold older entries of the same key; neither may undo a newer write.
UPSERT = ("INSERT INTO kv (key, value, version) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
          "value = excluded.value, version = excluded.version "
          "WHERE excluded.version IS NULL OR kv.version IS NULL OR excluded.version > kv.version")
BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another process's write lock


def _check_delay(delay: float) -> float:
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay >= 0:
        raise ValueError(f"delay must be a number of seconds >= 0, not {delay!r}")
    return float(delay)


def _cleanup(workdir: str | None, owner: int) -> None:
    if workdir is not None and os.getpid() == owner:
        shutil.rmtree(workdir, ignore_errors=True)


class SQLiteStore:
    """``SQLiteStore(path=None, delay=0.0)``: a key → JSON value table in SQLite, slow on purpose.

    ``get(key, default=None)``, ``put(key, value)``, ``put_many(items)`` (one statement, one
    transaction, one delay: what a write-behind batch buys), ``items()``, ``queries`` (data
    statements executed against this file, by any thread or process) and ``reset_queries()``.
    Safe from many threads: statements run one at a time on one connection per process (WAL mode,
    so readers in other processes are not blocked by a writer); the delay runs outside that lock.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, delay: float = 0.0) -> None:
        self.delay = _check_delay(delay)
        self._workdir: str | None = None
        if path is None:
            self._workdir = tempfile.mkdtemp(prefix="redisopt-store-")
            path = os.path.join(self._workdir, "store.sqlite3")
        self.path = os.fspath(path)
        self._finalizer = weakref.finalize(self, _cleanup, self._workdir, os.getpid())
        self._lock = threading.Lock()
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        self._counter_fd = -1
        self._closed = False
        self._connection()  # create the table now, so another process can open the file at once

    @property
    def owns_file(self) -> bool:
        """Was the file created by this object (path=None), so close() removes it?"""
        return self._workdir is not None

    # ----- connection, one per process (a sqlite3 connection must not cross a fork)

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise ValueError(f"SQLiteStore({self.path!r}) is closed")
        if self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a teaching store
            conn.execute(SCHEMA)
            self._conn, self._pid = conn, os.getpid()
            self._counter_fd = os.open(self.path + ".queries", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._conn  # type: ignore[return-value]

    def _run(self, sql: str, params: Any = (), *, many: bool = False) -> list[Any]:
        """One data statement: the delay first (no lock held), then the statement, counted."""
        delay = self.delay
        if delay:
            self._pause(delay)
        with self._lock:
            conn = self._connection()
            if many:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(sql, params)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                rows: list[Any] = []
            else:
                rows = conn.execute(sql, params).fetchall()
            os.write(self._counter_fd, b".")
        return rows

    def _pause(self, seconds: float) -> None:
        """The per-query delay (a hook: a test holds a query inside it to show no lock is held)."""
        time.sleep(seconds)

    # ----- data

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` when there is none (one query)."""
        rows = self._run("SELECT value FROM kv WHERE key = ?", (key,))
        return orjson.loads(rows[0][0]) if rows else default

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (anything orjson encodes, None included) under ``key`` (one query)."""
        self._run(UPSERT, (key, orjson.dumps(value).decode(), None))

    def put_many(self, items: Iterable[tuple[str, Any]] | Iterable[tuple[str, Any, str]]) -> int:
        """Store ``(key, value)`` or ``(key, value, version)`` rows in one transaction: one query,
        one delay. A row with a version lands only over an older version (or a direct put)."""
        rows = [(item[0], orjson.dumps(item[1]).decode(), item[2] if len(item) > 2 else None)  # type: ignore[misc]
                for item in items]
        if rows:
            self._run(UPSERT, rows, many=True)
        return len(rows)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was there (one query)."""
        return bool(self._run("DELETE FROM kv WHERE key = ? RETURNING 1", (key,)))

    def items(self) -> dict[str, Any]:
        """Every key and value, as a dict (one query)."""
        return {k: orjson.loads(v) for k, v in self._run("SELECT key, value FROM kv ORDER BY key")}

    def __iter__(self) -> Iterator[str]:
        return iter(self.items())

    # ----- the counter

    @property
    def queries(self) -> int:
        """Data statements executed on this file so far, by every thread and process."""
        self._connection()
        return os.fstat(self._counter_fd).st_size

    def reset_queries(self) -> None:
        self._connection()
        os.ftruncate(self._counter_fd, 0)

    # ----- lifetime

    def close(self) -> None:
        """Close the connection; remove the file if this object created it (path=None)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._pid == os.getpid():
                if self._conn is not None:
                    self._conn.close()
                os.close(self._counter_fd)
        self._finalizer()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (multiprocessing), a store reopens the same file in the child, without owning it."""
        return (SQLiteStore, (self.path, self.delay))

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, delay={self.delay})"
