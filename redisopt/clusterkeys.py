"""Keys in a Redis Cluster (8장): slots, hash tags, where keys land, and batches grouped per node.

A key's slot is CRC16(key) mod 16384, computed on the *hash tag* only when the key has one: the
part between the first ``{`` and the next ``}``, if non-empty. Multi-key commands (MSET, MGET,
RPOPLPUSH/LMOVE), MULTI/EXEC and Lua scripts must keep every key in one slot, or the server answers
CROSSSLOT — even when both slots live on the same node. Hash tags put related keys in one slot.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import redis
import redis.cluster

from redisopt.bulk import CHUNK

SUM_LUA = """
-- KEYS: keys whose integer values to add up; returns their sum (all keys must share one slot)
local total = 0
for _, key in ipairs(KEYS) do total = total + tonumber(redis.call('GET', key) or '0') end
return total
"""


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key`` (client-side CRC16, the same as CLUSTER KEYSLOT)."""
    return int(redis.cluster.key_slot(key.encode() if isinstance(key, str) else key))


def hash_tag(key: str) -> str:
    """The part of ``key`` that is hashed: the first non-empty ``{…}``, else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def tagged(prefix: str, tag: str, name: str) -> str:
    """``prefix{tag}:name`` — keys built with the same ``tag`` share one slot (and so one node)."""
    return f"{prefix}{{{tag}}}:{name}"


def node_of(rc: redis.cluster.RedisCluster, key: str) -> str:
    node = rc.get_node_from_key(key)
    return f"{node.host}:{node.port}"


def slot_spread(rc: redis.cluster.RedisCluster, keys: Iterable[str]) -> pd.DataFrame:
    """One row per key: its hash tag, slot and the node serving that slot."""
    rows = [{"key": key, "hashed": hash_tag(key), "slot": key_slot(key), "node": node_of(rc, key)} for key in keys]
    return pd.DataFrame(rows, columns=["key", "hashed", "slot", "node"])


def node_table(rc: redis.cluster.RedisCluster) -> pd.DataFrame:
    """One row per primary: its slot ranges (CLUSTER SLOTS), how many slots, and its key count (DBSIZE)."""
    ranges: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (low, high), served in rc.cluster_slots(target_nodes=rc.get_random_node()).items():
        ranges["{}:{}".format(*served["primary"])].append((int(low), int(high)))
    rows = []
    for node in sorted(rc.get_primaries(), key=lambda n: min(ranges[f"{n.host}:{n.port}"], default=(0, 0))):
        where = f"{node.host}:{node.port}"
        spans = sorted(ranges[where])
        rows.append({"node": where, "slots": ", ".join(f"{lo}-{hi}" for lo, hi in spans),
                     "slot_count": sum(hi - lo + 1 for lo, hi in spans),
                     "keys": int(rc.get_redis_connection(node).dbsize())})
    return pd.DataFrame(rows, columns=["node", "slots", "slot_count", "keys"])


def shard_keys(rc: redis.cluster.RedisCluster, name: str, per_node: int = 1) -> list[str]:
    """``per_node`` hash-tagged list names on each primary, e.g. ``name{3}``: one list per node to spread a queue."""
    primaries = {f"{n.host}:{n.port}" for n in rc.get_primaries()}
    found: dict[str, list[str]] = defaultdict(list)
    tag = 0
    while any(len(found[p]) < per_node for p in primaries):
        key = f"{name}{{{tag}}}"
        where = node_of(rc, key)
        if len(found[where]) < per_node:
            found[where].append(key)
        tag += 1
    return [key for p in sorted(primaries) for key in found[p]]


@dataclass
class Enqueued:
    """What ``batch_enqueue`` sent: items per list, RPUSH commands and pipelines per node, seconds."""

    per_list: dict[str, int] = field(default_factory=dict)
    rpush_per_node: dict[str, int] = field(default_factory=dict)
    pipelines: int = 0
    seconds: float = 0.0

    @property
    def items(self) -> int:
        return sum(self.per_list.values())


def batch_enqueue(rc: redis.cluster.RedisCluster, lists: Sequence[str], items: Sequence[Any],
                  chunk: int = CHUNK) -> Enqueued:
    """Push ``items`` round-robin onto ``lists``: variadic RPUSH per list, one pipeline per node.

    Items are grouped per list, lists per node (by their slot), and each node gets one
    non-transactional pipeline of ``RPUSH list item…`` commands of up to ``chunk`` items. The node
    pipelines go out one after another from this thread; 3 nodes → 3 round trips for any batch
    that fits. Not atomic across lists: a failure leaves the earlier nodes' pushes in place.
    """
    if not lists:
        raise ValueError("batch_enqueue needs at least one list name")
    started = time.perf_counter()
    groups: dict[str, list[Any]] = {name: list(items[i::len(lists)]) for i, name in enumerate(lists)}
    by_node: dict[str, list[str]] = defaultdict(list)
    for name in lists:
        by_node[node_of(rc, name)].append(name)
    result = Enqueued()
    for where, names in by_node.items():
        pipe = rc.get_redis_connection(rc.get_node_from_key(names[0])).pipeline(transaction=False)
        commands = 0
        for name in names:
            values = groups[name]
            for start in range(0, len(values), chunk):
                pipe.rpush(name, *values[start:start + chunk])
                commands += 1
        if commands:
            pipe.execute()
            result.pipelines += 1
        result.rpush_per_node[where] = commands
    result.per_list = {name: len(values) for name, values in groups.items()}
    result.seconds = time.perf_counter() - started
    return result


def one_by_one_enqueue(rc: redis.cluster.RedisCluster, lists: Sequence[str], items: Sequence[Any]) -> float:
    """The naive way, for comparison: one RPUSH (one round trip) per item; returns seconds."""
    started = time.perf_counter()
    for i, item in enumerate(items):
        rc.rpush(lists[i % len(lists)], item)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- CROSSSLOT, shown


def _outcome(call: Callable[[], Any]) -> str:
    try:
        return f"ok: {call()!r}"
    except redis.exceptions.RedisError as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


def _same_node_other_slot(rc: redis.cluster.RedisCluster, prefix: str) -> tuple[str, str]:
    """Two untagged keys on the same node in different slots: CROSSSLOT is about slots, not nodes."""
    first = f"{prefix}a"
    for i in range(10_000):
        other = f"{prefix}b{i}"
        if node_of(rc, other) == node_of(rc, first) and key_slot(other) != key_slot(first):
            return first, other
    raise RuntimeError("no second key on the first key's node found")  # cannot happen with ≤ 64 nodes


def crossslot_cases(rc: redis.cluster.RedisCluster, prefix: str) -> pd.DataFrame:
    """Multi-key commands, MULTI/EXEC and Lua with two keys, untagged then hash-tagged (8장).

    Each command goes straight to the node serving the first key (``target_nodes``), so the table
    shows the *server's* answer, not redis-py's client-side refusal. The untagged pair sits on the
    same node in different slots: the server still refuses it.
    """
    a, b = _same_node_other_slot(rc, prefix)
    ta, tb = tagged(prefix, "user:1", "a"), tagged(prefix, "user:1", "b")
    rows = []
    for tags, (k1, k2) in (("no", (a, b)), ("yes", (ta, tb))):
        node = rc.get_node_from_key(k1)
        conn = rc.get_redis_connection(node)

        def on_node(*args: Any) -> Any:
            return rc.execute_command(*args, target_nodes=node)  # noqa: B023 (called in this iteration)

        def transaction() -> Any:
            pipe = conn.pipeline(transaction=True)  # noqa: B023
            pipe.incr(k1).incr(k2)  # noqa: B023
            return pipe.execute()

        cases = [
            ("MSET", lambda: on_node("MSET", k1, 1, k2, 2)),  # noqa: B023
            ("MGET", lambda: on_node("MGET", k1, k2)),  # noqa: B023
            ("RPOPLPUSH", lambda: on_node("RPOPLPUSH", k1 + ":q", k2 + ":q")),  # noqa: B023
            ("MULTI/EXEC", transaction),
            ("EVAL (Lua)", lambda: on_node("EVAL", SUM_LUA, 2, k1, k2)),  # noqa: B023
        ]
        for case, call in cases:
            rows.append({"case": case, "hash_tag": tags, "keys": f"{k1} {k2}",
                         "same_slot": key_slot(k1) == key_slot(k2), "outcome": _outcome(call)})
        rc.delete(k1)
        rc.delete(k2)
    return pd.DataFrame(rows, columns=["case", "hash_tag", "keys", "same_slot", "outcome"])


def cluster_figures(items: int = 100_000, repeat: int = 3) -> dict[str, float]:
    """Benchmark keys (``python -m redisopt.benchmarks``): a 3-node cluster's start time, batch enqueue rate.

    ``cluster_start_s``: from nothing to cluster_state:ok on every node (goal ≤ 10 s).
    ``cluster_batch_enqueue_items_per_s``: best of ``repeat`` runs of ``batch_enqueue`` over one
    hash-tagged list per node; ``cluster_one_by_one_items_per_s``: one RPUSH per item, for scale.
    """
    from redisopt.cluster import Cluster  # here, not at the top: cluster.py needs nothing from this module

    with Cluster(3) as cluster:
        rc = cluster.client()
        try:
            lists = shard_keys(rc, "redisopt:bench:cq", per_node=1)
            payload = [f"job-{i}" for i in range(items)]
            best = float("inf")
            for _ in range(repeat):
                for name in lists:
                    rc.delete(name)
                best = min(best, batch_enqueue(rc, lists, payload).seconds)
            few = payload[: max(items // 50, 100)]
            single = one_by_one_enqueue(rc, lists, few)
        finally:
            rc.close()
        return {"cluster_start_s": cluster.started_in, "cluster_batch_enqueue_items_per_s": items / best,
                "cluster_one_by_one_items_per_s": len(few) / single,
                "cluster_batch_vs_one_by_one": (items / best) / (len(few) / single)}


def scale_figures(quick: bool = False) -> dict[str, object]:
    """The 8장 benchmark keys: cluster start and batch enqueue, AOF writes/s per fsync policy.

    Both need a server binary (local or bundled); without one the keys are absent and
    ``scale_note`` says why.
    """
    from redisopt.cluster import ClusterUnavailableError
    from redisopt.persistence import persistence_figures

    try:
        return {**cluster_figures(10_000 if quick else 100_000),
                **persistence_figures(0.3 if quick else 1.0)}
    except ClusterUnavailableError as exc:
        return {"scale_note": str(exc)}
