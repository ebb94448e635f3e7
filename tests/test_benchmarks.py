"""The benchmark script: the shape and sanity of what it reports (the figures go in notes, not asserts)."""

from __future__ import annotations

import json
import shutil

import pytest

from redisopt.benchmarks import main


@pytest.fixture(scope="module")
def report() -> dict:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--json", "--quick"]) == 0
    return json.loads(out.getvalue())


def test_json_has_every_key_issue_6_names(report: dict) -> None:
    for key in ("enqueue_many_items_per_s", "raw_variadic_items_per_s", "redis_benchmark_rpush_p100_per_s",
                "pipeline_speedup", "variadic_speedup", "lock_round_trips", "lock_acquire_release_per_s", "ran_on"):
        assert key in report, key
    assert set(report["pipeline_speedup"]) == set(report["variadic_speedup"]) == {"loopback", "proxy_1ms"}
    assert {"server", "version", "backend", "python", "cpu_count"} <= set(report["ran_on"])


def test_figures_are_sane(report: dict) -> None:
    assert report["lock_round_trips"] == 2  # exact: one script or command to acquire, one to release
    assert report["enqueue_many_items_per_s"] > 0 and report["raw_variadic_items_per_s"] > 0
    assert report["proxy_1ms_measured_rtt_ms"] >= 1.0  # the proxy never adds less than asked
    for speedups in (report["pipeline_speedup"], report["variadic_speedup"]):
        assert all(value > 1 for value in speedups.values())  # batching never loses to one per round trip
    batch = report["speedup_batch"]
    assert set(batch) == {"loopback", "proxy_1ms"} and all(n >= 100 for n in batch.values())
    single, piped = report["single_us_per_set"], report["pipeline_us_per_set"]
    assert single["proxy_1ms"] >= 1_000 > single["loopback"]  # one SET per round trip pays the proxy's RTT
    assert piped["proxy_1ms"] < single["proxy_1ms"] and report["pipeline_speedup_ceiling_proxy_1ms"] > 1


def test_enqueue_many_sends_what_it_was_given(report: dict) -> None:
    """Not a speed check: the helper and the hand-written RPUSH both pushed every item (or they timed nothing)."""
    assert report["enqueue_items"] == report["raw_items"] > 0


def test_redis_benchmark_is_reported_or_explained(report: dict) -> None:
    if shutil.which("redis-benchmark") or shutil.which("valkey-benchmark"):
        assert report["redis_benchmark_rpush_p100_per_s"] > 0, report["redis_benchmark_note"]
    else:
        assert report["redis_benchmark_rpush_p100_per_s"] is None
        assert "not on PATH" in report["redis_benchmark_note"]


def test_the_table_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    from redisopt.benchmarks import table

    text = table({"lock_round_trips": 2, "pipeline_speedup": {"loopback": 7.123, "proxy_1ms": 150.0}})
    assert text.splitlines() == ["lock_round_trips                     2",
                                 "pipeline_speedup                     loopback=7.12, proxy_1ms=150"]
