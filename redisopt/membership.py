"""Membership checks: the same members in a Set (SISMEMBER, O(1)) and a List (LPOS, O(N))."""

from __future__ import annotations

from collections.abc import Callable

import redis

from redisopt.bulk import add_many, push_many


def membership_cases(client: redis.Redis, prefix: str, n: int) -> dict[str, Callable[[], object]]:
    """Store ``n`` members as a List and a Set under ``prefix``; return one timed check per structure.

    The target is the last member, the worst case for LPOS, so the List scan really covers N.
    """
    members = [f"user:{i}" for i in range(n)]
    list_key, set_key = f"{prefix}:list:{n}", f"{prefix}:set:{n}"
    client.unlink(list_key, set_key)
    push_many(client, list_key, members)  # variadic RPUSH in chunks
    add_many(client, set_key, members)
    target = members[-1]
    return {"SISMEMBER (Set)": lambda: client.sismember(set_key, target),
            "LPOS (List)": lambda: client.lpos(list_key, target)}
