"""The storage side of fencing: a value that refuses writes carrying a stale fencing token.

A lock alone cannot stop a holder that paused past its TTL (GC, swap) from writing after the next
holder took over: it still believes it holds the lock. Each ``Lock.acquire`` returns a fencing token
that only grows, so the resource keeps the highest token it has accepted and refuses older ones
(Kleppmann, "How to do distributed locking", 2016). Chapter 5 (5장) shows an expired holder fenced off.
"""

from __future__ import annotations

from typing import Any, ClassVar

import redis
from redis.commands.core import Script

from redisopt.errors import StaleTokenError
from redisopt.scripts import unbound_script

__all__ = ["FENCED_WRITE_LUA", "FencedResource"]

# KEYS[1] the resource's value, KEYS[2] the highest fencing token it has accepted;
# ARGV[1] the writer's fencing token, ARGV[2] the value.
# Returns {1, token} when written, {0, highest} when the token is older than one already seen.
FENCED_WRITE_LUA = """
local highest = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = tonumber(ARGV[1])
if token < highest then
  return {0, highest}
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2])
return {1, token}
"""


class FencedResource:
    """A value that only accepts writes carrying a fencing token at least as new as any it has seen.

    Once the holder with token 34 has written, a paused holder whose lock expired (token 33) is
    refused with StaleTokenError instead of overwriting newer data. Its script is loaded with the
    lock's by the first Lock on a server; used alone, its first write loads it (NOSCRIPT, SCRIPT LOAD).
    """

    _script: ClassVar[Script | None] = None

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.client = client
        self.name = name
        if FencedResource._script is None:
            FencedResource._script = unbound_script(FENCED_WRITE_LUA)

    @property
    def key(self) -> str:
        return self.name

    @property
    def highest_key(self) -> str:
        return f"{self.name}:highest_token"

    def write(self, value: Any, token: int) -> None:
        """Store ``value`` if ``token`` is not older than any accepted one, else StaleTokenError.

        No ``pipeline=``: whether the write was refused is the reply, and it must raise here.
        """
        if isinstance(token, bool) or not isinstance(token, int) or token < 1:
            raise ValueError(f"fencing token must be an int >= 1, not {token!r}")
        reply = self.do_write(value, token)
        self._outcome(reply, token)

    def _outcome(self, reply: Any, token: int) -> None:
        accepted, highest = int(reply[0]), int(reply[1])
        if not accepted:
            raise StaleTokenError(f"write to {self.name!r} refused: fencing token {token} is older than "
                                  f"{highest}, already accepted (a lock holder that expired)",
                                  name=self.name, token=token, highest=highest)

    def do_write(self, value: Any, token: int) -> Any:
        assert self._script is not None
        return self._script(keys=[self.key, self.highest_key], args=[token, value], client=self.client)

    def read(self) -> Any:
        return self.client.get(self.key)

    def highest(self) -> int:
        """The newest fencing token accepted so far (0: none)."""
        return int(self.client.get(self.highest_key) or 0)
