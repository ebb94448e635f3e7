"""A latency proxy: a TCP relay on loopback that adds a chosen round-trip time (2장).

Loopback answers in ~50 µs, so every round trip looks free; a real network charges 0.1–10 ms per
round trip, which is what pipelines and variadic commands save. The proxy sits between a client and
a server and delays each direction by half the chosen RTT.

It is a *delay line*, not a sleep per chunk: every chunk read is stamped with its arrival time and
forwarded, in order, once ``now >= stamp + rtt/2``. A pipeline of 100 commands therefore pays one
RTT (all its bytes travel together), while 100 single commands pay 100 — exactly what a network
does. A sleep per chunk would serialize the chunks and make a pipeline look as slow as single
commands.

Timer granularity decides whether sub-millisecond delays are possible: epoll (and so asyncio)
sleeps in whole milliseconds (``asyncio.sleep(0.05 ms)`` measured 1.14 ms here). The relay waits
with ``select()``, which sleeps in microseconds but overshoots by ~60–100 µs, so it wakes
``SPIN_S`` early and polls until the deadline. It only spins while data is in flight, so an idle
proxy costs no CPU. A delay is never shorter than asked, only slightly longer (``measure_rtt``).
"""

from __future__ import annotations

import math
import select
import socket
import statistics
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from redisopt.errors import ConfigError

if TYPE_CHECKING:
    from redisopt.servers import Server

__all__ = ["LatencyProxy", "RttReport"]

SPIN_S = 0.0003  # wake this long before a deadline and poll: select() overshoots by ~60-100 µs
CHUNK = 256 * 1024  # bytes read per recv
MAX_IN_FLIGHT = 64 * 1024 * 1024  # per direction: stop reading a side whose bytes are not leaving
CONNECT_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class RttReport:
    """Median PING round trips, direct and through the proxy, in milliseconds."""

    configured_ms: float
    direct_ms: float
    proxied_ms: float
    samples: int

    @property
    def added_ms(self) -> float:
        """What the proxy adds to a round trip (should be at least ``configured_ms``)."""
        return self.proxied_ms - self.direct_ms


class _Pipe:
    """One direction of a link: bytes read from ``src`` wait in the line, then go to ``dst``."""

    __slots__ = ("src", "dst", "line", "out", "pending", "eof")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.line: deque[tuple[float, bytes]] = deque()  # (due time, chunk), in arrival order
        self.out = bytearray()  # due bytes the destination has not accepted yet
        self.pending = 0  # bytes in line + out
        self.eof = False  # src closed: close the link once everything before it is delivered

    def drained(self) -> bool:
        return not self.line and not self.out


class _Link:
    __slots__ = ("client", "upstream", "pipes")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.pipes = (_Pipe(client, upstream), _Pipe(upstream, client))

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            try:
                sock.close()
            except OSError:
                pass


