"""Servers: a reachable Redis/Valkey (the user's, or a private process kept by a watchdog)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
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
from redisopt.errors import ConfigError, NoServerError, ServerStartError
from redisopt.pool import MAX_CONNECTIONS, POOL_TIMEOUT, ServerPool
from redisopt.serverconf import private_settings, render_config
from redisopt.urls import parse_redis_url, redact

MIN_VERSION = (7, 2)
START_TIMEOUT = 10.0
# A first answer comes within milliseconds from a working server; a listener that accepts and never
# answers (not Redis, or TLS on one side only) is reported after this long, not after 60 s.
IDENTIFY_TIMEOUT = 5.0
# Set by a process that starts the default private server, read by connect() in its children
# (multiprocessing spawn/forkserver workers, subprocesses of a notebook): the same server, still
# private. Holds the password, like server.conf; a process's environment is readable only by its
# user (and root), and redisopt never prints it.
PRIVATE_URL_ENV = "REDISOPT_PRIVATE_URL"
NO_RETRY = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
WATCHDOG = Path(__file__).with_name("watchdog.py")


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def unreachable_reason(exc: Exception, scheme: str = "redis") -> str:
    """What a failed first contact most likely means, in words a learner can act on."""
    text = str(exc) or type(exc).__name__
    tls = scheme == "rediss"
    if isinstance(exc, redis.exceptions.TimeoutError):
        if tls:
            return (f"no TLS answer within {IDENTIFY_TIMEOUT:g} s — likely a plaintext server "
                    "(use redis:// instead of rediss://) or not a Redis server")
        return (f"it accepted the connection but sent no reply within {IDENTIFY_TIMEOUT:g} s — "
                "likely not a Redis server, or one that speaks only TLS (use rediss://)")
    if tls and ("SSL" in text or "EOF" in text or "reset" in text.lower()):
        return f"the TLS handshake failed ({text}) — likely a plaintext server (use redis://)"
    return text


class Server:
    """A reachable server: where it is, what it is, and how to get instrumented clients for it."""

    backend: str = ""
    private: bool = True
    started_in = 0.0  # seconds to start, for servers this process starts

    def __init__(self, host: str, port: int, password: str | None, *, db: int = 0) -> None:
        self.host, self.port, self.password, self.db = host, port, password, db
        self.name, self.version = "", ""
        self.process_id = 0  # the server's own pid, as INFO reports it

    # The guard that refuses destructive commands (redisopt.guard); None for private servers.
    def guard(self, allow_destructive: bool) -> Guard | None:
        return None

    def _pool_kwargs(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "password": self.password, "db": self.db}

    def _connection_class(self) -> type:
        return CONNECTION_CLASSES["redis"]

    def client(
        self,
        *,
        decode_responses: bool = True,
        allow_destructive: bool = False,
        max_connections: int = MAX_CONNECTIONS,
        pool_timeout: float = POOL_TIMEOUT,
        **kwargs: Any,
    ) -> redis.Redis:
        """A new client with its own pool, counting its round trips (see ``bench.count_round_trips``).

        The client keeps this server alive while it is in use. Threads sharing it wait for one of
        ``max_connections`` connections, up to ``pool_timeout`` seconds (then PoolTimeoutError).
        """
        options: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 60}
        options.update(self._pool_kwargs())
        options.update(kwargs)
        pool = ServerPool(
            self,
            max_connections=max_connections,
            timeout=pool_timeout,
            connection_class=self._connection_class(),
            tap=Tap(self.guard(allow_destructive)),
            decode_responses=decode_responses,
            **options,
        )
        return redis.Redis.from_pool(pool)

    def identify(self) -> None:
        """Ask the server what it is, within IDENTIFY_TIMEOUT; refuse anything older than 7.2."""
        client = self.client(socket_connect_timeout=IDENTIFY_TIMEOUT, socket_timeout=IDENTIFY_TIMEOUT,
                             retry=NO_RETRY)
        try:
            info = client.info("server")
        finally:
            client.close()
        self.process_id = int(info.get("process_id", 0))
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

    def handdown_url(self) -> str:
        """This private server's address for child processes (PRIVATE_URL_ENV); holds the password."""
        query = urllib.parse.urlencode({
            "backend": self.backend, "pid": self.process_id, "owner": os.getpid(),
            "bundled": os.environ.get("REDISOPT_BUNDLED", "").strip().lower(),
        })
        password = urllib.parse.quote(self.password or "", safe="")
        return f"redis://:{password}@{self.host}:{self.port}/{self.db}?{query}"

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
            raise NoServerError(
                f"REDIS_URL is set ({redact(url)}), but {self.where()} does not answer: "
                f"{unreachable_reason(exc, self._scheme)}"
            ) from None

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


