"""What blocks a server, made visible (4장): a big hash built inside the server, the server's own
per-command durations, and latency-probe timelines side by side.

A client-side stopwatch around KEYS or DEL measures the network, the client and the machine's
noise as well as the command. The server's SLOWLOG records how long each command itself kept the
event loop busy (in microseconds), and with ``slowlog-log-slower-than 0`` it records every command,
so a notebook can compare the longest SCAN call with one KEYS, or count the keys each UNLINK
carried. These helpers are for private servers (``start_server``): they load or reconfigure one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pandas as pd
import redis

from redisopt.errors import check_timeout
from redisopt.scripts import unbound_script

# KEYS[1]: the hash to fill; ARGV[1]: how many fields (1..n); ARGV[2]: fields per HSET
# returns: the hash's length. Runs inside the server: 1 M fields in about a second and a half,
# without sending 1 M fields over the network. It blocks the server meanwhile, so private servers only.
HASH_FILL_LUA = """
local n, chunk = tonumber(ARGV[1]), tonumber(ARGV[2])
for first = 1, n, chunk do
    local args = {}
    for i = first, math.min(first + chunk - 1, n) do
        args[#args + 1] = i
        args[#args + 1] = 'v'
    end
    redis.call('HSET', KEYS[1], unpack(args))
end
return redis.call('HLEN', KEYS[1])
"""
_HASH_FILL = unbound_script(HASH_FILL_LUA)

SLOWLOG_MAX_ARGS = 32  # the server keeps at most 32 arguments per entry; the last one says how many more


def fill_hash(client: redis.Redis, key: str, fields: int, chunk: int = 1_000) -> int:
    """Add fields ``1..fields`` (value ``v``) to the hash ``key`` from a Lua script; returns its length.

    Built field by field, as an application builds a hash over time. Freeing it is what a DEL
    costs in practice: measured on Valkey 8.1 and 9.1, DEL of 1 M fields built so took ~270 ms,
    DEL of a fresh COPY of it ~30 ms (its memory is laid out afresh).
    """
    if fields < 1 or chunk < 1:
        raise ValueError("fields and chunk must be >= 1")
    return int(_HASH_FILL(keys=[key], args=[fields, min(chunk, 3_000)], client=client))


def _argc(args: list[Any]) -> int:
    """How many arguments a command had, from a SLOWLOG entry's (possibly truncated) argument list."""
    if len(args) == SLOWLOG_MAX_ARGS:
        last = args[-1].decode() if isinstance(args[-1], bytes) else str(args[-1])
        if last.startswith("... (") and last.endswith(" more arguments)"):
            return SLOWLOG_MAX_ARGS - 1 + int(last[5:].split(" ", 1)[0])
    return len(args)


def slowlog_entries(client: redis.Redis) -> pd.DataFrame:
    """Every entry of the server's SLOWLOG, oldest first: ``command``, ``argc``, ``duration_us``.

    ``argc`` counts the command name too (``UNLINK a b`` has 3), truncated entries included;
    SLOWLOG's own commands are left out.
    With ``slowlog-log-slower-than 0`` this is every command since the last SLOWLOG RESET, as far
    as ``slowlog-max-len`` reaches. Read with the raw command: redis-py's parser joins the arguments.
    """
    rows = []
    for entry in reversed(client.execute_command("SLOWLOG", "GET", -1)):
        args = list(entry[3])
        name = (args[0].decode() if isinstance(args[0], bytes) else str(args[0])).upper()
        if name == "SLOWLOG":  # the RESET that opened the window, not part of what it measures
            continue
        rows.append({"command": name, "argc": _argc(args), "duration_us": int(entry[2])})
    return pd.DataFrame(rows, columns=["command", "argc", "duration_us"])


def longest_us(entries: pd.DataFrame, command: str) -> int:
    """The longest single run of ``command`` in ``slowlog_entries`` output (0 if it never ran)."""
    durations = entries.loc[entries["command"] == command.upper(), "duration_us"]
    return int(durations.max()) if len(durations) else 0


def lazyfreed_objects(client: redis.Redis, timeout: float | None = 10.0) -> int:
    """How many values the server has freed in the background so far (INFO memory), once none is pending.

    UNLINK hands a big value to a background thread and returns; the count moves when that
    thread has finished, so this waits until ``lazyfree_pending_objects`` reads 0 twice with the
    same count (None waits forever, 0 reads once, t waits up to t seconds; then TimeoutError if a
    free is still pending).
    """
    timeout = check_timeout(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    last: int | None = None
    while True:
        memory = client.info("memory")
        freed = int(memory["lazyfreed_objects"])
        idle = int(memory.get("lazyfree_pending_objects", 0)) == 0
        # the same count twice while idle: the worker decrements "pending" just before it counts
        if idle and freed == last:
            return freed
        if deadline is not None and time.monotonic() >= deadline:
            if idle:
                return freed
            raise TimeoutError(f"the server still had values to free in the background after {timeout} s")
        last = freed if idle else None
        time.sleep(0.002)


def plot_timelines(timelines: Mapping[str, pd.DataFrame], *, title: str,
                   figsize: tuple[float, float] = (9.0, 3.0)) -> None:
    """Latency-probe timelines side by side on one y scale, so a flat row next to a spike reads at once.

    Each ping is a stem at the moment it was sent, as tall as it waited: a ping stuck behind KEYS
    is one tall stem, and no ping is sent while it waits (the probe's thread is blocked on it).
    """
    import matplotlib.pyplot as plt

    import redisopt.plots  # noqa: F401  (registers the Korean font)

    fig, axes = plt.subplots(1, len(timelines), figsize=figsize, sharey=True, squeeze=False)
    for ax, (label, tl) in zip(axes[0], timelines.items(), strict=True):
        ax.vlines(tl["t_ms"], 0, tl["latency_ms"], linewidth=0.8)  # one stem per ping, at the time it was sent
        ax.plot(tl["t_ms"], tl["latency_ms"], ".", markersize=3)
        ax.set_title(label)
        ax.set_xlabel("경과 시간 (ms)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("PING 지연 (ms)")
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()
