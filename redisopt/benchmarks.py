"""``python -m redisopt.benchmarks [--json] [--quick]``: the speed goals, as ratios measured in one run.

Tests never assert wall-clock speed; this script does the measuring instead, against a private
server it starts (benchmarks hammer a server, so never the REDIS_URL one). Every figure is the best
of a few repeats, and every comparison is made in the same run on the same server, so the ratios
hold even where the absolute numbers move with the machine.

Goals (issue 6): ``enqueue_many`` ≥ 1.5 × ``redis-benchmark -P 100 -t rpush`` and ≥ 0.9 × a
hand-written variadic RPUSH; an uncontended lock costs 2 round trips; a pipeline through a 1 ms
proxy is ≥ 100 × faster than one command per round trip.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import redis

from redisopt.bench import count_round_trips
from redisopt.bulk import CHUNK, chunked, insert_cases, unlink_matching
from redisopt.cachebench import cache_benchmarks
from redisopt.clusterkeys import scale_figures
from redisopt.codecs import get_codec
from redisopt.keyspace import WORKBOOK, KeySpace
from redisopt.lock import Lock
from redisopt.netem import LatencyProxy
from redisopt.queue import WorkQueue
from redisopt.queuelab import reliable_figures
from redisopt.server import start_server
from redisopt.servers import Server

PREFIX = KeySpace(WORKBOOK).key("bench")  # redisopt:bench
# SETs per batch through the 1 ms proxy: big enough that the pipeline's one RTT (~1.3 ms) is small
# next to its client work (~15-20 µs per SET in redis-py here), so the ratio measures that work
PROXY_BATCH = 1_000


def best_of(fn: Callable[[], Any], repeat: int = 3, setup: Callable[[], Any] | None = None) -> float:
    """The fastest of ``repeat`` timed calls, in seconds (noise only ever adds time)."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def enqueue(client: redis.Redis, items: list[Any], codec: str = "orjson") -> dict[str, float]:
    """WorkQueue.put_many against a hand-written variadic RPUSH of the same encoded items.

    The hand-written loop keeps each chunk's 1,000 orjson results alive until its RPUSH is sent,
    and that is slow here for an allocator reason (see ``codecs``): each result holds a ~4 KiB
    heap block, freeing a chunk's ~4 MB lets glibc trim the heap top, and the next chunk faults it
    back in page by page (~430 minor faults per chunk; none with MALLOC_TRIM_THRESHOLD_ raised).
    put_many frames each value into its RESP chunk and drops it at once, so it never builds up.
    """
    key = f"{PREFIX}:raw"
    queue = WorkQueue(client, "bench", codec)
    dumps = get_codec(codec).encode

    def raw() -> None:  # what a careful engineer writes by hand: encode a chunk, send it
        for part in chunked(items, CHUNK):
            client.rpush(key, *[dumps(item) for item in part])

    def clear() -> None:
        client.unlink(key, queue.key)

    raw_s = best_of(raw, setup=clear)
    pushed = {"raw_items": client.llen(key)}  # the last run of each, as a check that it timed real work
    helper_s = best_of(lambda: queue.put_many(items), setup=clear)
    pushed["enqueue_items"] = len(queue)
    clear()
    return {"enqueue_many_items_per_s": len(items) / helper_s, "raw_variadic_items_per_s": len(items) / raw_s,
            **pushed}


def redis_benchmark_rpush(server: Server, requests: int, repeat: int = 3) -> tuple[float | None, str]:
    """``redis-benchmark -P 100 -t rpush`` against the same server: the best of ``repeat`` runs, as ours."""
    tool = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if tool is None:
        return None, "redis-benchmark is not on PATH (Debian: apt-get install redis-tools)"
    # redis-benchmark ignores REDISCLI_AUTH: the password of this throwaway private server goes on
    # its command line (visible to this user and root only, for the few seconds it runs).
    command = [tool, "-h", server.host, "-p", str(server.port), "-a", server.password or "", "-P", "100",
               "-t", "rpush", "-n", str(requests), "-q", "--csv"]
    rates = []
    for _ in range(repeat):
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"{tool} did not run: {exc}"
        match = re.search(r'"RPUSH[^"]*","([\d.]+)"', out)
        if not match:
            return None, f"{tool} printed no RPUSH rate: {out.strip()[:200]!r}"
        rates.append(float(match.group(1)))
    return max(rates), f"{os.path.basename(tool)}, best of {repeat}"


