"""A lock without its I/O: scripts, keys, each step's wire call, reply → outcome, checks, backoff.

Shared by ``redisopt.Lock`` (``redisopt.lock``) and its asyncio twin ``redisopt.aio.Lock``, so the
two cannot drift: they differ only in how a call is sent and how a pause is slept. Why each piece
is the way it is: ``redisopt.lock``'s docstring.
"""

from __future__ import annotations

import random
import secrets
import time
from typing import Any, ClassVar

from redis.commands.core import Script

from redisopt.errors import LockError, LockNotOwnedError, LockTimeout, check_timeout
from redisopt.fencing import FENCED_WRITE_LUA
from redisopt.lockstrategy import LockStrategy, check_strategy
from redisopt.scripts import unbound_script

__all__ = ["SCRIPTS", "LockCore", "fencing_key", "hash_tag"]

# --------------------------------------------------------------------------- scripts

# KEYS[1] the lock, KEYS[2] its fencing counter; ARGV[1] our random token, ARGV[2] TTL in ms.
# Returns the new fencing token (>= 1) when the lock was free and is now ours, else 0.
ACQUIRE_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""

# KEYS[1] the lock; ARGV[1] our token. Returns 1 when deleted, 0 when the lock is not ours.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] the lock; ARGV[1] our token, ARGV[2] the new remaining TTL in ms.
# Returns 1 when the TTL was set, 0 when the lock is not ours.
EXTEND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Loaded by the first Lock on a server; the fenced resource's script rides along (same round trip).
SCRIPTS = (ACQUIRE_LUA, RELEASE_LUA, EXTEND_LUA, FENCED_WRITE_LUA)

# --------------------------------------------------------------------------- arguments and replies


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes, if the key names one: the text between the first
    ``{`` and the next ``}``, when not empty."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    return key[start + 1:end] if end > start + 1 else None


def fencing_key(name: str) -> str:
    """The fencing counter's key, in the same cluster slot as the lock key ``name`` (one script
    touches both, and a cluster refuses a script whose keys span slots).

    A name with its own hash tag (``app:{job}``) keeps it: ``app:{job}:fencing``. Otherwise the
    whole name is the tag: ``app:job:fencing:{app:job}``, which hashes exactly like ``app:job`` and
    still starts with the name, so a KeySpace's SCAN ``prefix:*`` clears it with the lock.
    """
    if hash_tag(name) is not None:
        return f"{name}:fencing"
    if "{" in name or "}" in name:
        raise ValueError(f"lock name {name!r} has braces that make no hash tag (a non-empty '{{tag}}'): "
                         "its fencing key could not share the lock's cluster slot")
    return f"{name}:fencing:{{{name}}}"


def _ms(seconds: float) -> int:
    return max(1, int(round(seconds * 1000)))


def _check_ttl(ttl: float) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise ValueError(f"ttl must be a number of seconds > 0, not {ttl!r}")
    return float(ttl)


def acquire_command(key: str, token: str, ttl_ms: int) -> tuple[Any, ...]:
    """Without fencing, acquire is one SET NX PX: no script, no counter key."""
    return ("SET", key, token, "NX", "PX", ttl_ms)


def acquire_outcome(fencing: bool, reply: Any) -> int | None:
    """The acquire reply as a fencing token (>= 1, or 0 without fencing), None when the lock is taken.

    The script answers the INCR result or 0; SET NX answers OK (True) or nil.
    """
    if fencing:
        fence = int(reply)
        return fence if fence else None
    return 0 if reply else None


def release_command(strategy: LockStrategy, key: str, token: str) -> tuple[Any, ...]:
    """The native release command's arguments (DELIFEQ key token / DELEX key IFEQ token)."""
    if strategy.release == "DELIFEQ":
        return ("DELIFEQ", key, token)
    return ("DELEX", key, "IFEQ", token)


def extend_command(key: str, token: str, ttl_ms: int) -> tuple[Any, ...]:
    """SET key token IFEQ token PX ttl: rewrites our own value, so only the TTL changes."""
    return ("SET", key, token, "IFEQ", token, "PX", ttl_ms)


def extend_outcome(reply: Any) -> bool:
    """SET IFEQ answers OK or nil; the script 1 or 0."""
    return reply is not None and reply != 0


def _not_owned(name: str, action: str, never: bool) -> LockNotOwnedError:
    why = ("this Lock does not hold it (never acquired, or already released)" if never
           else "it is no longer ours: it expired, and perhaps another client holds it now")
    return LockNotOwnedError(f"cannot {action} lock {name!r}: {why}", name=name)


# --------------------------------------------------------------------------- the lock, without I/O


class _Unset:
    """The type of ``_UNSET``: "not given", distinct from None ("wait without limit")."""


_UNSET = _Unset()


