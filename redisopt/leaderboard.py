"""A leaderboard two ways: a Sorted Set the server keeps in order, or a Hash sorted in Python."""

from __future__ import annotations

from collections.abc import Mapping

import redis
from redis.client import Pipeline

from redisopt.bulk import chunked


class Leaderboard:
    """Scores in a Sorted Set: top-N is O(log N + n) on the server, one round trip."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client, self.key = client, key

    def add(self, scores: Mapping[str, float], chunk: int = 1_000, *, pipeline: Pipeline | None = None) -> None:
        """ZADD all scores, ``chunk`` members per command, in one pipeline (the caller's, if given:
        then the caller executes it)."""
        pipe = pipeline if pipeline is not None else self.client.pipeline(transaction=False)
        for part in chunked(scores.items(), chunk):
            pipe.zadd(self.key, dict(part))
        if pipeline is None:
            pipe.execute()

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        """Highest first, with ``ZRANGE key 0 n-1 REV WITHSCORES`` (one round trip).

        Sent as written: redis-py's ``zrange(desc=True)`` quietly sends ZREVRANGE instead, the
        form deprecated since Redis 6.2.
        """
        if n < 1:
            raise ValueError("n must be >= 1")
        return self.client.execute_command(
            "ZRANGE", self.key, 0, n - 1, "REV", "WITHSCORES", withscores=True
        )

    def rank(self, member: str) -> int | None:
        """0-based rank from the top, or None if the member has no score."""
        return self.client.zrevrank(self.key, member)


def top_by_sorting(client: redis.Redis, hash_key: str, n: int = 10) -> list[tuple[str, float]]:
    """The alternative: fetch every score (HGETALL) and sort in Python. O(N) transfer per call.

    Ties are ordered as ZRANGE … REV orders them (by member, descending), so results compare.
    """
    scores = {member: float(score) for member, score in client.hgetall(hash_key).items()}
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:n]
