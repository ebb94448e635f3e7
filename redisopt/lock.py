"""A lock with a fencing token: SET NX PX with a random token, released and extended only by its owner.

Why more than ``SET NX``: a holder can pause (GC, swap, a slow disk) past its TTL while another
client takes the lock; its late DEL would then free someone else's lock (the article's mistake 2),
and its late write would land on top of the new holder's. So release and extend compare the token
first (one Lua script, or the server's own conditional command where it has one: Valkey 9.0
DELIFEQ, Redis 8.4 DELEX, SET IFEQ in Valkey 8.1 and Redis 8.4), and every acquire also hands out
a fencing token from INCR, strictly increasing per lock name, that a protected resource checks
(``FencedResource``) so an expired holder's write is refused (Kleppmann, "How to do distributed
locking", 2016); see ``redisopt.fencing``. Chapter 5 (5장) measures both release paths side by side.

Everything that is not I/O (script text, keys, arguments, reply → error) lives outside the ``do_*``
methods, so the asyncio twin only adds ``await``.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import redis
from redis.commands.core import Script

from redisopt.errors import ConfigError, LockError, LockNotOwnedError, LockTimeout, check_timeout
from redisopt.fencing import FENCED_WRITE_LUA
from redisopt.scripts import unbound_script

__all__ = ["Lock", "LockStrategy", "lock_capabilities"]

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

# --------------------------------------------------------------------------- what the server offers


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


def lock_capabilities(client: redis.Redis) -> frozenset[str]:
    """The conditional commands this server has among DELIFEQ, DELEX and SET IFEQ, detected from
    the command table, never from a version number.

    One round trip, once per connection pool, which also loads the lock's scripts: the first
    acquire + release is then 2 round trips like every later one (no NOSCRIPT, SCRIPT LOAD).
    """
    pool = client.connection_pool
    with _capabilities_lock:
        if pool in _capabilities:
            return _capabilities[pool]
    pipe = client.pipeline(transaction=False)
    # Sent as one word: redis-py's COMMAND INFO parser fails on the nil of an unknown command.
    pipe.execute_command("COMMAND INFO", "DELIFEQ", "DELEX")
    pipe.execute_command("COMMAND DOCS", "SET")  # Redis/Valkey < 7 do not have it: no IFEQ either
    for body in SCRIPTS:
        pipe.script_load(body)
    info, docs, *loaded = pipe.execute(raise_on_error=False)
    for reply in loaded:
        if isinstance(reply, Exception):
            raise reply  # e.g. the guard or an ACL refusing SCRIPT LOAD: say so now, not at acquire
    if isinstance(info, Exception):
        info = None
    found = _parse_capabilities(info, docs)
    with _capabilities_lock:
        _capabilities[pool] = found
    return found


def choose_strategy(capabilities: frozenset[str], strategy: str) -> LockStrategy:
    """``"auto"``: each native command the server has; ``"lua"``: scripts only; ``"native"``: native
    commands only (a ConfigError naming what is missing)."""
    if strategy == "lua":
        return LUA_ONLY
    if strategy not in ("auto", "native"):
        raise ConfigError(f"lock strategy must be 'auto', 'lua' or 'native', not {strategy!r}")
    release = next((c for c in ("DELIFEQ", "DELEX") if c in capabilities), "lua")
    extend = "SET IFEQ" if "SET IFEQ" in capabilities else "lua"
    if strategy == "native" and "lua" in (release, extend):
        missing = [what for what, via in (("DELIFEQ or DELEX", release), ("SET IFEQ", extend)) if via == "lua"]
        raise ConfigError(f"lock strategy 'native' needs {' and '.join(missing)}, which this server lacks; "
                          "use strategy='auto' (native where available) or 'lua'")
    return LockStrategy(release, extend)


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


def _not_owned(name: str, action: str, never: bool) -> LockNotOwnedError:
    why = ("this Lock does not hold it (never acquired, or already released)" if never
           else "it is no longer ours: it expired, and perhaps another client holds it now")
    return LockNotOwnedError(f"cannot {action} lock {name!r}: {why}", name=name)


# --------------------------------------------------------------------------- the lock


class _Unset:
    """The type of ``_UNSET``: "not given", distinct from None ("wait without limit")."""


_UNSET = _Unset()


class Lock:
    """``Lock(client, name, ttl=10.0)``: ``acquire()`` returns a fencing token or raises LockTimeout.

    Timeouts follow Python: None waits without limit, 0 tries once, t waits up to t seconds.
    ``with Lock(r, "job") as token:`` acquires with ``timeout`` and releases on exit. With
    ``auto_renew=True`` a daemon thread extends the lock every ``renew_every`` seconds (ttl/3) at
    most ``max_renewals`` times, then stops: a holder stuck forever still loses the lock.
    ``strategy`` is "auto" (native commands where the server has them), "lua" or "native";
    ``lock.strategy`` says which path is used.

    ``fencing=False``: a plain SET NX PX, no INCR, so no per-name counter key is ever created
    (e.g. a cache's single-flight lock over many keys); ``acquire()`` then returns 0, which no
    ``FencedResource`` accepts. Still 2 round trips for acquire + release.
    """

    _scripts: ClassVar[dict[str, Script]] = {}  # registered once per class, called with client=

    def __init__(self, client: redis.Redis, name: str, ttl: float = 10.0, *, timeout: float | None = None,
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
        self.strategy = choose_strategy(lock_capabilities(client), strategy)
        self.token: str | None = None  # our random token while we think we hold the lock
        self.fencing_token: int | None = None
        self.renewals = 0
        self.attempts = 0  # acquire attempts (round trips) of the last acquire()
        self._renewer: _Renewer | None = None
        self._register(client)

    # ----- keys and scripts (no I/O)

    @property
    def key(self) -> str:
        return self.name

    @property
    def fencing_key(self) -> str:
        """The per-name INCR counter (in the lock key's cluster slot); never written when ``fencing=False``."""
        return self._fencing_key

    @classmethod
    def _register(cls, client: redis.Redis) -> None:
        if not cls._scripts:
            cls._scripts = {"acquire": unbound_script(ACQUIRE_LUA),
                            "release": unbound_script(RELEASE_LUA),
                            "extend": unbound_script(EXTEND_LUA)}

    def _begin(self, timeout: float | None) -> tuple[str, float | None]:
        """Checks before an acquire: a fresh random token and the deadline (None: no limit)."""
        check_timeout(timeout)
        if self.token is not None:
            raise LockError(f"lock {self.name!r} is already held by this Lock object (not reentrant)",
                            name=self.name)
        self.attempts = 0
        return secrets.token_hex(16), None if timeout is None else time.monotonic() + timeout

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

    # ----- public API

    def acquire(self, timeout: float | None | _Unset = _UNSET) -> int:
        """Take the lock and return its fencing token; LockTimeout when ``timeout`` runs out first.

        The token is >= 1, strictly increasing per name; 0 when the lock was made with
        ``fencing=False`` (no counter, no token). ``timeout`` defaults to the one given to the
        constructor (None: wait without limit).
        """
        if isinstance(timeout, _Unset):
            timeout = self.timeout
        token, deadline = self._begin(timeout)
        while True:
            self.attempts += 1
            fence = self.do_acquire(token)
            if fence is not None:
                self.token, self.fencing_token, self.renewals = token, fence, 0
                if self.auto_renew:
                    self._renewer = _Renewer(self)
                    self._renewer.start()
                return fence
            time.sleep(self._next_pause(deadline, timeout))

    def release(self) -> None:
        """Free the lock if it is still ours; LockNotOwnedError if it expired or never was ours."""
        renewer, self._renewer = self._renewer, None
        renewal_error = renewer.stop() if renewer is not None else None
        token, self.token = self.token, None
        if token is None:
            raise _not_owned(self.name, "release", never=True)
        if not self.do_release(token):
            raise _not_owned(self.name, "release", never=False) from renewal_error

    def extend(self, ttl: float | None = None) -> None:
        """Set the lock's remaining time to ``ttl`` seconds (default: its ttl), if it is still ours."""
        ttl_ms = _ms(_check_ttl(self.ttl if ttl is None else ttl))
        if self.token is None:
            raise _not_owned(self.name, "extend", never=True)
        if not self.do_extend(self.token, ttl_ms):
            raise _not_owned(self.name, "extend", never=False)

    def locked(self) -> bool:
        """Is the lock held by anyone right now (one EXISTS)?"""
        return bool(self.client.exists(self.key))

    @property
    def owned(self) -> bool:
        """Is it still ours (one GET)? Only a hint: it can expire right after."""
        if self.token is None:
            return False
        value = self.client.get(self.key)
        return (value.decode() if isinstance(value, bytes) else value) == self.token

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            self.release()
        except LockNotOwnedError as lost:
            if exc is None:
                raise  # the block ran, but not (wholly) under the lock: the caller must know
            exc.add_note(f"and then: {lost}")

    def __repr__(self) -> str:
        return f"Lock({self.name!r}, ttl={self.ttl}, strategy={self.strategy}, held={self.token is not None})"

    # ----- one round trip each: the hooks a chapter (or the async twin) replaces

    def _call(self, step: str, token: str, ttl_ms: int | None = None) -> tuple[Script | None, tuple[Any, ...]]:
        """What one step sends: ``(script, (keys, args))`` for Lua, ``(None, command)`` for native."""
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

    def _send(self, step: str, token: str, ttl_ms: int | None = None) -> Any:
        script, call = self._call(step, token, ttl_ms)
        if script is not None:
            return script(keys=call[0], args=call[1], client=self.client)
        return self.client.execute_command(*call)

    def do_acquire(self, token: str) -> int | None:
        """The fencing token (>= 1; 0 without fencing), or None while someone else holds the lock."""
        return acquire_outcome(self.fencing, self._send("acquire", token))

    def do_release(self, token: str) -> bool:
        return bool(self._send("release", token))  # 1/0 from DEL, DELIFEQ, DELEX alike

    def do_extend(self, token: str, ttl_ms: int) -> bool:
        reply = self._send("extend", token, ttl_ms)
        return reply is not None and reply != 0  # SET IFEQ: OK or nil; the script: 1 or 0


class _Renewer:
    """Extends a held lock every ``renew_every`` s, at most ``max_renewals`` times.

    Holds only a weakref to the lock (a forgotten Lock is collected and its thread ends), paced by
    ``Event.wait`` (the sleep is the stop signal), daemon, joined by ``release``.
    """

    def __init__(self, lock: Lock) -> None:
        self._lock = weakref.ref(lock)
        self._token = lock.token
        self._every = lock.renew_every
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"lock-renewer:{lock.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            lock = self._lock()
            if lock is None or lock.token != self._token or lock.renewals >= lock.max_renewals:
                return  # collected, released, or at its cap: from here the TTL runs out by itself
            try:
                if not lock.do_extend(self._token, _ms(lock.ttl)):  # type: ignore[arg-type]
                    return  # lost already: nothing left to renew
                lock.renewals += 1
            except BaseException as exc:  # noqa: BLE001 - handed to release(), which re-raises
                self.error = exc
                return
            finally:
                del lock

    def stop(self) -> BaseException | None:
        """Stop and join; returns what the thread raised, if anything."""
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join()
        return self.error
