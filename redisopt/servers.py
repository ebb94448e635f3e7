"""Servers: a reachable Redis/Valkey (the user's, or a private process kept by a watchdog)."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis
import redis.backoff
import redis.retry

from redisopt.connection import CONNECTION_CLASSES, Guard, Tap
from redisopt.errors import NoServerError, ServerStartError
from redisopt.serverconf import private_settings, render_config
from redisopt.urls import parse_redis_url

MIN_VERSION = (7, 2)
START_TIMEOUT = 10.0
WATCHDOG = Path(__file__).with_name("watchdog.py")


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


class Server:
    """A reachable server: where it is, what it is, and how to get instrumented clients for it."""

    backend: str = ""
    private: bool = True
    started_in = 0.0  # seconds to start, for servers this process starts

    def __init__(self, host: str, port: int, password: str | None, *, db: int = 0) -> None:
        self.host, self.port, self.password, self.db = host, port, password, db
        self.name, self.version = "", ""

    # The guard that refuses destructive commands (redisopt.guard); None for private servers.
    def guard(self, allow_destructive: bool) -> Guard | None:
        return None

    def _pool_kwargs(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "password": self.password, "db": self.db}

    def _connection_class(self) -> type:
        return CONNECTION_CLASSES["redis"]

    def client(
        self, *, decode_responses: bool = True, allow_destructive: bool = False, **kwargs: Any
    ) -> redis.Redis:
        """A new client with its own pool, counting its round trips (see ``bench.count_round_trips``)."""
        options: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 60}
        options.update(self._pool_kwargs())
        options.update(kwargs)
        pool = redis.ConnectionPool(
            connection_class=self._connection_class(),
            tap=Tap(self.guard(allow_destructive)),
            decode_responses=decode_responses,
            **options,
        )
        return redis.Redis.from_pool(pool)

    def identify(self) -> None:
        """Ask the server what it is; refuse anything older than Redis/Valkey 7.2."""
        client = self.client()
        try:
            info = client.info("server")
        finally:
            client.close()
        if "valkey_version" in info or info.get("server_name") == "valkey":
            self.name, self.version = "Valkey", str(info.get("valkey_version", info["redis_version"]))
        else:
            self.name, self.version = "Redis", str(info["redis_version"])
        if version_tuple(self.version)[:2] < MIN_VERSION:
            raise NoServerError(
                f"{self.name} {self.version} at {self.where()} is older than "
                f"{'.'.join(map(str, MIN_VERSION))}, which this workbook needs"
            )

    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        kind = "private: loopback, password, no persistence" if self.private else "your server"
        return f"{self.name} {self.version} · {self.backend} backend · {self.where()} ({kind})"

    def stop(self) -> None:
        """Stop a private server; a no-op for a server the user supplied."""

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class UrlServer(Server):
    """The user's own server from REDIS_URL: used as it is, never flushed or reconfigured."""

    backend = "url"
    private = False

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = parse_redis_url(url)
        super().__init__(parsed.hostname or "", parsed.port or 6379, parsed.password)
        self._scheme = parsed.scheme
        try:
            self.identify()
        except redis.exceptions.RedisError as exc:
            raise NoServerError(f"REDIS_URL is set, but {self.where()} does not answer: {exc}") from None

    def guard(self, allow_destructive: bool) -> Guard | None:
        """One Guard per server, so its clients share the rules it fetches once (redisopt.guard)."""
        if allow_destructive or truthy(os.environ.get("REDISOPT_ALLOW_DESTRUCTIVE")):
            return None
        if getattr(self, "_guard", None) is None:
            self._guard = Guard(f"the REDIS_URL server {self.where()}")
        return self._guard

    def _pool_kwargs(self) -> dict[str, Any]:
        kwargs = redis.connection.parse_url(self.url)
        kwargs.pop("connection_class", None)
        return kwargs

    def _connection_class(self) -> type:
        return CONNECTION_CLASSES[self._scheme]

    def where(self) -> str:
        if self._scheme == "unix":
            return urllib.parse.urlsplit(self.url).path
        return super().where()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])



def _stop_watchdog(proc: subprocess.Popen[bytes], owner: int) -> None:
    if os.getpid() != owner:
        return  # a forked child must not stop its parent's server
    try:
        proc.stdin.close()  # type: ignore[union-attr]  # EOF: the watchdog stops the server
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.terminate()  # its SIGTERM handler still stops the server and removes the dir
        proc.wait(timeout=10)
    finally:
        proc.stdout.close()  # type: ignore[union-attr]


class ProcessServer(Server):
    """A private server process (local or bundled binary) kept by a watchdog."""

    def __init__(self, executable: str, backend: str, config: Mapping[str, Any] | None = None) -> None:
        self.config = private_settings(config)
        self.backend = backend
        self.executable = executable
        super().__init__("127.0.0.1", 0, secrets.token_urlsafe(24))
        self.workdir = ""
        self.pid = 0
        for attempt in range(3):
            try:
                self._start()
                break
            except ServerStartError as exc:
                if "in use" not in str(exc) or attempt == 2:
                    raise
        self.identify()

    def _start(self) -> None:
        started = time.perf_counter()
        self.port = _free_port()
        self.workdir = tempfile.mkdtemp(prefix="redisopt-")
        conf = Path(self.workdir, "server.conf")
        settings = {**self.config, "port": self.port, "requirepass": self.password, "dir": self.workdir}
        conf.write_text(render_config(settings), encoding="utf-8")
        conf.chmod(0o600)
        proc = subprocess.Popen(
            [sys.executable, "-I", str(WATCHDOG), self.workdir, "--", self.executable, str(conf)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._watchdog = proc
        self._finalizer = weakref.finalize(self, _stop_watchdog, proc, os.getpid())
        first = proc.stdout.readline()  # type: ignore[union-attr]
        if not first.strip().isdigit():
            self.stop()
            raise ServerStartError(f"the watchdog could not start {self.executable}")
        self.pid = int(first)
        self._wait_ready(proc)
        self.started_in = time.perf_counter() - started

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        # No retries: redis-py's default backoff would turn each "not yet" into seconds.
        probe = redis.Redis(host=self.host, port=self.port, password=self.password,
                            socket_connect_timeout=1, socket_timeout=2,
                            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:  # the server died; the watchdog reported why and left
                    log = proc.stdout.read().decode("utf-8", "replace").strip()  # type: ignore[union-attr]
                    self.stop()
                    raise ServerStartError(f"{self.executable} exited at start: {log or '(no log)'}")
                try:
                    if probe.ping():
                        return
                except redis.exceptions.ConnectionError:  # not listening yet, or still loading
                    pass
                time.sleep(0.005)
        finally:
            probe.close()
        log = self._log_tail()
        self.stop()
        raise ServerStartError(f"{self.executable} did not answer within {START_TIMEOUT:.0f} s: {log}")

    def _log_tail(self) -> str:
        try:
            text = Path(self.workdir, "server.out").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log left)"
        lines = [line for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-5:]) or "(empty log)"

    def stop(self) -> None:
        """Stop the server and remove its directory (the watchdog does both on EOF)."""
        self._finalizer()

    @property
    def running(self) -> bool:
        return self._watchdog.poll() is None

