"""Key prefixes in one place: each chapter works under its own prefix and cleans up after itself.

Every chapter's keys live under ``redisopt:chNN``: a namespace only this workbook uses, so clearing
a chapter on a user's own server (REDIS_URL) cannot delete that user's ``ch01:customer:1``.
"""

from __future__ import annotations

import re

import redis

from redisopt.bulk import unlink_matching

WORKBOOK = "redisopt"  # the one namespace every chapter's keys live under
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]+$")


def _escape_glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class KeySpace:
    """Builds keys as ``<prefix>:<part>:<part>`` and clears them with SCAN + UNLINK.

    Clearing by prefix never touches other keys, so it is safe on a server the user supplied,
    where FLUSHDB is refused.
    """

    def __init__(self, prefix: str) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"key prefix {prefix!r} must be letters, digits or _ - . :")
        self.prefix = prefix

    @classmethod
    def chapter(cls, number: int) -> KeySpace:
        """The key space of chapter ``number``: ``redisopt:ch01`` for chapter 1."""
        if not 0 < number < 100:
            raise ValueError(f"chapter number {number!r} must be 1..99")
        return cls(f"{WORKBOOK}:ch{number:02d}")

    def key(self, *parts: object) -> str:
        return ":".join([self.prefix, *(str(p) for p in parts)])

    def pattern(self, *parts: object) -> str:
        """A SCAN MATCH pattern for every key under ``parts`` (glob characters escaped)."""
        return _escape_glob(self.key(*parts)) + ":*" if parts else _escape_glob(self.prefix) + ":*"

    def clear(self, client: redis.Redis, *parts: object) -> int:
        """UNLINK every key under the prefix (or under ``parts``); returns how many were removed."""
        return unlink_matching(client, self.pattern(*parts))

    def __repr__(self) -> str:
        return f"KeySpace({self.prefix!r})"