class _Relay:
    """The proxy's loop: one thread, non-blocking sockets, ``select`` with microsecond timeouts.

    Holds no reference to the LatencyProxy, so a proxy nobody uses can be collected (and stopped).
    """

    def __init__(self, listener: socket.socket, upstream: tuple[str, int], half_delay: float) -> None:
        self.listener, self.upstream, self.half = listener, upstream, half_delay
        self.links: list[_Link] = []
        self._by_src: dict[socket.socket, tuple[_Link, _Pipe]] = {}
        self.error: BaseException | None = None
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)

    def stop(self) -> None:
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def run(self) -> None:
        try:
            while not self._stop:
                self._step()
        except BaseException as exc:  # surfaced by LatencyProxy.stop()
            self.error = exc
        finally:
            for link in self.links:
                link.close()
            self.links.clear()
            self._by_src.clear()
            for sock in (self.listener, self._wake_r, self._wake_w):
                sock.close()

    def _step(self) -> None:
        now = time.perf_counter()
        next_due = math.inf
        for link in list(self.links):
            for pipe in link.pipes:
                line = pipe.line
                while line and line[0][0] <= now:
                    pipe.out += line.popleft()[1]
                if pipe.out:
                    self._send(link, pipe)
                if line:
                    next_due = min(next_due, line[0][0])
            if any(p.eof and p.drained() for p in link.pipes) and link in self.links:
                self._drop(link)
        readers: list[socket.socket] = [self.listener, self._wake_r]
        writers: list[socket.socket] = []
        for link in self.links:
            for pipe in link.pipes:
                if not pipe.eof and pipe.pending < MAX_IN_FLIGHT:
                    readers.append(pipe.src)
                if pipe.out:
                    writers.append(pipe.dst)
        if next_due == math.inf:
            timeout: float | None = None
        else:
            left = next_due - time.perf_counter()
            timeout = 0.0 if left <= SPIN_S else left - SPIN_S
        readable, writable, _ = select.select(readers, writers, [], timeout)
        for sock in readable:
            if sock is self.listener:
                self._accept()
            elif sock is self._wake_r:
                self._wake_r.recv(64)
            else:
                self._receive(sock)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=CONNECT_TIMEOUT)
        except OSError:
            client.close()  # the client sees the connection closed: a ConnectionError, not a hang
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, upstream)
        self.links.append(link)
        for pipe in link.pipes:
            self._by_src[pipe.src] = (link, pipe)

    def _receive(self, sock: socket.socket) -> None:
        found = self._by_src.get(sock)
        if found is None:
            return  # its link was closed earlier in this step
        link, pipe = found
        try:
            data = sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._drop(link)
            return
        if not data:
            pipe.eof = True
            return
        pipe.line.append((time.perf_counter() + self.half, data))
        pipe.pending += len(data)

    def _send(self, link: _Link, pipe: _Pipe) -> None:
        try:
            sent = pipe.dst.send(pipe.out)
        except BlockingIOError:
            return
        except OSError:
            self._drop(link)
            return
        del pipe.out[:sent]
        pipe.pending -= sent

    def _drop(self, link: _Link) -> None:
        if link in self.links:
            self.links.remove(link)
            for pipe in link.pipes:
                self._by_src.pop(pipe.src, None)
        link.close()


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 in front of ``server`` that adds ``rtt_ms`` to every round trip.

    Half the RTT is added each way. Use it as a context manager, or ``start()``/``stop()``. The
    relay runs in a daemon thread, so a kernel that exits never waits for it; ``stop()`` closes the
    listener and every relayed connection (clients then get ConnectionError) and joins the thread.

    ``client()`` gives an instrumented client through the proxy, built like ``server.client()``:
    same round-trip counting, same guard (a proxy in front of a private server stays private).
    """

    def __init__(self, server: Server, rtt_ms: float = 1.0) -> None:
        if not isinstance(rtt_ms, (int, float)) or not math.isfinite(rtt_ms) or rtt_ms < 0:
            raise ValueError(f"rtt_ms must be a finite number >= 0, not {rtt_ms!r}")
        if getattr(server, "_scheme", "redis") == "unix":
            raise ConfigError("the latency proxy relays TCP; this server listens on a unix socket")
        self.server = server
        self.rtt_ms = float(rtt_ms)
        self.host = "127.0.0.1"
        self.port = 0
        self._relay: _Relay | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def connections(self) -> int:
        """Connections relayed right now."""
        return len(self._relay.links) if self._relay is not None and self.running else 0

    def start(self) -> LatencyProxy:
        if self.running:
            raise RuntimeError("this latency proxy is already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(128)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._relay = _Relay(listener, (self.server.host, self.server.port), self.rtt_ms / 2000.0)
        self._thread = threading.Thread(target=self._relay.run, name=f"redisopt-latency-proxy-{self.port}",
                                        daemon=True)
        self._thread.start()
        weakref.finalize(self, self._relay.stop)  # a proxy nobody holds any more stops its thread
        return self

    def stop(self) -> None:
        """Close every relayed connection and the listener, and wait for the thread to end."""
        relay, thread = self._relay, self._thread
        if relay is None or thread is None:
            return
        relay.stop()
        thread.join(STOP_TIMEOUT)
        self._thread = None
        if thread.is_alive():
            raise RuntimeError(f"latency proxy thread did not stop within {STOP_TIMEOUT:g} s")
        if relay.error is not None:
            raise RuntimeError(f"latency proxy failed: {relay.error!r}") from relay.error

    def client(self, **kwargs: Any) -> redis.Redis:
        """An instrumented client whose connections go through this proxy (see ``Server.client``)."""
        if not self.running:
            raise RuntimeError("start the latency proxy before asking for a client through it")
        client = self.server.client(host=self.host, port=self.port, **kwargs)
        client.connection_pool.proxy = self  # type: ignore[attr-defined]  # keeps the proxy alive
        return client

    def measure_rtt(self, samples: int = 51) -> RttReport:
        """Median PING round trip through the proxy and directly, after one warm-up each."""
        if samples < 1:
            raise ValueError("samples must be >= 1")
        medians = []
        for client in (self.server.client(), self.client()):
            try:
                client.ping()  # connect (and handshake) outside the measurement
                times = []
                for _ in range(samples):
                    start = time.perf_counter()
                    client.ping()
                    times.append(time.perf_counter() - start)
                medians.append(statistics.median(times) * 1e3)
            finally:
                client.close()
        return RttReport(self.rtt_ms, medians[0], medians[1], samples)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"127.0.0.1:{self.port}" if self.running else "stopped"
        return f"LatencyProxy(rtt_ms={self.rtt_ms:g}, {state} -> {self.server.where()})"
