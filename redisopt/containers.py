"""Private servers in Docker containers: testcontainers creates them, a watchdog removes them.

Measured on a real engine (issue 5), three things cannot be left to testcontainers:
- *Where to connect.* We publish the port on 127.0.0.1 only (a private server is loopback-only),
  but testcontainers reports the docker0 gateway as the host whenever ``/.dockerenv`` exists (a
  dev container, a CI runner), or whatever TESTCONTAINERS_HOST_OVERRIDE says, and its wait
  strategy then pings that address for minutes. We read the port binding from the engine, connect
  to 127.0.0.1 whatever the connection mode, and wait at most START_TIMEOUT (REACH_GRACE once the
  server says it is ready: where the port cannot be reached from here, we say so in seconds).
- *Cleanup.* Ryuk, its reaper, is off in many CI and offline setups (its image cannot be pulled),
  so we never start it. The watchdog that keeps process servers (``watchdog.py``) keeps a tiny
  reaper process instead, started before the container exists; when the owner stops the server,
  exits, or dies (SIGKILL included), the watchdog ends the reaper and the reaper removes the
  container.
- *An engine that cannot pull or run the image.* Docker's APIError becomes ContainerUnavailableError,
  so the backend chain falls through to the next backend and ``doctor`` says why, in one line.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
import redis.backoff
import redis.retry

from redisopt import keeper
from redisopt.errors import NoServerError, ServerStartError
from redisopt.serverconf import container_command
from redisopt.servers import START_TIMEOUT, Server

if TYPE_CHECKING:
    import docker

CONTAINER_IMAGE = "redis:7.4.2"  # pinned; REDISOPT_IMAGE overrides
# Where an engine listens when DOCKER_HOST is unset: Linux, rootless, Docker Desktop, Colima, OrbStack.
DOCKER_SOCKETS = (
    "/var/run/docker.sock",
    "/run/user/{uid}/docker.sock",
    "~/.docker/run/docker.sock",
    "~/.docker/desktop/docker.sock",
    "~/.colima/default/docker.sock",
    "~/.orbstack/run/docker.sock",
)
OWNER_LABEL = "redisopt.owner"  # the owning process's pid, on every container we start
ENGINE_TIMEOUT = 15  # seconds an engine API call may stay silent (a pull's progress stream included)
PULL_TIMEOUT = 180.0  # seconds a whole pull may take
READY_LINE = "Ready to accept connections"  # Redis and Valkey log it once they listen
REAPER_GRACE = 40.0  # seconds the reaper may take after SIGTERM: import docker, then a 30 s API call
REACH_GRACE = 3.0  # seconds a ready server may stay unreachable from here before we give up

# The reaper the watchdog keeps as its "server": it removes the container when the watchdog ends it
# (SIGTERM on the owner's EOF), or when the watchdog itself dies (Linux: parent-death signal).
# SIGTERM is blocked before anything else, so one that arrives early is only deferred, never lost.
REAPER = """\
import ctypes, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: watchdog gone -> SIGTERM
import docker
client = docker.from_env(timeout=30)
signal.sigwait({signal.SIGTERM})
try:
    client.api.remove_container(sys.argv[1], force=True, v=True)
except docker.errors.NotFound:
    pass  # never created, or removed already
"""

_RYUK_LOCK = threading.Lock()
# The watchdog needs POSIX pipes and signals. On Windows the owner removes the container when it
# stops or exits, and only Ryuk (if the user leaves it on and it can be pulled) reaps after a crash.
KEEPER = os.name == "posix"


class ContainerUnavailableError(NoServerError):
    """The engine answers but cannot pull, create or start the image: the chain falls through."""


def image_name() -> str:
    """The image as the engine knows it: ``base_image()`` plus testcontainers' hub prefix."""
    return os.environ.get("TESTCONTAINERS_HUB_IMAGE_NAME_PREFIX", "") + base_image()


def base_image() -> str:
    """REDISOPT_IMAGE, else the pinned one (testcontainers adds its hub prefix itself)."""
    return os.environ.get("REDISOPT_IMAGE", "").strip() or CONTAINER_IMAGE


