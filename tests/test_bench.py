"""Measuring tools: exact round-trip counts, tidy timing frames, the latency probe."""

from __future__ import annotations

import pandas as pd
import pytest
import redis

import redisopt


def test_round_trips_single_pipeline_variadic(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    key = ks.key("q")
    r.ping()  # the pool's connection exists before counting
    with redisopt.count_round_trips(r) as single:
        for i in range(1000):
            r.rpush(key, i)
    with redisopt.count_round_trips(r) as piped:
        pipe = r.pipeline(transaction=False)
        for i in range(1000):
            pipe.rpush(key, i)
        pipe.execute()
    with redisopt.count_round_trips(r) as variadic:
        r.rpush(key, *range(1000))
    assert (single.round_trips, single.commands) == (1000, 1000)
    assert (piped.round_trips, piped.commands) == (1, 1000)
    assert (variadic.round_trips, variadic.commands) == (1, 1)
    assert r.llen(key) == 3000


def test_transaction_pipeline_adds_multi_and_exec(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    r.ping()
    with redisopt.count_round_trips(r) as rt:
        pipe = r.pipeline(transaction=True)
        for i in range(100):
            pipe.rpush(ks.key("q"), i)
        pipe.execute()
    assert (rt.round_trips, rt.commands) == (1, 102)


def test_handshake_is_counted_apart(server: redisopt.Server) -> None:
    fresh = server.client()  # no connection yet
    with redisopt.count_round_trips(fresh) as rt:
        fresh.ping()
    assert (rt.round_trips, rt.commands, rt.connects) == (1, 1, 1)
    fresh.close()


def test_counts_follow_threads_on_one_client(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    import threading

    def work() -> None:
        for _ in range(200):
            r.incr(ks.key("n"))

    with redisopt.count_round_trips(r) as rt:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert rt.commands == 800 and rt.round_trips == 800
    assert r.get(ks.key("n")) == "800"


def test_foreign_client_cannot_be_counted(server: redisopt.Server) -> None:
    plain = redis.Redis(host=server.host, port=server.port, password=server.password)
    with pytest.raises(TypeError, match="not made by redisopt"):
        with redisopt.count_round_trips(plain):
            pass
    plain.close()


def test_compare_returns_one_row_per_run_round_robin() -> None:
    calls: list[str] = []
    setups: list[int] = []
    df = redisopt.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                          repeat=3, warmup=1, number=2, setup=lambda: setups.append(1), size=10)
    assert list(df.columns) == ["case", "run", "seconds", "per_call_us", "size"]
    assert len(df) == 6 and list(df["case"]) == ["a", "b"] * 3
    assert (df["size"] == 10).all() and (df["seconds"] > 0).all()
    assert calls.count("a") == 1 + 3 * 2 and len(setups) == 2 * (1 + 3 * 2)


def test_summarize_and_speedup() -> None:
    df = pd.DataFrame({"case": ["slow"] * 3 + ["fast"] * 3, "seconds": [0.3, 0.2, 0.4, 0.01, 0.02, 0.03]})
    summary = redisopt.summarize(df)
    assert list(summary.columns) == ["median_ms", "min_ms", "max_ms", "runs"]
    assert summary.loc["slow", "median_ms"] == 300.0 and summary.loc["fast", "runs"] == 3
    assert redisopt.speedup(df, "slow", "fast") == pytest.approx(15.0)
    with pytest.raises(KeyError, match="nope"):
        redisopt.speedup(df, "slow", "nope")


def test_sweep_adds_the_parameter_column() -> None:
    df = redisopt.sweep(lambda n: {"x": lambda: sum(range(n))}, "n", [10, 100], repeat=2)
    assert sorted(df["n"].unique()) == [10, 100] and len(df) == 4


@pytest.mark.parametrize("kwargs", [{"repeat": 0}, {"number": 0}, {"warmup": -1}])
def test_compare_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        redisopt.compare({"a": lambda: None}, **kwargs)


def test_latency_probe_sees_a_blocked_server(r: redis.Redis) -> None:
    with redisopt.LatencyProbe(r, interval=0.002) as probe:
        r.execute_command("DEBUG", "SLEEP", "0.2")
    timeline = probe.timeline()
    assert list(timeline.columns) == ["t_ms", "latency_ms"]
    assert timeline["t_ms"].is_monotonic_increasing
    assert redisopt.worst_stall_ms(timeline) >= 150  # a ping waited behind the 200 ms sleep
    assert len(timeline) >= 5


def test_latency_probe_does_not_count_against_the_client(r: redis.Redis) -> None:
    r.ping()
    with redisopt.count_round_trips(r) as rt:
        with redisopt.LatencyProbe(r, interval=0.001):
            r.ping()
    assert rt.round_trips == 1


def test_progress_bars_stay_off_for_tests_and_committed_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from redisopt.bench import progress_enabled

    monkeypatch.setenv("REDISOPT_PROGRESS", "0")
    assert progress_enabled() is False
    monkeypatch.delenv("REDISOPT_PROGRESS")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert progress_enabled() is True


def test_speedup_on_minimums_ignores_one_slow_outlier() -> None:
    # One run of "fast" hit by noise (a loaded machine) drags its median, never its minimum.
    df = pd.DataFrame({"case": ["slow"] * 3 + ["fast"] * 3, "seconds": [6.0, 6.0, 6.0, 1.0, 9.0, 9.0]})
    assert redisopt.speedup(df, "slow", "fast", stat="min") == 6.0
    assert redisopt.speedup(df, "slow", "fast") < 1
    with pytest.raises(ValueError, match="stat"):
        redisopt.speedup(df, "slow", "fast", stat="mean")


def test_lines_plot_draws_the_chosen_statistic(monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda: None)
    df = pd.DataFrame({"n": [1, 1, 1, 2, 2, 2], "us": [5.0, 1.0, 9.0, 7.0, 2.0, 8.0], "case": ["a"] * 6})
    redisopt.plots.lines(df, x="n", y="us", hue="case", title="t", xlabel="x", ylabel="y", stat="min")
    line = plt.gca().get_lines()[0]
    assert list(line.get_ydata()) == [1.0, 2.0]
    plt.close("all")
    with pytest.raises(ValueError, match="stat"):
        redisopt.plots.lines(df, x="n", y="us", hue="case", title="t", xlabel="x", ylabel="y", stat="mean")
