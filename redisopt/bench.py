"""Measuring: timings as tidy DataFrames, exact round-trip counts, and a latency probe.

Timings use ``time.perf_counter`` with warm-up and several repeats, run round-robin across the
cases being compared so that machine noise hits them alike; summaries report the median and the
spread, never a single run. Round trips are counted on the connection, so they are exact and can be
checked in a notebook. The latency probe pings from its own connection on a schedule, which makes
a blocked server visible as a spike on a timeline.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import redis

from redisopt.connection import Tap, tap_of

PROGRESS_AFTER_S = 3.0  # show a progress bar only for measurements longer than this


def progress_enabled() -> bool:
    """Progress bars for people: off under REDISOPT_PROGRESS=0 (tests, nbval, committed runs)."""
    if os.environ.get("REDISOPT_PROGRESS", "").strip() == "0":
        return False
    return "ipykernel" in sys.modules or sys.stderr.isatty()


def _bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def compare(
    cases: Mapping[str, Callable[[], Any]],
    *,
    repeat: int = 5,
    warmup: int = 1,
    number: int = 1,
    setup: Callable[[], Any] | None = None,
    **params: Any,
) -> pd.DataFrame:
    """Time each case ``repeat`` times (after ``warmup`` untimed calls), round-robin.

    One row per timed run: ``case``, ``run``, ``seconds`` (for ``number`` calls), ``per_call_us``
    and one column per keyword in ``params`` (so sweeps concatenate into one tidy frame).
    ``setup`` runs untimed before every call, e.g. to delete the key a case fills.
    """
    if repeat < 1 or number < 1 or warmup < 0:
        raise ValueError("repeat and number must be >= 1 and warmup >= 0")
    if not cases:
        raise ValueError("compare() needs at least one case")
    started = time.perf_counter()
    for fn in cases.values():
        for _ in range(warmup):
            if setup:
                setup()
            fn()
    warm = time.perf_counter() - started
    estimate = warm / max(warmup, 1) * repeat * number
    bar = _bar(repeat * len(cases), "measuring") if progress_enabled() and estimate > PROGRESS_AFTER_S else None
    rows = []
    try:
        for run in range(repeat):
            for case, fn in cases.items():
                elapsed = 0.0
                for _ in range(number):
                    if setup:
                        setup()
                    t0 = time.perf_counter()
                    fn()
                    elapsed += time.perf_counter() - t0
                rows.append({"case": case, "run": run, "seconds": elapsed,
                             "per_call_us": elapsed / number * 1e6, **params})
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
    return pd.DataFrame(rows)


def measure(fn: Callable[[], Any], *, case: str = "fn", **kwargs: Any) -> pd.DataFrame:
    """``compare`` for a single callable."""
    return compare({case: fn}, **kwargs)


def sweep(make_cases: Callable[[Any], Mapping[str, Callable[[], Any]]], name: str,
          values: list[Any], **kwargs: Any) -> pd.DataFrame:
    """``compare`` at each value of one parameter; ``make_cases(value)`` prepares data and cases.

    The result has a column ``name`` holding the parameter, ready for ``plots.lines``.
    """
    frames = [compare(make_cases(value), **kwargs, **{name: value}) for value in values]
    return pd.concat(frames, ignore_index=True)


_UNITS = {"seconds": ("ms", 1e3), "per_call_us": ("us", 1.0)}


def summarize(df: pd.DataFrame, by: str | list[str] = "case", value: str = "seconds") -> pd.DataFrame:
    """Median and spread (min, max) per group, rounded for display.

    ``value="seconds"`` reports each run (``number`` calls) in ms; ``value="per_call_us"`` one call in µs.
    """
    unit, scale = _UNITS.get(value, (value, 1.0))
    grouped = df.groupby(by, sort=False)[value]
    out = pd.DataFrame({
        f"median_{unit}": grouped.median() * scale,
        f"min_{unit}": grouped.min() * scale,
        f"max_{unit}": grouped.max() * scale,
        "runs": grouped.size(),
    })
    return out.round(3)


def speedup(df: pd.DataFrame, slow: str, fast: str, value: str = "seconds", stat: str = "median") -> float:
    """How many times faster ``fast`` is than ``slow``, by the ratio of their medians (or minimums).

    ``stat="min"`` compares each case's fastest run: noise on a loaded machine only adds time, so
    minimums move least, and that is what a notebook's verdict should rest on.
    """
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', not {stat!r}")
    medians = df.groupby("case")[value].agg(stat)
    missing = {slow, fast} - set(medians.index)
    if missing:
        raise KeyError(f"no runs for case(s) {sorted(missing)}; have {sorted(medians.index)}")
    return float(medians[slow] / medians[fast])


# --------------------------------------------------------------------------- round trips


@dataclass
class RoundTrips:
    """What a block of code sent: write bursts (round trips), commands, and new connections."""

    round_trips: int = 0
    commands: int = 0
    connects: int = 0


@contextmanager
def count_round_trips(client: redis.Redis) -> Iterator[RoundTrips]:
    """Count the exact round trips and commands ``client`` (and its pipelines) make in a block.

    1000 single RPUSH = 1000 round trips; one pipeline of 1000 = 1; one variadic RPUSH = 1.
    A transaction pipeline adds MULTI and EXEC to the command count, not to the round trips.
    Connection handshakes are reported apart, in ``connects``.
    """
    tap = tap_of(client)
    before = tap.snapshot()
    result = RoundTrips()
    try:
        yield result
    finally:
        after = tap.snapshot()
        result.round_trips, result.commands, result.connects = (a - b for a, b in zip(after, before, strict=True))


# --------------------------------------------------------------------------- latency probe


def _sibling_client(client: redis.Redis) -> redis.Redis:
    """A client on its own pool to the same server, so probing never queues behind the workload."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    if "tap" in kwargs:
        kwargs["tap"] = Tap(kwargs["tap"].guard)  # the same guard: its rules are fetched once
    return redis.Redis.from_pool(redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


class LatencyProbe:
    """Ping the server from a second connection every ``interval`` seconds, in a thread.

    Use as a context manager around a workload; ``timeline()`` then gives one row per ping with
    ``t_ms`` (when it was sent, from the start) and ``latency_ms``. A ping that waits behind a
    blocking command (KEYS, DEL of a huge key) shows up as a spike as long as the block.
    """

    def __init__(self, client: redis.Redis, interval: float = 0.002, max_samples: int = 200_000) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0 seconds")
        self.interval = interval
        self.max_samples = max_samples
        self._client = _sibling_client(client)
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        ping = self._client.ping
        start = time.perf_counter()
        next_at = start
        try:
            while not self._stop.is_set() and len(self._samples) < self.max_samples:
                sent = time.perf_counter()
                ping()
                self._samples.append(((sent - start) * 1e3, (time.perf_counter() - sent) * 1e3))
                next_at += self.interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = time.perf_counter()  # we fell behind: do not burst to catch up
        except BaseException as exc:  # surfaced by stop()
            self._error = exc

    def start(self) -> LatencyProbe:
        self._client.ping()  # connect before the workload starts, not during it
        self._thread = threading.Thread(target=self._run, name="redisopt-latency-probe", daemon=True)
        self._thread.start()
        time.sleep(self.interval * 3)  # a short baseline before the workload
        return self

    def stop(self) -> pd.DataFrame:
        if self._thread is not None:
            time.sleep(self.interval * 3)  # and a short tail after it
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._client.close()
        if self._error is not None:
            raise RuntimeError(f"latency probe failed: {self._error!r}") from self._error
        return self.timeline()

    def timeline(self) -> pd.DataFrame:
        return pd.DataFrame(self._samples, columns=["t_ms", "latency_ms"])

    def __enter__(self) -> LatencyProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worst_stall_ms(timeline: pd.DataFrame) -> float:
    """The longest single ping in a probe timeline: how long the server kept others waiting."""
    return float(timeline["latency_ms"].max()) if len(timeline) else 0.0
