"""Getting a Redis: the backend chain (url → container → local → bundled) and private servers.

``connect()`` is all a notebook needs. The first call picks a backend and, unless the user gave a
server through ``REDIS_URL``, starts a *private* one: loopback only, a random password, no RDB or
AOF, its files in a temp dir. A watchdog process stops it and removes that dir when this Python
process ends, even by SIGKILL. ``start_server(config=…)`` starts another private server with extra
settings for chapters that need their own (maxmemory, eviction policy, slowlog threshold, …).

Child processes share the default private server: the process that starts it puts its address in
REDISOPT_PRIVATE_URL, so ``connect()`` in a multiprocessing worker (spawn, forkserver or fork) or in
a subprocess reaches the same server instead of starting another. That works while the owner
lives: the server stops with it, and a child's connect() then says so.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

import redis

from redisopt.backends import BACKENDS, PRIVATE_BACKENDS, Choice, forced_backend, start_first, survey
from redisopt.connection import OPT_IN_HINT
from redisopt.containers import ContainerServer
from redisopt.processes import ProcessServer
from redisopt.serverconf import container_command, private_settings, render_config
from redisopt.servers import PRIVATE_URL_ENV, InheritedServer, Server, UrlServer
from redisopt.urls import parse_redis_url

_default: Server | None = None
_default_pid = 0  # the process _default belongs to: a forked child must not use its parent's object
_default_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()  # a thread of the parent may have held it at fork time


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_in_child)


def _inherited() -> InheritedServer | None:
    """The parent's private server, when the parent handed one down and nothing here overrides it.

    It stands in for the private backends only: a REDIS_URL given to this process (the parent did
    not use one, or it would not have started a private server), a forced other backend or another
    bundled generation (REDISOPT_BUNDLED) wins.
    """
    url = os.environ.get(PRIVATE_URL_ENV, "").strip()
    if not url:
        return None
    forced = forced_backend()
    if forced == "url" or (forced is None and os.environ.get("REDIS_URL", "").strip()):
        return None
    handed = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    if forced not in (None, handed.get("backend")):
        return None
    if handed.get("bundled", "") != os.environ.get("REDISOPT_BUNDLED", "").strip().lower():
        return None
    return InheritedServer(url)


def default_server() -> Server:
    """The process-wide server behind connect(), provisioned on first use (see module doc)."""
    global _default, _default_pid
    with _default_lock:
        if _default is not None and _default_pid != os.getpid():
            _default = None  # forked: reach the parent's server the way any child does
        if _default is None or not _default.running:  # e.g. a killed server: start a new one
            _default = _inherited() or start_first(BACKENDS, None)
            _default_pid = os.getpid()
            if _default.private and not isinstance(_default, InheritedServer):
                os.environ[PRIVATE_URL_ENV] = _default.handdown_url()
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
    return start_first(PRIVATE_BACKENDS, config)


__all__ = [
    "BACKENDS", "Choice", "Server", "UrlServer", "ProcessServer", "ContainerServer", "InheritedServer",
    "PRIVATE_URL_ENV",
    "connect", "default_server", "start_server", "survey", "forced_backend", "parse_redis_url",
    "render_config", "private_settings", "container_command", "PRIVATE_BACKENDS", "OPT_IN_HINT",
]
