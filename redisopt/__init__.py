"""redisopt: the helper package behind the Redis performance workbook.

Notebooks import from here only; each name lives in a small module named by its noun.
"""

import pandas as _pd

from redisopt.bench import (
    LatencyProbe,
    RoundTrips,
    compare,
    count_round_trips,
    measure,
    speedup,
    summarize,
    sweep,
    worst_stall_ms,
)
from redisopt.blocking import fill_hash, lazyfreed_objects, longest_us, plot_timelines, slowlog_entries
from redisopt.bulk import add_many, push_many, scan_keys, unlink_matching
from redisopt.cache import MISS, Cache, CacheStats
from redisopt.cluster import (
    Cluster,
    ClusterStartError,
    ClusterUnavailableError,
    cluster_of,
    start_cluster,
    stop_cluster,
)
from redisopt.clusterkeys import (
    Enqueued,
    batch_enqueue,
    crossslot_cases,
    hash_tag,
    key_slot,
    node_table,
    one_by_one_enqueue,
    shard_keys,
    slot_spread,
    tagged,
)
from redisopt.codecs import Codec, get_codec
from redisopt.contention import Hammered, contention_sweep, gaps_under_load, hammer, interleaving, on_one_connection
from redisopt.dashboard import Dashboard, WorkloadReport, plot_dashboard, run_workload
from redisopt.errors import (
    ConfigError,
    DestructiveCommandError,
    EncodeError,
    LockError,
    LockNotOwnedError,
    LockTimeout,
    NoServerError,
    PoolTimeoutError,
    RedisoptError,
    RetryLimitExceeded,
    ServerStartError,
    StaleTokenError,
)
from redisopt.eviction import EVICTION_POLICIES, EvictionWorkload, eviction_lab, eviction_run
from redisopt.expiry import ZSetExpiry, article_setnx_lock, crash_after_setnx, has_field_ttl
from redisopt.fencing import FencedResource
from redisopt.keyspace import KeySpace
from redisopt.leaderboard import Leaderboard, top_by_sorting
from redisopt.lock import Lock, LockStrategy
from redisopt.lockaudit import article_cleanup_expired_locks, locks_without_ttl, repair_lock_ttls
from redisopt.membership import membership_cases
from redisopt.memory import (
    embstr_boundary,
    embstr_max_value,
    encoding_zoo,
    encodings,
    memory_usage,
    predict_string_encodings,
    thresholds,
)
from redisopt.monitor import (
    InfoSnapshot,
    active_locks,
    article_hit_rate,
    article_large_keys,
    big_keys,
    command_delta,
    command_stats,
    count_keys,
    enable_latency_monitor,
    hit_rate,
    info_delta,
    info_snapshot,
    latency_history,
    latency_latest,
    latency_threshold_ms,
    ops_per_sec,
    scan_with,
    slowlog,
    slowlog_last_id,
    top_commands,
)
from redisopt.netem import LatencyProxy, RttReport
from redisopt.persistence import (
    FSYNC_POLICIES,
    KillOutcome,
    PersistenceLab,
    fsync_throughput,
    kill_during_writes,
    kill_table,
)
from redisopt.queue import ArticleQueueUpdate, RequestTable, WorkQueue
from redisopt.queuelab import queue_crash_lab
from redisopt.records import LAYOUTS, USER_FIELDS, RecordStore, has_command, resp_bulk_size, sample_users
from redisopt.reliable import Job, ReliableQueue
from redisopt.roundtrips import SET_MANY_LUA, ladder_cases, push_cases, round_trip_table, server_usec
from redisopt.server import Server, connect, default_server, start_server
from redisopt.staleset import GatedLoader, StaleSetResult, stale_set_race
from redisopt.store import SQLiteStore
from redisopt.streamqueue import StreamQueue
from redisopt.sweeps import bucket_of, bucketing, codec_table, count_sweep, size_sweep
from redisopt.txn import SharedCounter, TxnResult, article_watch_add, exec_replies, sequence_gaps, transact
from redisopt.writebehind import WriteBehindFlusher

# Hangul is double-width in a terminal font: let pandas pad tables so Korean columns line up.
_pd.set_option("display.unicode.east_asian_width", True)