def engine_url() -> str | None:
    """DOCKER_HOST, else the first Docker socket that exists, else None (surely no engine)."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    if os.name == "nt":  # Docker Desktop on Windows
        return "npipe:////./pipe/docker_engine" if os.path.exists(r"\\.\pipe\docker_engine") else None
    for pattern in DOCKER_SOCKETS:
        path = Path(os.path.expanduser(pattern.format(uid=os.getuid() if hasattr(os, "getuid") else 0)))
        if path.exists():
            return f"unix://{path}"
    return None


def engine_env() -> dict[str, str]:
    """The environment docker-py (and the reaper) should read: ours, with DOCKER_HOST filled in."""
    url = engine_url()
    return {**os.environ, "DOCKER_HOST": url} if url else dict(os.environ)


def api_message(exc: BaseException) -> str:
    """Docker's own explanation of an error, on one line (not the request URL around it)."""
    text = str(getattr(exc, "explanation", None) or exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def ensure_image(engine: docker.DockerClient, image: str, timeout: float = PULL_TIMEOUT) -> None:
    """Make sure the engine has ``image``, pulling it if needed; ContainerUnavailableError if not."""
    import docker.errors
    import requests.exceptions

    try:
        engine.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise ContainerUnavailableError(f"the engine cannot look up image {image}: {api_message(exc)}") from None
    deadline = time.monotonic() + timeout
    try:
        for event in engine.api.pull(image, stream=True, decode=True):
            if isinstance(event, dict) and event.get("error"):
                why = api_message(Exception(event["error"]))
                raise ContainerUnavailableError(f"image {image} cannot be pulled: {why}")
            if time.monotonic() > deadline:
                raise ContainerUnavailableError(f"pulling image {image} took longer than {timeout:.0f} s")
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise ContainerUnavailableError(f"image {image} is not on the engine and cannot be pulled: "
                                        f"{api_message(exc)}") from None


def _start_keeper(name: str, env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """A watchdog (and its directory) whose "server" is the reaper of container ``name``, which need not
    exist yet."""
    try:
        workdir = tempfile.mkdtemp(prefix="redisopt-")
    except OSError as exc:
        raise ServerStartError(f"cannot create a temp directory for the container's watchdog ({exc})") from None
    proc, pid = keeper.spawn(workdir, [sys.executable, "-I", "-c", REAPER, name], grace=REAPER_GRACE, env=env)
    if pid is None:
        _stop_keeper(proc, workdir, os.getpid())
        raise ServerStartError("the watchdog could not start the container's reaper")
    return proc, workdir


def _stop_keeper(proc: subprocess.Popen[bytes], workdir: str, owner: int) -> None:
    """EOF to the watchdog, which ends the reaper, which removes the container; wait for all that."""
    if os.getpid() != owner:
        return  # a forked child must not remove its parent's container
    try:
        keeper.end(proc, wait=REAPER_GRACE + 5)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the watchdog's job, unless it was killed


class ContainerServer(Server):
    """A private server in a Docker container: loopback-published, password, no persistence."""

    backend = "container"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__("127.0.0.1", 0, secrets.token_urlsafe(24))
        started = time.perf_counter()
        command = container_command(self.password or "", config)
        self.image = image_name()
        self.container_name = f"redisopt-{secrets.token_hex(6)}"
        env = engine_env()
        self._keeper: subprocess.Popen[bytes] | None = None
        self.keeper_dir = ""
        if KEEPER:  # it comes first: a container never exists without someone to remove it
            self._keeper, self.keeper_dir = _start_keeper(self.container_name, env)
            self._finalizer = weakref.finalize(self, _stop_keeper, self._keeper, self.keeper_dir, os.getpid())
        else:
            self._finalizer = weakref.finalize(self, _remove, self.container_name, env, os.getpid())
        try:
            self._run(command, env)
            self.started_in = time.perf_counter() - started
            self.identify()
        except BaseException:
            self.stop()
            raise

    def _run(self, command: str, env: dict[str, str]) -> None:
        import docker.errors
        import requests.exceptions
        from testcontainers.community.redis import RedisContainer
        from testcontainers.core.config import testcontainers_config

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                container = RedisContainer(
                    base_image(),
                    password=self.password,
                    docker_client_kw={"environment": env, "timeout": ENGINE_TIMEOUT},
                )
                container.with_command(command).with_name(self.container_name)
                container.with_kwargs(labels={OWNER_LABEL: str(os.getpid())})
                container.ports["6379"] = ("127.0.0.1", None)  # type: ignore[assignment]  # (ip, port)
                # Its wait pings get_container_host_ip() for up to 120 s; we wait ourselves, below.
                container.waiting_for(None)  # type: ignore[arg-type]
                with _RYUK_LOCK:  # never Ryuk (its image may not be pullable) where the watchdog reaps
                    ryuk_was = testcontainers_config.ryuk_disabled
                    testcontainers_config.ryuk_disabled = ryuk_was or KEEPER
                    try:
                        container.start()
                    finally:
                        testcontainers_config.ryuk_disabled = ryuk_was
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise ContainerUnavailableError(
                    f"the Docker engine could not run {self.image}: {api_message(exc)}"
                ) from None
        engine = container.get_docker_client().client
        try:
            self.port = self._published_port(container.get_wrapped_container())
            self._wait_ready(container.get_wrapped_container())
        finally:
            engine.close()

    def _published_port(self, container: Any) -> int:
        """The host port of 6379/tcp, checked to be published on 127.0.0.1 and nowhere else."""
        container.reload()
        if container.status != "running":
            raise ServerStartError(f"container {self.container_name} ({self.image}) exited at start: "
                                   f"{_log_tail(container)}")
        bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get("6379/tcp") or []
        if not bindings or any(b.get("HostIp") != "127.0.0.1" for b in bindings):
            raise ServerStartError(
                f"the Docker engine published container {self.container_name}'s port as {bindings or 'nothing'}, "
                "not on 127.0.0.1 only (an engine without a bridge network?); a private server must not "
                "be reachable from other machines"
            )
        return int(bindings[0]["HostPort"])

    def _wait_ready(self, container: Any) -> None:
        """Ping 127.0.0.1:port until it answers, the container exits, or START_TIMEOUT passes.

        A server that has logged it is ready but does not answer here within REACH_GRACE is not
        going to: we say so then, not at START_TIMEOUT.
        """
        probe = redis.Redis(host=self.host, port=self.port, password=self.password,
                            socket_connect_timeout=1, socket_timeout=2,
                            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        deadline = time.monotonic() + START_TIMEOUT
        checked = 0.0
        ready = False  # the server logged that it listens
        try:
            while time.monotonic() < deadline:
                try:
                    if probe.ping():
                        return
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pass  # not listening yet (docker-proxy accepts, then drops us), or still loading
                if time.monotonic() - checked > 0.5:
                    checked = time.monotonic()
                    container.reload()
                    if container.status != "running":
                        raise ServerStartError(f"container {self.container_name} ({self.image}) exited at "
                                               f"start: {_log_tail(container)}")
                    if not ready and READY_LINE in _log_tail(container, 50):
                        ready = True
                        deadline = min(deadline, time.monotonic() + REACH_GRACE)
                time.sleep(0.01)
        finally:
            probe.close()
        engine = os.environ.get("DOCKER_HOST") or engine_url() or "the default socket"
        raise ServerStartError(
            f"container {self.container_name} ({self.image}) publishes its port on 127.0.0.1:{self.port} "
            "of the Docker engine's machine, but nothing answers there from this process "
            + (f"{REACH_GRACE:.0f} s after the server said it was ready" if ready else f"within {START_TIMEOUT:.0f} s")
            + f". The engine ({engine}) probably runs on another machine, VM or network "
            "namespace (a remote engine, or Docker outside of Docker in a dev container), whose loopback "
            "is not ours. Use another backend, e.g. REDISOPT_BACKEND=bundled."
        )

    def stop(self) -> None:
        """Remove the container (the watchdog's reaper does it) and wait until it is gone."""
        self._finalizer()

    @property
    def running(self) -> bool:
        return self._keeper is None or self._keeper.poll() is None


def _remove(name: str, env: dict[str, str], owner: int) -> None:
    """Remove container ``name`` directly (where no watchdog keeps it)."""
    if os.getpid() != owner:
        return
    import docker

    try:
        engine = docker.from_env(environment=env, timeout=ENGINE_TIMEOUT)
        engine.api.remove_container(name, force=True, v=True)
        engine.close()
    except Exception:  # gone already, or the engine is: nothing more we can do
        pass


def _log_tail(container: Any, lines: int = 5) -> str:
    try:
        text = container.logs(tail=lines).decode("utf-8", "replace")
    except Exception:  # the container may be gone already
        return "(no log)"
    return " | ".join(line.strip() for line in text.splitlines() if line.strip()) or "(empty log)"
