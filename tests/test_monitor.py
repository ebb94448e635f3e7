"""Monitoring on real servers: exact INFO deltas, hit rate 0.0 when fresh, slowlog units, latency events,
commandstats, pipelined big-key scans, lock counting, and the dashboard's self-accounting."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import pytest
import redis

import redisopt
from redisopt import monitor
from redisopt.dashboard import Dashboard, run_workload
from redisopt.servers import UrlServer


@pytest.fixture(scope="module")
def lab() -> Iterator[redisopt.Server]:
    """A private server of this module's own: counters nobody else moves, slow log and latency on."""
    srv = redisopt.start_server({"slowlog-log-slower-than": 10_000, "slowlog-max-len": 1024,
                                 "latency-monitor-threshold": 5})
    yield srv
    srv.stop()


@pytest.fixture
def lr(lab: redisopt.Server) -> Iterator[redis.Redis]:
    client = lab.client()
    yield client
    client.close()


@pytest.fixture
def user(lab: redisopt.Server) -> Iterator[redis.Redis]:
    """The lab server reached as a REDIS_URL server would be: guarded."""
    client = UrlServer(f"redis://:{lab.password}@127.0.0.1:{lab.port}/0").client()
    yield client
    client.close()


def test_hit_rate_is_zero_on_a_fresh_server_where_the_article_divides_by_zero() -> None:
    srv = redisopt.start_server()
    try:
        r = srv.client()
        stats = r.info("stats")
        assert (stats["keyspace_hits"], stats["keyspace_misses"]) == (0, 0)
        assert monitor.hit_rate(stats) == 0.0
        with pytest.raises(ZeroDivisionError):
            monitor.article_hit_rate(stats)
        r.set("k", "v")
        r.get("k")
        r.get("missing")
        r.get("missing-too")
        assert monitor.hit_rate(r.info("stats")) == pytest.approx(1 / 3)
        r.close()
    finally:
        srv.stop()


def test_info_delta_counts_commands_exactly(lr: redis.Redis) -> None:
    before = monitor.info_snapshot(lr)
    for i in range(25):
        lr.set(f"delta:{i}", i)
    lr.get("delta:0")
    lr.get("delta:nope")
    after = monitor.info_snapshot(lr)
    delta = monitor.info_delta(before, after)
    # INFO is counted once it has run: the first snapshot's INFO lands in this delta, the second's does not.
    assert delta.loc["total_commands_processed", "delta"] == 25 + 2 + 1
    assert (delta.loc["keyspace_hits", "delta"], delta.loc["keyspace_misses", "delta"]) == (1, 1)
    assert monitor.hit_rate(before, after) == 0.5
    seconds = after.at - before.at
    assert monitor.ops_per_sec(before, after, own_commands=1) * seconds == pytest.approx(27)
    assert delta.loc["total_commands_processed", "per_s"] == pytest.approx(28 / seconds)
    chosen = monitor.info_delta(before, after, ["keyspace_hits", "uptime_in_seconds"])
    assert list(chosen.index) == ["keyspace_hits", "uptime_in_seconds"]
    with pytest.raises(ValueError, match="after"):
        monitor.info_delta(after, before)
    assert monitor.hit_rate(after, after) == 0.0  # no lookups in between: 0.0, not a ZeroDivisionError


def test_snapshot_keeps_numbers_only_and_flattens_nested_sections(lr: redis.Redis) -> None:
    lr.set("flat", 1)
    snap = monitor.info_snapshot(lr, "keyspace", "commandstats", "memory")
    assert snap["db0.keys"] >= 1
    assert snap["cmdstat_set.calls"] >= 1
    assert "used_memory_human" not in snap.values  # a string, not a number
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in snap.values.values())
    assert set(snap.frame().columns) == {"field", "value"}


def test_slowlog_durations_are_microseconds(lr: redis.Redis) -> None:
    last = monitor.slowlog_last_id(lr)
    started = time.perf_counter()
    lr.execute_command("DEBUG", "SLEEP", 0.05)  # 50 ms on the server's clock, at least
    wall_ms = (time.perf_counter() - started) * 1000
    log = monitor.slowlog(lr, after_id=last)
    entry = log[log["command"].str.startswith("DEBUG SLEEP")].iloc[0]
    assert entry["duration_us"] >= 50_000
    assert entry["duration_ms"] == entry["duration_us"] / 1000
    assert 50 <= entry["duration_ms"] <= wall_ms  # the server's own time fits inside the client's
    assert entry["duration_us"] > wall_ms  # read as ms (the article, mistake 15) it would outlast the call
    assert (log["id"] > last).all() and monitor.slowlog_last_id(lr) >= entry["id"]