class LockCore:
    """What a Lock is besides I/O, shared by ``Lock`` and ``redisopt.aio.Lock``: the checks, the
    keys, each step's wire call, the backoff, the bookkeeping of a hold. Subclasses send."""

    _scripts: ClassVar[dict[str, Script]] = {}  # registered once per class, called with client=

    def __init__(self, client: Any, name: str, ttl: float = 10.0, *, timeout: float | None = None,
                 sleep: float = 0.002, max_sleep: float = 0.1, auto_renew: bool = False,
                 renew_every: float | None = None, max_renewals: int = 100, strategy: str = "auto",
                 fencing: bool = True) -> None:
        self.client = client
        self.name = name
        self.fencing = fencing
        self._fencing_key = fencing_key(name)
        self.ttl = _check_ttl(ttl)
        self.timeout = check_timeout(timeout)
        if not 0 < sleep <= max_sleep:
            raise ValueError(f"need 0 < sleep <= max_sleep, got sleep={sleep!r}, max_sleep={max_sleep!r}")
        self.sleep, self.max_sleep = sleep, max_sleep
        self.auto_renew = auto_renew
        self.renew_every = _check_ttl(renew_every) if renew_every is not None else self.ttl / 3
        if max_renewals < 0:
            raise ValueError(f"max_renewals must be >= 0, not {max_renewals!r}")
        self.max_renewals = max_renewals
        self._strategy_choice = check_strategy(strategy)
        self.strategy: LockStrategy | None = None  # chosen from what the server offers
        self.token: str | None = None  # our random token while we think we hold the lock
        self.fencing_token: int | None = None
        self.renewals = 0
        self.attempts = 0  # acquire attempts (round trips) of the last acquire()
        self._register()

    @property
    def key(self) -> str:
        return self.name

    @property
    def fencing_key(self) -> str:
        """The per-name INCR counter (in the lock key's cluster slot); never written when ``fencing=False``."""
        return self._fencing_key

    @staticmethod
    def _register() -> None:
        """Register the scripts once for both twins (unbound: each call passes ``client=``)."""
        if not LockCore._scripts:
            LockCore._scripts = {"acquire": unbound_script(ACQUIRE_LUA),
                                 "release": unbound_script(RELEASE_LUA),
                                 "extend": unbound_script(EXTEND_LUA)}

    def _begin(self, timeout: float | None | _Unset) -> tuple[float | None, str, float | None]:
        """Checks before an acquire: the timeout (the constructor's when not given), a fresh random
        token and the deadline (None: no limit)."""
        if isinstance(timeout, _Unset):
            timeout = self.timeout
        check_timeout(timeout)
        if self.token is not None:
            raise LockError(f"lock {self.name!r} is already held by this Lock object (not reentrant)",
                            name=self.name)
        self.attempts = 0
        return timeout, secrets.token_hex(16), None if timeout is None else time.monotonic() + timeout

    def _next_pause(self, deadline: float | None, timeout: float | None) -> float:
        """How long to wait before the next attempt: exponential backoff with equal jitter (half
        the step fixed, half random, so waiters do not retry in step), cut to the deadline;
        LockTimeout once the deadline has passed."""
        step = min(self.max_sleep, self.sleep * 2 ** min(self.attempts - 1, 30))
        pause = step / 2 + random.uniform(0, step / 2)
        if deadline is None:
            return pause
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockTimeout(f"lock {self.name!r} is held by another client; gave up after "
                              f"{timeout} s ({self.attempts} attempts)", name=self.name)
        return min(pause, left)

    def _held(self, token: str, fence: int) -> None:
        self.token, self.fencing_token, self.renewals = token, fence, 0

    def _give_up_token(self) -> str:
        """Forget our token before releasing (a failed release leaves nothing to retry)."""
        token, self.token = self.token, None
        if token is None:
            raise _not_owned(self.name, "release", never=True)
        return token

    def _extend_args(self, ttl: float | None) -> tuple[str, int]:
        ttl_ms = _ms(_check_ttl(self.ttl if ttl is None else ttl))
        if self.token is None:
            raise _not_owned(self.name, "extend", never=True)
        return self.token, ttl_ms

    def _is_ours(self, value: Any) -> bool:
        """Is ``value`` (GET of the lock key, str or bytes) our token?"""
        return self.token is not None and (value.decode() if isinstance(value, bytes) else value) == self.token

    def _renewal_due(self, token: str | None) -> bool:
        """Should the renewer extend once more (still our hold, below the cap)?"""
        return self.token == token and self.renewals < self.max_renewals

    def _call(self, step: str, token: str, ttl_ms: int | None = None) -> tuple[Script | None, tuple[Any, ...]]:
        """What one step sends: ``(script, (keys, args))`` for Lua, ``(None, command)`` for native."""
        assert self.strategy is not None
        if step == "acquire":
            if not self.fencing:
                return None, acquire_command(self.key, token, _ms(self.ttl))
            return self._scripts["acquire"], ([self.key, self.fencing_key], [token, _ms(self.ttl)])
        if step == "release":
            if self.strategy.release == "lua":
                return self._scripts["release"], ([self.key], [token])
            return None, release_command(self.strategy, self.key, token)
        if self.strategy.extend == "lua":
            return self._scripts["extend"], ([self.key], [token, ttl_ms])
        return None, extend_command(self.key, token, ttl_ms)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, ttl={self.ttl}, strategy={self.strategy}, "
                f"held={self.token is not None})")


def _exit_note(lost: LockNotOwnedError, exc: BaseException | None) -> None:
    """On leaving a ``with`` block: a lost lock is the error if the block succeeded, else a note on
    the block's own error."""
    if exc is None:
        raise lost  # the block ran, but not (wholly) under the lock: the caller must know
    exc.add_note(f"and then: {lost}")