__all__ = [
    "active_locks",
    "add_many",
    "article_cleanup_expired_locks",
    "article_hit_rate",
    "article_large_keys",
    "article_setnx_lock",
    "article_watch_add",
    "ArticleQueueUpdate",
    "batch_enqueue",
    "big_keys",
    "bucket_of",
    "bucketing",
    "Cache",
    "CacheStats",
    "Cluster",
    "cluster_of",
    "ClusterStartError",
    "ClusterUnavailableError",
    "Codec",
    "codec_table",
    "command_delta",
    "command_stats",
    "compare",
    "ConfigError",
    "connect",
    "contention_sweep",
    "count_keys",
    "count_round_trips",
    "count_sweep",
    "crash_after_setnx",
    "crossslot_cases",
    "Dashboard",
    "default_server",
    "DestructiveCommandError",
    "embstr_boundary",
    "embstr_max_value",
    "enable_latency_monitor",
    "EncodeError",
    "encoding_zoo",
    "encodings",
    "Enqueued",
    "eviction_lab",
    "EVICTION_POLICIES",
    "eviction_run",
    "EvictionWorkload",
    "exec_replies",
    "FencedResource",
    "fill_hash",
    "FSYNC_POLICIES",
    "fsync_throughput",
    "gaps_under_load",
    "GatedLoader",
    "get_codec",
    "hammer",
    "Hammered",
    "has_command",
    "has_field_ttl",
    "hash_tag",
    "hit_rate",
    "info_delta",
    "info_snapshot",
    "InfoSnapshot",
    "interleaving",
    "Job",
    "key_slot",
    "KeySpace",
    "kill_during_writes",
    "kill_table",
    "KillOutcome",
    "ladder_cases",
    "latency_history",
    "latency_latest",
    "latency_threshold_ms",
    "LatencyProbe",
    "LatencyProxy",
    "LAYOUTS",
    "lazyfreed_objects",
    "Leaderboard",
    "Lock",
    "LockError",
    "LockNotOwnedError",
    "locks_without_ttl",
    "LockStrategy",
    "LockTimeout",
    "longest_us",
    "measure",
    "membership_cases",
    "memory_usage",
    "MISS",
    "node_table",
    "NoServerError",
    "on_one_connection",
    "one_by_one_enqueue",
    "ops_per_sec",
    "PersistenceLab",
    "plot_dashboard",
    "plot_timelines",
    "PoolTimeoutError",
    "predict_string_encodings",
    "push_cases",
    "push_many",
    "queue_crash_lab",
    "RecordStore",
    "RedisoptError",
    "ReliableQueue",
    "repair_lock_ttls",
    "RequestTable",
    "resp_bulk_size",
    "RetryLimitExceeded",
    "round_trip_table",
    "RoundTrips",
    "RttReport",
    "run_workload",
    "sample_users",
    "scan_keys",
    "scan_with",
    "sequence_gaps",
    "Server",
    "server_usec",
    "ServerStartError",
    "SET_MANY_LUA",
    "shard_keys",
    "SharedCounter",
    "size_sweep",
    "slot_spread",
    "slowlog",
    "slowlog_entries",
    "slowlog_last_id",
    "speedup",
    "SQLiteStore",
    "stale_set_race",
    "StaleSetResult",
    "StaleTokenError",
    "start_cluster",
    "start_server",
    "stop_cluster",
    "StreamQueue",
    "summarize",
    "sweep",
    "tagged",
    "thresholds",
    "top_by_sorting",
    "top_commands",
    "transact",
    "TxnResult",
    "unlink_matching",
    "USER_FIELDS",
    "WorkloadReport",
    "WorkQueue",
    "worst_stall_ms",
    "WriteBehindFlusher",
    "ZSetExpiry",
]


def __getattr__(name: str) -> object:
    """Import ``redisopt.plots`` (matplotlib, fonts) only when a notebook first uses it."""
    if name == "plots":
        import importlib

        return importlib.import_module("redisopt.plots")
    raise AttributeError(f"module 'redisopt' has no attribute {name!r}")
