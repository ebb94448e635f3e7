"""Reading a server's own statistics (7장): INFO snapshots and deltas, hit rate, SLOWLOG, LATENCY,
commandstats and big keys, as DataFrames.

Every counter here is server-wide and cumulative since the server started (or since someone ran
CONFIG RESETSTAT): on a server the user supplied it includes every other application's traffic.
So the helpers work with *deltas between two snapshots* and with "entries newer than id N",
never with resets: CONFIG RESETSTAT and SLOWLOG RESET are admin commands that wipe what other
people are looking at (the guard refuses them on a REDIS_URL server anyway).

Units are the trap of this chapter: SLOWLOG durations are microseconds (the article prints them as
milliseconds, mistake 15), LATENCY reports milliseconds, commandstats microseconds. Every column
name here carries its unit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import redis
from redis.client import Pipeline

from redisopt.errors import DestructiveCommandError

__all__ = [
    "InfoSnapshot", "active_locks", "article_hit_rate", "article_large_keys", "big_keys", "command_delta",
    "command_stats", "count_keys", "enable_latency_monitor", "hit_rate", "info_delta", "info_snapshot",
    "latency_history", "latency_latest", "latency_threshold_ms", "ops_per_sec", "scan_with", "slowlog",
    "slowlog_last_id", "top_commands",
]

def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


# --------------------------------------------------------------------------- INFO


@dataclass(frozen=True)
class InfoSnapshot:
    """The numeric INFO fields at one moment: ``at`` (time.monotonic) and ``values``.

    Nested fields are flattened with a dot: ``db0.keys``, ``cmdstat_get.calls``. Strings (versions,
    modes, ``used_memory_human``) are left out: a delta of them means nothing.
    """

    at: float
    values: Mapping[str, float]

    def __getitem__(self, field: str) -> float:
        return self.values[field]

    def get(self, field: str, default: float = 0.0) -> float:
        return self.values.get(field, default)

    def frame(self) -> pd.DataFrame:
        """One row per field, ``field`` and ``value``."""
        return pd.DataFrame({"field": list(self.values), "value": list(self.values.values())})


def _numeric(info: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in info.items():
        if isinstance(value, Mapping):
            out.update(_numeric(value, f"{prefix}{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{name}"] = value
    return out


def info_snapshot(client: redis.Redis, *sections: str) -> InfoSnapshot:
    """One INFO round trip (default: INFO's default sections), its numeric fields kept."""
    info = client.info(*sections) if sections else client.info()
    return InfoSnapshot(time.monotonic(), _numeric(info))


def info_delta(before: InfoSnapshot, after: InfoSnapshot, fields: Iterable[str] | None = None,
               *, changed_only: bool = True) -> pd.DataFrame:
    """``before``, ``after``, ``delta`` and ``per_s`` for each field (index: field).

    ``per_s`` is the delta over the seconds between the snapshots: the rate of a counter
    (``total_commands_processed``), the drift of a gauge (``used_memory``). Without ``fields``, only
    the fields that changed (``changed_only``) or all of them.
    """
    seconds = after.at - before.at
    if seconds <= 0:
        raise ValueError(f"`after` must be taken after `before` (got {seconds:+.6f} s between them)")
    names = list(fields) if fields is not None else [f for f in after.values if f in before.values]
    rows = {}
    for name in names:
        b, a = before.get(name, math.nan), after.get(name, math.nan)
        if fields is None and changed_only and a == b:
            continue
        rows[name] = {"before": b, "after": a, "delta": a - b, "per_s": (a - b) / seconds}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=["before", "after", "delta", "per_s"])
    frame.index.name = "field"
    return frame


