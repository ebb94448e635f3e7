"""The latency proxy: a delay line on loopback, real sockets, a real server behind it."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

import redisopt
from redisopt.netem import LatencyProxy
from redisopt.servers import UrlServer


def _ping_times_ms(client: redis.Redis, n: int) -> list[float]:
    client.ping()  # connect outside the measurement
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.ping()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("redisopt-latency-proxy")]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def proxy10(server: redisopt.Server) -> Iterator[LatencyProxy]:
    with LatencyProxy(server, 10) as proxy:
        yield proxy


@pytest.mark.parametrize("rtt_ms", [0.1, 1, 10])
def test_every_round_trip_takes_at_least_the_configured_rtt(server: redisopt.Server, rtt_ms: float) -> None:
    with LatencyProxy(server, rtt_ms) as proxy:
        client = proxy.client()
        try:
            fastest = min(_ping_times_ms(client, 30))
        finally:
            client.close()
        report = proxy.measure_rtt(samples=21)
    assert fastest >= rtt_ms, f"a PING through a {rtt_ms} ms proxy came back in {fastest:.3f} ms"
    assert report.configured_ms == rtt_ms
    assert report.proxied_ms >= rtt_ms
    assert report.added_ms == pytest.approx(report.proxied_ms - report.direct_ms)
    assert report.added_ms > 0.5 * rtt_ms  # the delay is really the proxy's, not the server's


def test_data_passes_unchanged(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    big = os.urandom(8 * 1024 * 1024)  # larger than any socket buffer: partial sends and reads
    with LatencyProxy(server, 1) as proxy:
        client = proxy.client(decode_responses=False)
        try:
            client.set(ks.key("big"), big)
            assert client.get(ks.key("big")) == big
            pipe = client.pipeline(transaction=False)
            values = [os.urandom(i % 300) for i in range(2000)]
            for i, value in enumerate(values):
                pipe.rpush(ks.key("list"), value)
                pipe.lindex(ks.key("list"), i)
            replies = pipe.execute()
            assert replies[1::2] == values
            assert replies[0::2] == list(range(1, len(values) + 1))
            with client.pipeline(transaction=True) as txn:
                replies = txn.get(ks.key("big")).strlen(ks.key("big")).execute()
            assert replies == [big, len(big)]
        finally:
            client.close()


def test_a_pipeline_pays_one_round_trip_single_commands_pay_each(proxy10: LatencyProxy,
                                                                  ks: redisopt.KeySpace) -> None:
    client = proxy10.client()
    try:
        client.ping()
        pipe = client.pipeline(transaction=False)
        for i in range(100):
            pipe.set(ks.key(i), i)
        with redisopt.count_round_trips(client) as counted:
            start = time.perf_counter()
            pipe.execute()
            pipelined = time.perf_counter() - start
        assert counted.round_trips == 1 and counted.commands == 100  # still instrumented
        start = time.perf_counter()
        for i in range(20):
            client.get(ks.key(i))
        singles = time.perf_counter() - start
    finally:
        client.close()
    # Structural bounds, not speed goals: a sleep per chunk would make the pipeline pay 100 RTTs.
    assert pipelined < 20 * 0.010, f"100 pipelined commands took {pipelined * 1e3:.1f} ms"
    assert singles >= 20 * 0.010, f"20 single commands took only {singles * 1e3:.1f} ms"


def test_several_clients_at_once(proxy10: LatencyProxy, ks: redisopt.KeySpace) -> None:
    clients = [proxy10.client() for _ in range(6)]
    errors: list[BaseException] = []
    start_together = threading.Barrier(len(clients))

    def work(n: int, client: redis.Redis) -> None:
        try:
            start_together.wait()
            for _ in range(10):
                client.incr(ks.key("counter"))
                client.rpush(ks.key("by", n), n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n, c)) for n, c in enumerate(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    while proxy10.connections < len(clients) and time.perf_counter() - start < 5:
        time.sleep(0.002)
    relayed = proxy10.connections
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    try:
        assert not errors
        assert relayed == len(clients)
        assert int(clients[0].get(ks.key("counter"))) == 60
        for n in range(len(clients)):
            assert clients[0].lrange(ks.key("by", n), 0, -1) == [str(n)] * 10
    finally:
        for c in clients:
            c.close()
    # 20 round trips each, relayed side by side: far less than the 120 RTTs of one queue.
    assert elapsed < 60 * 0.010


def test_stop_leaves_nothing_and_clients_fail_fast(server: redisopt.Server) -> None:
    fds = _open_fds()
    proxy = LatencyProxy(server, 1).start()
    port = proxy.port
    client = proxy.client(socket_timeout=30)
    client.ping()
    assert proxy.connections == 1 and len(_proxy_threads()) == 1
    proxy.stop()
    assert not proxy.running and _proxy_threads() == []
    start = time.perf_counter()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()  # its relayed connection is closed: an error, not a 30 s wait
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()  # and nothing listens any more
    assert time.perf_counter() - start < 5
    client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert _open_fds() == fds  # listener, wake-up pair and both ends of every link closed
    proxy.stop()  # twice is harmless


def test_a_client_through_the_proxy_keeps_the_servers_guard(server: redisopt.Server,
                                                            ks: redisopt.KeySpace) -> None:
    user_server = UrlServer(f"redis://:{server.password}@127.0.0.1:{server.port}/0")
    with LatencyProxy(user_server, 0.1) as proxy:
        guarded = proxy.client()
        try:
            with pytest.raises(redisopt.DestructiveCommandError):
                guarded.flushdb()
            guarded.set(ks.key("ok"), 1)
            assert guarded.get(ks.key("ok")) == "1"
        finally:
            guarded.close()


@pytest.mark.parametrize("rtt", [-1, float("nan"), float("inf"), "1"])
def test_a_bad_rtt_is_refused(server: redisopt.Server, rtt: object) -> None:
    with pytest.raises(ValueError, match="rtt_ms"):
        LatencyProxy(server, rtt)  # type: ignore[arg-type]


def test_a_client_needs_a_running_proxy(server: redisopt.Server) -> None:
    with pytest.raises(RuntimeError, match="start the latency proxy"):
        LatencyProxy(server, 1).client()


def test_a_proxy_nobody_holds_stops_its_thread(server: redisopt.Server) -> None:
    proxy = LatencyProxy(server, 1).start()
    client = proxy.client()
    client.ping()
    del proxy
    gc.collect()
    assert len(_proxy_threads()) == 1  # its client keeps it alive
    client.close()
    del client
    gc.collect()
    deadline = time.monotonic() + 5
    while _proxy_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _proxy_threads() == []
