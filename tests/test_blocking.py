"""Helpers that make a blocked server visible (4장), against a real private server."""

from __future__ import annotations

from collections.abc import Iterator

import matplotlib
import pytest
import redis

import redisopt
from redisopt.blocking import SLOWLOG_MAX_ARGS

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def logged() -> Iterator[redis.Redis]:
    """A private server that records every command in its SLOWLOG."""
    server = redisopt.start_server({"slowlog-log-slower-than": 0, "slowlog-max-len": 1_000,
                                    "lazyfree-lazy-user-del": "no"})
    client = server.client()
    yield client
    client.close()
    server.stop()


def test_fill_hash_builds_exactly_the_fields_asked_for(logged: redis.Redis) -> None:
    logged.unlink("h")
    assert redisopt.fill_hash(logged, "h", 2_500, chunk=1_000) == 2_500
    assert logged.hlen("h") == 2_500
    assert set(logged.hkeys("h")) == {str(i) for i in range(1, 2_501)}
    assert set(logged.hvals("h")) == {"v"}
    assert redisopt.fill_hash(logged, "h", 10) == 2_500  # fields 1..10 already there: overwritten, not added
    with pytest.raises(ValueError):
        redisopt.fill_hash(logged, "h", 0)


def test_slowlog_entries_count_arguments_past_the_servers_truncation(logged: redis.Redis) -> None:
    logged.slowlog_reset()
    logged.unlink(*[f"k{i}" for i in range(600)])
    logged.ping()
    entries = redisopt.slowlog_entries(logged)
    assert list(entries["command"]) == ["UNLINK", "PING"]  # SLOWLOG RESET/GET left out, oldest first
    assert list(entries["argc"]) == [601, 1]
    assert (entries["duration_us"] >= 0).all()
    assert redisopt.longest_us(entries, "unlink") == int(entries["duration_us"].iloc[0])
    assert redisopt.longest_us(entries, "KEYS") == 0


def test_slowlog_entries_keep_a_short_command_as_it_is(logged: redis.Redis) -> None:
    logged.slowlog_reset()
    args = [f"k{i}" for i in range(SLOWLOG_MAX_ARGS - 1)]  # exactly 32 with the name: not truncated
    logged.unlink(*args)
    assert list(redisopt.slowlog_entries(logged)["argc"]) == [SLOWLOG_MAX_ARGS]


def test_lazyfreed_objects_counts_only_values_freed_in_the_background(logged: redis.Redis) -> None:
    limit = int(logged.config_get("hash-max-listpack-entries")["hash-max-listpack-entries"])
    logged.hset("small", mapping={f"f{i}": i for i in range(10)})
    logged.hset("large", mapping={f"f{i}": i for i in range(max(limit + 1, 1_000))})
    before = redisopt.lazyfreed_objects(logged)
    logged.unlink("small")
    assert redisopt.lazyfreed_objects(logged) == before  # a listpack is one allocation: freed at once
    logged.unlink("large")
    assert redisopt.lazyfreed_objects(logged) == before + 1
    logged.hset("large", mapping={f"f{i}": i for i in range(1_000)})
    logged.delete("large")  # lazyfree-lazy-user-del no: DEL frees in place
    assert redisopt.lazyfreed_objects(logged) == before + 1
    with pytest.raises(ValueError):
        redisopt.lazyfreed_objects(logged, timeout=-1)


def test_plot_timelines_draws_one_panel_per_timeline_on_one_scale(logged: redis.Redis) -> None:
    import matplotlib.pyplot as plt

    with redisopt.LatencyProbe(logged, interval=0.002) as probe:
        logged.ping()
    tl = probe.timeline()
    plt.close("all")
    redisopt.plot_timelines({"a": tl, "b": tl.assign(latency_ms=tl["latency_ms"] * 10)}, title="t")
    fig = plt.gcf()
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim()
    plt.close("all")


def test_lazyfreed_objects_waits_for_the_background_free_to_finish(logged: redis.Redis) -> None:
    redisopt.fill_hash(logged, "huge", 300_000)  # its background free takes tens of ms
    before = redisopt.lazyfreed_objects(logged)
    logged.unlink("huge")
    assert redisopt.lazyfreed_objects(logged) == before + 1
