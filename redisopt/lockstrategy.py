"""Which path a Lock takes to release and extend: Lua scripts, or the server's own conditional commands.

Valkey 9.0 has DELIFEQ, Redis 8.4 DELEX (with IFEQ), Valkey 8.1 and Redis 8.4 SET … IFEQ. Each is
detected from the server's command table (COMMAND INFO, COMMAND DOCS), never from a version
number, once per connection pool: one round trip that also loads the lock's scripts. The probe's
commands and the parsing of its replies are shared by ``redisopt.Lock`` and its asyncio twin;
only the sending differs (``detect`` here, ``redisopt.aio.lock.lock_capabilities`` there).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from redisopt.errors import ConfigError

__all__ = ["LUA_ONLY", "LockStrategy", "check_strategy", "choose_strategy", "detect"]

STRATEGIES = ("auto", "lua", "native")


@dataclass(frozen=True)
class LockStrategy:
    """How a Lock releases and extends: ``"lua"`` or the native command it uses."""

    release: str  # "DELIFEQ", "DELEX" or "lua"
    extend: str  # "SET IFEQ" or "lua"

    @property
    def native(self) -> bool:
        return self.release != "lua" or self.extend != "lua"

    def __str__(self) -> str:
        return f"release={self.release}, extend={self.extend}"


LUA_ONLY = LockStrategy("lua", "lua")

# One probe per connection pool (one server): commands do not change while a server runs.
_capabilities: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()
_capabilities_lock = threading.Lock()


def _mentions(reply: Any, word: str) -> bool:
    """Does ``word`` appear anywhere in a nested COMMAND DOCS reply (str or bytes, RESP2 or 3)?"""
    if isinstance(reply, (bytes, bytearray)):
        return reply.decode("latin-1").upper() == word
    if isinstance(reply, str):
        return reply.upper() == word
    if isinstance(reply, dict):
        return any(_mentions(k, word) or _mentions(v, word) for k, v in reply.items())
    if isinstance(reply, (list, tuple)):
        return any(_mentions(item, word) for item in reply)
    return False


def _parse_capabilities(info: Any, docs: Any) -> frozenset[str]:
    """The native commands a server has, from ``COMMAND INFO DELIFEQ DELEX`` and ``COMMAND DOCS SET``.

    COMMAND INFO answers nil (None) for an unknown command; SET's IFEQ option is an argument,
    which only COMMAND DOCS lists (its ``token``).
    """
    found = set()
    for name, doc in zip(("DELIFEQ", "DELEX"), info or [], strict=False):
        if doc:  # None or [] for a command the server does not know
            found.add(name)
    if not isinstance(docs, Exception) and _mentions(docs, "IFEQ"):
        found.add("SET IFEQ")
    return frozenset(found)


def cached(pool: Any) -> frozenset[str] | None:
    """What an earlier probe found on this pool's server, or None."""
    with _capabilities_lock:
        return _capabilities.get(pool)


def queue_probe(pipe: Any, scripts: Iterable[str]) -> None:
    """Queue the probe on a pipeline, sync or asyncio (queueing does no I/O in either)."""
    # Sent as one word: redis-py's COMMAND INFO parser fails on the nil of an unknown command.
    pipe.execute_command("COMMAND INFO", "DELIFEQ", "DELEX")
    pipe.execute_command("COMMAND DOCS", "SET")  # Redis/Valkey < 7 do not have it: no IFEQ either
    for body in scripts:
        pipe.script_load(body)


def probe_result(pool: Any, replies: list[Any]) -> frozenset[str]:
    """The capabilities from the probe's replies, remembered for ``pool``; a refused SCRIPT LOAD
    (the guard, an ACL) raises now rather than at the first acquire."""
    info, docs, *loaded = replies
    for reply in loaded:
        if isinstance(reply, Exception):
            raise reply
    found = _parse_capabilities(None if isinstance(info, Exception) else info, docs)
    with _capabilities_lock:
        _capabilities[pool] = found
    return found


def detect(client: redis.Redis, scripts: Iterable[str] = ()) -> frozenset[str]:
    """The conditional commands this server has among DELIFEQ, DELEX and SET IFEQ (one round trip,
    once per connection pool), loading ``scripts`` in the same round trip."""
    found = cached(client.connection_pool)
    if found is not None:
        return found
    pipe = client.pipeline(transaction=False)
    queue_probe(pipe, scripts)
    return probe_result(client.connection_pool, pipe.execute(raise_on_error=False))


def check_strategy(strategy: str) -> str:
    """A ConfigError for a strategy name that is none of "auto", "lua", "native" (no I/O needed)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"lock strategy must be 'auto', 'lua' or 'native', not {strategy!r}")
    return strategy


def choose_strategy(capabilities: frozenset[str], strategy: str) -> LockStrategy:
    """``"auto"``: each native command the server has; ``"lua"``: scripts only; ``"native"``: native
    commands only (a ConfigError naming what is missing)."""
    if check_strategy(strategy) == "lua":
        return LUA_ONLY
    release = next((c for c in ("DELIFEQ", "DELEX") if c in capabilities), "lua")
    extend = "SET IFEQ" if "SET IFEQ" in capabilities else "lua"
    if strategy == "native" and "lua" in (release, extend):
        missing = [what for what, via in (("DELIFEQ or DELEX", release), ("SET IFEQ", extend)) if via == "lua"]
        raise ConfigError(f"lock strategy 'native' needs {' and '.join(missing)}, which this server lacks; "
                          "use strategy='auto' (native where available) or 'lua'")
    return LockStrategy(release, extend)