def test_slowlog_on_a_user_server_reads_without_resetting(user: redis.Redis, lr: redis.Redis) -> None:
    last = monitor.slowlog_last_id(user)
    with pytest.raises(redisopt.DestructiveCommandError):
        user.execute_command("SLOWLOG", "RESET")
    with pytest.raises(redisopt.DestructiveCommandError):
        user.execute_command("CONFIG", "RESETSTAT")
    lr.execute_command("DEBUG", "SLEEP", 0.02)
    newer = monitor.slowlog(user, after_id=last)
    assert len(newer) >= 1 and newer["command"].str.startswith("DEBUG SLEEP").any()
    assert monitor.slowlog(user, after_id=monitor.slowlog_last_id(user)).empty
    with pytest.raises(ValueError):
        monitor.slowlog(user, 0)


def test_latency_monitor_records_spikes_in_milliseconds(lr: redis.Redis, user: redis.Redis) -> None:
    assert monitor.latency_threshold_ms(user) == 5  # CONFIG GET is allowed on a user server
    lr.execute_command("DEBUG", "SLEEP", 0.03)
    latest = monitor.latency_latest(lr).set_index("event")
    assert latest.loc["command", "max_ms"] >= 30
    history = monitor.latency_history(lr, "command")
    assert len(history) >= 1 and history["latency_ms"].max() >= 30
    with pytest.raises(redisopt.DestructiveCommandError, match="start_server"):
        monitor.enable_latency_monitor(user, 10)
    monitor.enable_latency_monitor(lr, 7)
    try:
        assert monitor.latency_threshold_ms(lr) == 7
    finally:
        monitor.enable_latency_monitor(lr, 5)
    with pytest.raises(ValueError):
        monitor.enable_latency_monitor(lr, -1)


def test_latency_latest_is_empty_while_the_monitor_is_off() -> None:
    srv = redisopt.start_server()
    try:
        r = srv.client()
        r.execute_command("DEBUG", "SLEEP", 0.02)
        assert monitor.latency_threshold_ms(r) == 0
        assert monitor.latency_latest(r).empty
        r.close()
    finally:
        srv.stop()


def test_command_stats_delta_and_top(lr: redis.Redis) -> None:
    before = monitor.command_stats(lr)
    lr.set("cs", "v")
    for _ in range(30):
        lr.get("cs")
    for _ in range(10):
        lr.set("cs", "w")
    after = monitor.command_stats(lr)
    delta = monitor.command_delta(before, after)
    assert delta.loc["get", "calls"] == 30 and delta.loc["set", "calls"] == 11
    assert delta.loc["info", "calls"] == 1  # the first INFO commandstats, counted after it ran
    assert (delta["usec_per_call"] == delta["usec"] / delta["calls"]).all()
    top = monitor.top_commands(delta, 2, by="calls")
    assert list(top.index) == ["get", "set"] and top["share"].iloc[0] == round(30 / 42, 3)
    with pytest.raises(ValueError, match="by must be"):
        monitor.top_commands(delta, by="nope")


