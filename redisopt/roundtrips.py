"""Round trips (2장): the same work sent with more or fewer round trips, ready for ``bench.compare``.

Each ``*_cases`` function prepares its data first and returns ``{label: callable}``; calling a case
sends exactly the round trips its label promises, which ``round_trip_table`` counts (exact, so a
notebook can check it) and ``bench.compare`` times. ``server_usec`` reads what the server itself spent
on a command (INFO commandstats), to show how much of a pipeline's time is the client's own work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd
import redis

from redisopt.bench import count_round_trips
from redisopt.bulk import chunked, insert_cases
from redisopt.scripts import unbound_script

__all__ = ["SET_MANY_LUA", "ladder_cases", "push_cases", "round_trip_table", "server_usec"]

# KEYS[1..n] the keys to set; ARGV[1] the value they all get.
# Returns how many keys were set. One EVALSHA, n SETs inside the server, nothing else runs meanwhile.
SET_MANY_LUA = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1])
end
return #KEYS
"""

_set_many = unbound_script(SET_MANY_LUA)


def ladder_cases(client: redis.Redis, prefix: str, n: int, value: str = "v") -> dict[str, Callable[[], Any]]:
    """``bulk.insert_cases`` (single SETs, pipeline, pipeline + MULTI, MSET) plus the same ``n`` SETs
    as one Lua script. The script is loaded here, so a later count sees one EVALSHA, not SCRIPT LOAD."""
    cases = dict(insert_cases(client, prefix, n, value))
    keys = [f"{prefix}:{i}" for i in range(n)]
    client.script_load(SET_MANY_LUA)
    cases["Lua 스크립트"] = lambda: _set_many(keys=keys, args=[value], client=client)
    return cases


def push_cases(client: redis.Redis, key: str, n: int, batch: int | None = None) -> dict[str, Callable[[], Any]]:
    """``n`` values RPUSHed onto ``key`` three ways, ``batch`` (default ``n``) per round trip.

    ``개별 RPUSH``: one value per command, one command per round trip (n round trips).
    ``파이프라인``: one value per command, ``batch`` commands per pipeline (ceil(n/batch) round trips).
    ``가변 인자 RPUSH``: ``batch`` values per command, one command per round trip (ceil(n/batch)).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n!r}")
    batch = n if batch is None else batch
    values = [f"item-{i}" for i in range(n)]
    parts = list(chunked(values, batch))  # also rejects batch < 1

    def single() -> None:
        for value in values:
            client.rpush(key, value)

    def pipelined() -> None:
        for part in parts:
            pipe = client.pipeline(transaction=False)
            for value in part:
                pipe.rpush(key, value)
            pipe.execute()

    def variadic() -> None:
        for part in parts:
            client.rpush(key, *part)

    return {"개별 RPUSH": single, "파이프라인": pipelined, "가변 인자 RPUSH": variadic}


def round_trip_table(client: redis.Redis, cases: Mapping[str, Callable[[], Any]],
                     cleanup: Callable[[], Any] | None = None) -> pd.DataFrame:
    """Run each case once and count what it sent: one row per case, ``왕복`` and ``명령`` columns.

    ``cleanup`` runs after each case, outside the count (e.g. to delete the list a case filled).
    """
    rows = {}
    for label, fn in cases.items():
        with count_round_trips(client) as sent:
            fn()
        rows[label] = {"왕복": sent.round_trips, "명령": sent.commands}
        if cleanup is not None:
            cleanup()
    return pd.DataFrame.from_dict(rows, orient="index")


def server_usec(client: redis.Redis, commands: Iterable[str]) -> tuple[int, int]:
    """``(calls, usec)`` the server has spent executing ``commands`` so far (INFO commandstats).

    Take it before and after a workload: the difference is the server's own share, with no network
    and no client in it. On a shared server other clients' calls of the same commands count too.
    """
    stats = client.info("commandstats")
    calls = usec = 0
    for name in commands:
        entry = stats.get(f"cmdstat_{name.lower()}", {})
        calls += int(entry.get("calls", 0))
        usec += int(entry.get("usec", 0))
    return calls, usec