def hit_rate(stats: Mapping[str, Any] | InfoSnapshot, after: InfoSnapshot | None = None) -> float:
    """keyspace_hits / (hits + misses), 0.0 when there were no lookups at all (a fresh server).

    ``hit_rate(info)`` is the rate since the server started; ``hit_rate(before, after)`` the rate
    between two snapshots, which is what to watch on a shared or long-running server. Every read
    lookup counts, not only a cache's GETs: LLEN, EXISTS, a GET inside a Lua script, a dashboard's
    own probes. (The article divides by hits + misses unguarded: mistake 13.)
    """
    if after is not None:
        if not isinstance(stats, InfoSnapshot):
            raise TypeError("hit_rate(before, after) needs two InfoSnapshot objects")
        hits = after.get("keyspace_hits") - stats.get("keyspace_hits")
        misses = after.get("keyspace_misses") - stats.get("keyspace_misses")
    else:
        hits, misses = float(stats.get("keyspace_hits", 0)), float(stats.get("keyspace_misses", 0))
    lookups = hits + misses
    return hits / lookups if lookups > 0 else 0.0


def article_hit_rate(stats_info: Mapping[str, Any]) -> float:
    """The article's line, unchanged (mistake 13): ZeroDivisionError before the first read."""
    keyspace_hits = stats_info["keyspace_hits"]
    keyspace_misses = stats_info["keyspace_misses"]
    return keyspace_hits / (keyspace_hits + keyspace_misses)


def ops_per_sec(before: InfoSnapshot, after: InfoSnapshot, *, own_commands: int = 0) -> float:
    """Commands per second between two snapshots, from ``total_commands_processed``.

    ``own_commands``: commands the observer itself sent in between (its INFO calls count too),
    subtracted so the figure is the workload's. INFO's ``instantaneous_ops_per_sec`` is the server's
    own estimate, averaged over its last ~1.6 s: it lags a burst, this does not.
    """
    seconds = after.at - before.at
    if seconds <= 0:
        raise ValueError(f"`after` must be taken after `before` (got {seconds:+.6f} s between them)")
    done = after.get("total_commands_processed") - before.get("total_commands_processed") - own_commands
    return max(done, 0.0) / seconds


# --------------------------------------------------------------------------- commandstats


_STAT_COLUMNS = ["calls", "usec", "usec_per_call", "failed_calls", "rejected_calls"]


def command_stats(client: redis.Redis) -> pd.DataFrame:
    """INFO commandstats as a frame: one row per command (``get``, ``config|get``), times in µs."""
    info = client.info("commandstats")
    rows = {name.removeprefix("cmdstat_"): {c: float(stats.get(c, 0)) for c in _STAT_COLUMNS}
            for name, stats in info.items() if isinstance(stats, Mapping)}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=_STAT_COLUMNS)
    frame.index.name = "command"
    return frame