def test_big_keys_pipelined_costs_scan_calls_not_one_round_trip_per_key(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    n = 300
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.set(ks.key("k", i), "x" * (10 + i))
    pipe.rpush(ks.key("list"), *range(2000))
    pipe.execute()
    with redisopt.count_round_trips(r) as ours:
        found = monitor.big_keys(r, ks.pattern(), count=100, top=3)
    with redisopt.count_round_trips(r) as article:
        theirs = monitor.article_large_keys(r, ks.pattern(), min_bytes=0)
    assert found.attrs["matched"] == n + 1
    assert found["key"].iloc[0] == ks.key("list") and found["type"].iloc[0] == "list"
    assert [k for k, _ in theirs[:3]] == list(found["key"])
    scans = ours.commands - 2 * (n + 1)  # TYPE + MEMORY USAGE per key; the rest are SCAN calls
    assert scans >= 1 and ours.round_trips <= scans + 1
    article_scans = article.commands - (n + 1)
    assert article.round_trips == article_scans + n + 1  # one round trip per key (mistake 14)


def test_big_keys_round_trips_are_about_keys_over_count(lr: redis.Redis) -> None:
    """On a server holding only these keys, the walk takes ~keys/count round trips."""
    lr.flushall()
    n, count = 2_000, 200
    lr.mset({f"bk:{i}": "v" * (i % 50) for i in range(n)})
    with redisopt.count_round_trips(lr) as trips:
        found = monitor.big_keys(lr, "bk:*", count=count)
    assert found.attrs["matched"] == n
    assert trips.round_trips <= 2 * n // count + 2  # ~n/count SCAN calls, each carrying the page before
    with redisopt.count_round_trips(lr) as one_by_one:
        monitor.article_large_keys(lr, "bk:*")
    assert one_by_one.round_trips >= n


def test_active_locks_counts_keys_with_a_ttl(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    locks = [redisopt.Lock(r, ks.key("lock", i), ttl=30) for i in range(5)]
    for lock in locks:
        lock.acquire()
    r.set(ks.key("lock", "no-ttl"), "forgotten")  # the article's bug (mistakes 1, 4): not an active lock
    try:
        assert monitor.count_keys(r, ks.pattern("lock")) > 5  # fencing counters and the stray key too
        assert monitor.active_locks(r, ks.pattern("lock")) == 5
        for lock in locks[:2]:
            lock.release()
        assert monitor.active_locks(r, ks.pattern("lock")) == 3
    finally:
        for lock in locks[2:]:
            lock.release()
    assert monitor.active_locks(r, ks.pattern("lock")) == 0


def test_dashboard_charges_itself_nothing(lr: redis.Redis) -> None:
    """Between two samples: 3 hits, 1 miss, 4 commands — exactly, the sampler's own INFO/LLEN/SCAN removed."""
    lr.rpush("dash:queue", "job")
    lr.set("dash:hit", 1)
    dash = Dashboard(lr, queue="dash:queue", locks="dash:lock:*")
    dash.sample()
    for _ in range(3):
        lr.get("dash:hit")
    lr.get("dash:miss")
    row = dash.sample()
    assert (row["queue_length"], row["active_locks"], row["lookups"]) == (1, 0, 4)
    assert (row["hit_rate"], row["hits"]) == (0.75, 3)
    seconds = row["t_s"] - dash.frame()["t_s"].iloc[0]
    assert row["ops_per_sec"] * seconds == pytest.approx(4)
    lr.unlink("dash:queue")
    row = dash.sample()  # LLEN of a missing list is a miss: subtracted too
    assert (row["queue_length"], row["lookups"]) == (0, 0)
    assert math.isnan(row["hit_rate"])  # no lookups: no rate (not a fake 0%)
    assert math.isnan(dash.frame()["hit_rate"].iloc[0])  # the first row has no interval
    dash.stop()


def test_dashboard_follows_a_workload_and_its_thread_ends(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    with Dashboard(r, queue=ks.key("queue", "jobs"), locks=ks.pattern("lock"), interval=0.02) as dash:
        report = run_workload(r, ks, jobs=600, bursts=2, pause=0.1, workers=3, items=50)
    frame = dash.frame()
    assert not dash.running
    assert not [t for t in threading.enumerate() if t.name == "redisopt-dashboard"]
    assert report.done == 600 and report.cache_hits + report.cache_misses == 600
    assert report.cache_misses <= 50 and math.isclose(report.cache_hit_rate, report.cache_hits / 600)
    assert len(frame) >= 3 and list(frame.columns)[:3] == ["t_s", "queue_length", "active_locks"]
    # SCAN is not a snapshot: a release + take across two SCAN calls counts one worker twice
    assert frame["queue_length"].max() <= 600 and frame["active_locks"].max() <= 3 + 1
    assert tuple(frame.iloc[-1][["queue_length", "active_locks"]]) == (0, 0)  # the final sample: all done
    assert frame["t_s"].is_monotonic_increasing and frame["hit_rate"].dropna().between(0, 1).all()
    assert monitor.count_keys(r, ks.pattern("cache")) <= 50


def test_dashboard_sampler_errors_surface_on_stop() -> None:
    srv = redisopt.start_server()
    client = srv.client()
    dash = Dashboard(client, queue="q", interval=0.01).start()
    srv.stop()
    with pytest.raises(RuntimeError, match="dashboard sampler failed"):
        dash.stop()
    assert not dash.running
    client.close()


def test_bad_arguments_are_refused(r: redis.Redis) -> None:
    with pytest.raises(ValueError):
        Dashboard(r, interval=0)
    with pytest.raises(ValueError):
        list(monitor.scan_with(r, "x", lambda pipe, key: None, count=0))
    with pytest.raises(ValueError):
        run_workload(r, redisopt.KeySpace("test:bad"), jobs=0)


def test_dashboard_takes_a_final_sample_on_stop(lr: redis.Redis) -> None:
    lr.unlink("final:queue")
    dash = Dashboard(lr, queue="final:queue", interval=30).start()
    deadline = time.monotonic() + 10
    while not len(dash.frame()) and time.monotonic() < deadline:  # the thread's first sample
        time.sleep(0.005)
    lr.rpush("final:queue", *range(7))
    frame = dash.stop()
    assert list(frame["queue_length"]) == [0, 7]
