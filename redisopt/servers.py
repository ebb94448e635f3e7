"""Servers: a reachable Redis/Valkey (the user's, or a private process kept by a watchdog)."""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any

import redis
import redis.backoff
import redis.retry

from redisopt.connection import CONNECTION_CLASSES, Guard, Tap
from redisopt.errors import ConfigError, NoServerError
from redisopt.pool import MAX_CONNECTIONS, POOL_TIMEOUT, ServerPool
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
        pool = ServerPool(self, **self.pool_options(decode_responses, allow_destructive, max_connections,
                                                    pool_timeout, **kwargs))
        return redis.Redis.from_pool(pool)

    def pool_options(
        self, decode_responses: bool, allow_destructive: bool, max_connections: int, pool_timeout: float,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """What a pool of this server's clients is built with, sync or asyncio (``redisopt.aio``)."""
        options: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 60}
        options.update(self._pool_kwargs())
        options.update(kwargs)
        return {
            "max_connections": max_connections,
            "timeout": pool_timeout,
            "connection_class": self._connection_class(),
            "tap": Tap(self.guard(allow_destructive)),
            "decode_responses": decode_responses,
            **options,
        }

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

    @property
    def running(self) -> bool:
        """False once a server this process started has stopped (servers it did not start: True)."""
        return True

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
            db = int(parts.path.strip("/") or 0)
        except ValueError:
            raise ConfigError(f"{PRIVATE_URL_ENV} ({redact(url)}) is malformed") from None
        if not host.startswith("127.") or not port:
            raise ConfigError(
                f"{PRIVATE_URL_ENV} ({redact(url)}) must name a loopback address: it is set by "
                "redisopt for its child processes, never by hand (use REDIS_URL for your own server)"
            )
        self.backend = query.get("backend", "")
        super().__init__(host, port, urllib.parse.unquote(parts.password or ""), db=db)
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