def speedups(client: redis.Redis, n: int) -> dict[str, float]:
    """One SET per round trip vs one pipeline of them vs one variadic MSET, ``n`` keys (4장's ladder).

    Also each path's time per command (µs): a pipeline can beat single commands by at most
    ``single_us / pipeline_us`` at loopback's client cost, whatever the batch (its one RTT shrinks as n grows).
    """
    cases = insert_cases(client, f"{PREFIX}:k", n)
    keys = [f"{PREFIX}:k:{i}" for i in range(n)]

    def raw_pipeline() -> None:  # the same SETs, queued as raw commands: no redis-py set() option parsing
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("SET", key, "v")
        pipe.execute()

    client.ping()  # connect outside the timing
    single_s = best_of(cases["개별 SET"])
    pipeline_s = best_of(cases["파이프라인"])
    raw_s = best_of(raw_pipeline)
    result = {"pipeline": single_s / pipeline_s, "variadic": single_s / best_of(cases["MSET (가변 인자)"]),
              "raw_pipeline": single_s / raw_s, "single_us": single_s / n * 1e6,
              "pipeline_us": pipeline_s / n * 1e6, "raw_pipeline_us": raw_s / n * 1e6}
    unlink_matching(client, f"{PREFIX}:k:*")
    return result


def lock_figures(client: redis.Redis, n: int) -> dict[str, Any]:
    lock = Lock(client, f"{PREFIX}:lock", ttl=10.0)
    lock.acquire()
    lock.release()  # the first use loads the scripts and detects the server's commands
    with count_round_trips(client) as rt:
        lock.acquire()
        lock.release()

    def cycle() -> None:
        for _ in range(n):
            lock.acquire()
            lock.release()

    client.unlink(lock.key, lock.fencing_key)
    return {"lock_round_trips": rt.round_trips, "lock_acquire_release_per_s": n / best_of(cycle),
            "lock_strategy": str(lock.strategy)}


def run(quick: bool = False) -> dict[str, Any]:
    """Every figure, on a private server started for the purpose and stopped at the end."""
    scale = 10 if quick else 1
    server = start_server()
    client = server.client()
    try:
        items = [{"id": i, "kind": "job", "tries": 0} for i in range(200_000 // scale)]
        result: dict[str, Any] = enqueue(client, items)
        rate, how = redis_benchmark_rpush(server, 1_000_000 // scale)
        result["redis_benchmark_rpush_p100_per_s"] = rate
        result["redis_benchmark_note"] = how
        batch = {"loopback": 2_000 // scale, "proxy_1ms": PROXY_BATCH // scale}
        loopback = speedups(client, batch["loopback"])
        with LatencyProxy(server, rtt_ms=1.0) as proxy:
            slow = proxy.client()
            try:
                proxied = speedups(slow, batch["proxy_1ms"])
                result["proxy_1ms_measured_rtt_ms"] = proxy.measure_rtt(samples=21).proxied_ms
            finally:
                slow.close()
        result["pipeline_speedup"] = {"loopback": loopback["pipeline"], "proxy_1ms": proxied["pipeline"]}
        result["variadic_speedup"] = {"loopback": loopback["variadic"], "proxy_1ms": proxied["variadic"]}
        # the same pipelines queued with execute_command("SET", …), against the same one-SET-per-round-trip time
        result["pipeline_speedup_execute_command"] = {"loopback": loopback["raw_pipeline"],
                                                      "proxy_1ms": proxied["raw_pipeline"]}
        result["speedup_batch"] = batch  # SETs per batch, each timed as one SET per round trip
        result["pipeline_us_per_set"] = {"loopback": loopback["pipeline_us"], "proxy_1ms": proxied["pipeline_us"],
                                         "loopback_execute_command": loopback["raw_pipeline_us"]}
        result["single_us_per_set"] = {"loopback": loopback["single_us"], "proxy_1ms": proxied["single_us"]}
        # the most any batch size could give through the proxy at this client's cost per pipelined SET
        result["pipeline_speedup_ceiling_proxy_1ms"] = proxied["single_us"] / loopback["pipeline_us"]
        result.update(lock_figures(client, 2_000 // scale))
        result.update(reliable_figures(client, 2_000 // scale))  # claim_many vs one claim per job
        result.update(cache_benchmarks(client, quick))  # 6장: cache_hit_vs_raw_get, stampede_db_loads_*, codec_*
        if rate:
            result["enqueue_vs_redis_benchmark"] = result["enqueue_many_items_per_s"] / rate
        result["enqueue_vs_raw_variadic"] = result["enqueue_many_items_per_s"] / result["raw_variadic_items_per_s"]
        result.update(scale_figures(quick))  # 8장: cluster_start_s, cluster_batch_enqueue_items_per_s, aof_*
        result["ran_on"] = {
            "server": server.name, "version": server.version, "backend": server.backend,
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "quick": quick,
        }
        return result
    finally:
        client.close()
        server.stop()


def table(result: dict[str, Any]) -> str:
    """The figures as aligned text for a terminal."""
    lines = []
    for name, value in result.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
        lines.append(f"{name:<36} {_fmt(value)}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m redisopt.benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--quick", action="store_true", help="a tenth of the work (for a smoke test)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