def command_delta(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """What ran between two ``command_stats`` frames: calls, µs, µs per call (commands that ran only)."""
    delta = after.sub(before.reindex(after.index).fillna(0.0), fill_value=0.0)
    delta = delta[delta["calls"] > 0].copy()
    delta["usec_per_call"] = delta["usec"] / delta["calls"]
    return delta


def top_commands(stats: pd.DataFrame, n: int = 5, by: str = "usec") -> pd.DataFrame:
    """The ``n`` commands with the most ``by`` (``usec``: where the server's time went; ``calls``),
    with ``share``: their part of the total."""
    if by not in stats.columns:
        raise ValueError(f"by must be one of {list(stats.columns)}, not {by!r}")
    total = stats[by].sum()
    top = stats.sort_values(by, ascending=False).head(n)
    return top.assign(share=top[by] / total if total else 0.0).round(3)


# --------------------------------------------------------------------------- SLOWLOG


def slowlog_last_id(client: redis.Redis) -> int:
    """The id of the newest slow-log entry (-1 when empty): remember it, then read what came after."""
    entries = client.execute_command("SLOWLOG", "GET", 1)
    return int(entries[0][0]) if entries else -1


def slowlog(client: redis.Redis, count: int = 128, *, after_id: int | None = None) -> pd.DataFrame:
    """SLOWLOG GET as a frame, newest first: ``duration_us`` as the server reports it, and ``duration_ms``.

    The server measures each command's execution alone, in microseconds (network and queueing
    excluded). ``after_id`` keeps only entries newer than an id from ``slowlog_last_id``: on a
    shared server that replaces SLOWLOG RESET. The log is a ring of ``slowlog-max-len`` entries:
    old ones fall off, so read it soon.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, not {count!r}")
    rows = []
    for entry in client.execute_command("SLOWLOG", "GET", count):
        entry_id, started, duration_us, args = int(entry[0]), int(entry[1]), int(entry[2]), entry[3]
        if after_id is not None and entry_id <= after_id:
            continue
        rows.append({
            "id": entry_id,
            "started": pd.Timestamp(started, unit="s", tz="UTC"),
            "duration_us": duration_us,
            "duration_ms": duration_us / 1000,
            "command": " ".join(_text(a) for a in args),
            "client": _text(entry[4]) if len(entry) > 4 else "",
        })
    return pd.DataFrame(rows, columns=["id", "started", "duration_us", "duration_ms", "command", "client"])


# --------------------------------------------------------------------------- LATENCY


def latency_threshold_ms(client: redis.Redis) -> int:
    """latency-monitor-threshold (CONFIG GET, allowed everywhere); 0 means the monitor is off."""
    return int(client.config_get("latency-monitor-threshold").get("latency-monitor-threshold", 0))


def enable_latency_monitor(client: redis.Redis, threshold_ms: int) -> None:
    """Record latency events above ``threshold_ms`` (CONFIG SET: a private server only).

    The monitor is off by default (threshold 0), so LATENCY LATEST is empty until it is turned on.
    On a REDIS_URL server the guard refuses CONFIG SET; the error says how to go on.
    """
    if threshold_ms < 0:
        raise ValueError(f"threshold_ms must be >= 0, not {threshold_ms!r}")
    try:
        client.config_set("latency-monitor-threshold", threshold_ms)
    except DestructiveCommandError as exc:
        raise DestructiveCommandError(
            f"cannot turn the latency monitor on: {exc} Its operator can set latency-monitor-threshold; "
            "or measure on a private server: redisopt.start_server({'latency-monitor-threshold': "
            f"{threshold_ms}}})"
        ) from exc


def latency_latest(client: redis.Redis) -> pd.DataFrame:
    """LATENCY LATEST: per event (``command``, ``fast-command``, ``expire-cycle``, …) its latest and max ms.

    Valkey 8.1 and 9.1 (checked here) add the total and the count of spikes; a server that leaves
    them out gets NaN in those columns.
    """
    rows = []
    for entry in client.execute_command("LATENCY", "LATEST"):
        row = {"event": _text(entry[0]), "at": pd.Timestamp(int(entry[1]), unit="s", tz="UTC"),
               "latest_ms": int(entry[2]), "max_ms": int(entry[3]),
               "sum_ms": int(entry[4]) if len(entry) > 4 else math.nan,
               "count": int(entry[5]) if len(entry) > 5 else math.nan}
        rows.append(row)
    return pd.DataFrame(rows, columns=["event", "at", "latest_ms", "max_ms", "sum_ms", "count"])


def latency_history(client: redis.Redis, event: str = "command") -> pd.DataFrame:
    """LATENCY HISTORY ``event``: the worst spike of each second (up to 160 samples), in ms."""
    rows = [{"at": pd.Timestamp(int(at), unit="s", tz="UTC"), "latency_ms": int(ms)}
            for at, ms in client.execute_command("LATENCY", "HISTORY", event)]
    return pd.DataFrame(rows, columns=["at", "latency_ms"])


# --------------------------------------------------------------------------- keys


def count_keys(client: redis.Redis, pattern: str, *, count: int = 1_000) -> int:
    """How many keys match ``pattern``, by SCAN (never KEYS: it blocks the server).

    SCAN walks the whole keyspace whatever the pattern: the cost grows with the server's key count,
    not with the matches. Keys created or deleted during the walk may be counted or not.
    """
    return sum(1 for _ in client.scan_iter(match=pattern, count=count))


def scan_with(client: redis.Redis, pattern: str, per_key: Callable[[Pipeline, str], object], *,
              count: int = 1_000) -> Iterator[tuple[str, list[Any]]]:
    """SCAN ``pattern`` and run ``per_key(pipe, key)`` for every match, without extra round trips.

    Each round trip carries the next SCAN together with the per-key commands for the page before,
    so the walk costs (SCAN calls + 1) round trips however many keys match. Yields each key with
    the replies of its commands.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, not {count!r}")
    cursor, page, first = 0, [], True
    while first or cursor != 0 or page:
        pipe = client.pipeline(transaction=False)
        for key in page:
            per_key(pipe, key)
        scanning = first or cursor != 0
        if scanning:
            pipe.scan(cursor, match=pattern, count=count)
        replies = pipe.execute(raise_on_error=False)
        width = (len(replies) - scanning) // len(page) if page else 0
        for i, key in enumerate(page):
            yield _text(key), replies[i * width:(i + 1) * width]
        if not scanning:
            return
        reply = replies[-1]
        if isinstance(reply, Exception):
            raise reply
        cursor, page, first = int(reply[0]), list(reply[1]), False


def active_locks(client: redis.Redis, pattern: str, *, count: int = 1_000) -> int:
    """Locks held right now: keys matching ``pattern`` that carry a TTL (SCAN + pipelined PTTL).

    A lock always has one (SET NX PX); redisopt.Lock's fencing counters, which may match the same
    pattern, have none and are left out. A lock key without a TTL is the bug of mistakes 1 and 4.
    """
    return sum(1 for _, (pttl,) in scan_with(client, pattern, lambda pipe, key: pipe.pttl(key), count=count)
               if isinstance(pttl, int) and pttl > 0)


def big_keys(client: redis.Redis, pattern: str, *, count: int = 1_000, top: int = 10,
             min_bytes: int = 0) -> pd.DataFrame:
    """The biggest keys matching ``pattern``: SCAN + TYPE + MEMORY USAGE, pipelined (mistake 14).

    Rides on ``scan_with``: (SCAN calls + 1) round trips in all, not one per key as in the article.
    MEMORY USAGE keeps its default sampling (5 elements of an aggregate): exact sizes (SAMPLES 0)
    would read every element of a huge key, which is the blocking this scan is meant to find.
    The frame (``key``, ``type``, ``bytes``, biggest first) has ``attrs["matched"]``: keys sized.
    A key deleted between SCAN and MEMORY USAGE is skipped.
    """
    if top < 0:
        raise ValueError(f"top must be >= 0, not {top!r}")

    def probe(pipe: Pipeline, key: str) -> None:
        pipe.type(key)
        pipe.memory_usage(key)

    sizes = [(key, _text(kind), int(size)) for key, (kind, size) in scan_with(client, pattern, probe, count=count)
             if isinstance(size, int) and size >= min_bytes]
    sizes.sort(key=lambda row: row[2], reverse=True)
    frame = pd.DataFrame(sizes[:top], columns=["key", "type", "bytes"])
    frame.attrs["matched"] = len(sizes)
    return frame


def article_large_keys(client: redis.Redis, pattern: str, min_bytes: int = 1024) -> list[tuple[str, int]]:
    """The article's big-key scan (mistake 14): one MEMORY USAGE round trip per key, top 10 by size.

    The article scans ``*``; here the pattern is the caller's, so it can be scoped to a prefix.
    """
    large_keys = []
    for key in client.scan_iter(match=pattern, count=1_000):
        usage = client.memory_usage(key)
        if usage and usage > min_bytes:
            large_keys.append((_text(key), usage))
    return sorted(large_keys, key=lambda x: x[1], reverse=True)[:10]
