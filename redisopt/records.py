"""One record set stored three ways: a JSON string per record, a Hash per record, a key per field.

Chapter 1 compares them on memory, on what it costs to read or change one field, and on how
many round trips each operation needs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.client import Pipeline

from redisopt.keyspace import KeySpace

LAYOUTS = ("json", "hash", "fields")
_CITIES = ("서울", "부산", "인천", "대구", "대전", "광주", "수원", "울산")
_FAMILY = ("김", "이", "박", "최", "정", "강", "조", "윤")
_GIVEN = ("민준", "서연", "도윤", "하은", "시우", "지우", "예준", "수아")
USER_FIELDS = ("name", "age", "city", "email", "plan", "visits")


def resp_bulk_size(payload: int) -> int:
    """Bytes a RESP bulk string of ``payload`` bytes takes on the wire (header, payload, CRLFs)."""
    return len(f"${payload}\r\n") + payload + 2


def has_command(client: redis.Redis, name: str) -> bool:
    """Does this server know ``name`` (e.g. HEXPIRE: Redis 7.4+, Valkey 9+)? Asked with COMMAND INFO.

    Sent as one word so redis-py returns the raw reply: its COMMAND INFO parser fails on the nil
    an unknown command gets.
    """
    reply = client.execute_command("COMMAND INFO", name)
    return bool(reply) and reply[0] is not None


def sample_users(n: int, seed: int = 7) -> dict[int, dict[str, Any]]:
    """``n`` deterministic user records (same seed, same data), keyed by id 1..n."""
    rng = random.Random(seed)
    users = {}
    for uid in range(1, n + 1):
        users[uid] = {
            "name": rng.choice(_FAMILY) + rng.choice(_GIVEN),
            "age": rng.randint(18, 70),
            "city": rng.choice(_CITIES),
            "email": f"user{uid}@example.com",
            "plan": rng.choice(("free", "pro", "team")),
            "visits": rng.randint(0, 500),
        }
    return users


class RecordStore:
    """Records of fixed ``fields`` under ``space``, in one of ``LAYOUTS``.

    Every read returns ``dict[str, str]`` whatever the layout, so results compare directly; the
    client must decode responses (``connect()``'s clients do).
    """

    def __init__(self, client: redis.Redis, space: KeySpace, layout: str,
                 fields: Sequence[str] = USER_FIELDS) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
        self.client, self.layout, self.fields = client, layout, tuple(fields)
        self.space = KeySpace(space.key(layout))

    def key(self, rid: object, field: str | None = None) -> str:
        return self.space.key("user", rid, field) if field else self.space.key("user", rid)

    def keys(self, rid: object) -> list[str]:
        """Every key one record occupies."""
        if self.layout == "fields":
            return [self.key(rid, f) for f in self.fields]
        return [self.key(rid)]

    def _check(self, record: Mapping[str, Any]) -> None:
        unknown = set(record) - set(self.fields)
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; this store has {self.fields}")

    def put_many(self, records: Mapping[object, Mapping[str, Any]], *, pipeline: Pipeline | None = None) -> None:
        """Write all records in one pipeline (one round trip); in the caller's, if given (then the
        caller executes it, e.g. inside its MULTI)."""
        pipe = pipeline if pipeline is not None else self.client.pipeline(transaction=False)
        for rid, record in records.items():
            self._check(record)
            if self.layout == "json":
                pipe.set(self.key(rid), json.dumps(record, ensure_ascii=False))
            elif self.layout == "hash":
                pipe.hset(self.key(rid), mapping=dict(record))
            else:
                pipe.mset({self.key(rid, f): v for f, v in record.items()})
        if pipeline is None:
            pipe.execute()

    def get(self, rid: object) -> dict[str, str] | None:
        """The whole record in one round trip (GET, HGETALL or MGET)."""
        if self.layout == "json":
            raw = self.client.get(self.key(rid))
            return None if raw is None else {k: str(v) for k, v in json.loads(raw).items()}
        if self.layout == "hash":
            return self.client.hgetall(self.key(rid)) or None
        values = self.client.mget(self.keys(rid))
        found = {f: v for f, v in zip(self.fields, values, strict=True) if v is not None}
        return found or None

    def get_field(self, rid: object, field: str) -> str | None:
        """One field: a JSON record must be fetched and parsed whole to get it."""
        if self.layout == "json":
            record = self.get(rid)
            return None if record is None else record.get(field)
        if self.layout == "hash":
            return self.client.hget(self.key(rid), field)
        return self.client.get(self.key(rid, field))

    def field_read_bytes(self, rid: object, field: str) -> int:
        """Bytes of reply payload a one-field read transfers (JSON: the whole document)."""
        if self.layout == "json":
            raw = self.client.get(self.key(rid))
        else:
            raw = self.get_field(rid, field)
        return len(raw.encode()) if raw is not None else 0

    def field_read_wire_bytes(self, rid: object, field: str) -> int:
        """The same reply as it crosses the wire: a RESP bulk string, ``$<len>\\r\\n<payload>\\r\\n``."""
        return resp_bulk_size(self.field_read_bytes(rid, field))

    def increment(self, rid: object, field: str, by: int = 1) -> int:
        """Add ``by`` to a numeric field.

        Hash and key-per-field do it on the server in one atomic command (HINCRBY / INCRBY).
        JSON cannot: it takes a GET and a SET, and another client writing in between is
        overwritten (a lost update; chapter 5 fixes it with WATCH or Lua).
        """
        if self.layout == "hash":
            return int(self.client.hincrby(self.key(rid), field, by))
        if self.layout == "fields":
            return int(self.client.incrby(self.key(rid, field), by))
        raw = self.client.get(self.key(rid))
        if raw is None:
            raise KeyError(f"no record {rid!r} in {self.space.prefix}")
        record = json.loads(raw)
        record[field] = int(record[field]) + by
        self.client.set(self.key(rid), json.dumps(record, ensure_ascii=False))
        return int(record[field])