class InheritedServer(Server):
    """The private server of a parent process, reached through PRIVATE_URL_ENV.

    Still private (no guard: it is the parent's throwaway server, not the user's), never stopped
    from here (its owner stops it), and checked to be the very process the parent started.
    """

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        try:
            host, port = parts.hostname or "", int(parts.port or 0)
            self.owner, expected_pid = int(query.get("owner", 0)), int(query.get("pid", 0))
        except ValueError:
            raise ConfigError(f"{PRIVATE_URL_ENV} ({redact(url)}) is malformed") from None
        if not host.startswith("127.") or not port:
            raise ConfigError(
                f"{PRIVATE_URL_ENV} ({redact(url)}) must name a loopback address: it is set by "
                "redisopt for its child processes, never by hand (use REDIS_URL for your own server)"
            )
        self.backend = query.get("backend", "")
        super().__init__(host, port, urllib.parse.unquote(parts.password or ""),
                         db=int(parts.path.strip("/") or 0))
        try:
            self.identify()
        except redis.exceptions.RedisError as exc:
            raise NoServerError(
                f"{PRIVATE_URL_ENV} names the private server of process {self.owner} at "
                f"{self.where()}, which does not answer ({unreachable_reason(exc)}): that process "
                f"has probably ended. Unset {PRIVATE_URL_ENV} to start a server of your own."
            ) from None
        if expected_pid and self.process_id != expected_pid:
            raise NoServerError(
                f"{PRIVATE_URL_ENV} names the private server of process {self.owner} at "
                f"{self.where()}, but another server answers there now; unset {PRIVATE_URL_ENV}"
            )

    def describe(self) -> str:
        return super().describe()[:-1] + f"; shared by process {self.owner})"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _PortTaken(ServerStartError):
    """Another process answered on the port picked for our server (a race); try another."""


# Owners' live watchdog pipes, closed in every forked child: a child holding the write end would
# keep the server up after the owner dies (no EOF). A forked child reaches the server only while
# the owner lives.
_LIVE: weakref.WeakSet[ProcessServer] = weakref.WeakSet()


def _close_pipes_in_child() -> None:
    for server in list(_LIVE):
        for pipe in (server._watchdog.stdin, server._watchdog.stdout):
            try:
                pipe.close()  # type: ignore[union-attr]
            except (OSError, ValueError):
                pass
    _LIVE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_pipes_in_child)


def _kill_if_ours(*, host: str, port: int, password: str, pid: int) -> None:
    """Kill a server whose watchdog is gone, once INFO proves the port is still that process."""
    probe = redis.Redis(host=host, port=port, password=password, socket_connect_timeout=1,
                        socket_timeout=1, retry=NO_RETRY)
    try:
        if int(probe.info("server").get("process_id", 0)) == pid:
            os.kill(pid, signal.SIGKILL)
    except (redis.exceptions.RedisError, OSError):
        pass  # gone already (Linux: it died with its watchdog), or not ours to kill
    finally:
        probe.close()


def _stop_watchdog(proc: subprocess.Popen[bytes], owner: int, workdir: str, server: dict[str, Any]) -> None:
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
    if proc.returncode != 0:  # the watchdog was killed (or failed): it cleaned up nothing
        if server["pid"]:
            _kill_if_ours(**server)
        shutil.rmtree(workdir, ignore_errors=True)


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
            except _PortTaken:
                if attempt == 2:
                    raise
        self.identify()

    def _start(self) -> None:
        started = time.perf_counter()
        self.port = _free_port()
        try:
            self.workdir = tempfile.mkdtemp(prefix="redisopt-")
        except OSError as exc:  # TMPDIR missing or read-only, or the temp dir was removed
            where = tempfile.tempdir or os.environ.get("TMPDIR") or "the system temp directory"
            raise ServerStartError(
                f"cannot create the private server's directory in {where} "
                f"({exc.strerror or exc}); point TMPDIR at a writable directory"
            ) from None
        conf = Path(self.workdir, "server.conf")
        settings = {**self.config, "port": self.port, "requirepass": self.password, "dir": self.workdir}
        conf.write_text(render_config(settings), encoding="utf-8")
        conf.chmod(0o600)
        proc = subprocess.Popen(
            # -I -S: stdlib only, no site-packages to scan: the watchdog starts ~15 ms sooner
            [sys.executable, "-I", "-S", str(WATCHDOG), self.workdir, "--", self.executable, str(conf)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._watchdog = proc
        known = {"host": self.host, "port": self.port, "password": self.password or "", "pid": 0}
        self._finalizer = weakref.finalize(self, _stop_watchdog, proc, os.getpid(), self.workdir, known)
        _LIVE.add(self)
        first = proc.stdout.readline()  # type: ignore[union-attr]
        if not first.strip().isdigit():
            self.stop()
            raise ServerStartError(f"the watchdog could not start {self.executable}")
        self.pid = known["pid"] = int(first)  # the finalizer can now kill it if the watchdog cannot
        self._wait_ready(proc)
        conf.unlink()  # read at start and never again: no password left on disk
        self.started_in = time.perf_counter() - started

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        # No retries: redis-py's default backoff would turn each "not yet" into seconds.
        probe = redis.Redis(host=self.host, port=self.port, password=self.password,
                            socket_connect_timeout=1, socket_timeout=2, retry=NO_RETRY)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:  # the server died; the watchdog reported why and left
                    log = proc.stdout.read().decode("utf-8", "replace").strip()  # type: ignore[union-attr]
                    self.stop()
                    error = _PortTaken if "in use" in log else ServerStartError
                    raise error(f"{self.executable} exited at start: {log or '(no log)'}")
                try:
                    answered = int(probe.info("server").get("process_id", 0))
                except redis.exceptions.ConnectionError:  # not listening yet, or still loading
                    answered = 0
                if answered == self.pid:
                    return
                if answered:  # another process holds the port (and took our password)
                    self.stop()
                    raise _PortTaken(
                        f"127.0.0.1:{self.port} is answered by process {answered}, not by the "
                        f"server redisopt started (process {self.pid}): another process took the port"
                    )
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

