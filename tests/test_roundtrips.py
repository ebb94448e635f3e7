"""redisopt.roundtrips: each case sends exactly the round trips and commands its label promises."""

from __future__ import annotations

import pytest
import redis

import redisopt
from redisopt.roundtrips import ladder_cases, push_cases, round_trip_table, server_usec


def test_ladder_counts_and_writes_every_key(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    prefix = ks.key("ladder")
    cases = ladder_cases(r, prefix, 50, value="x")
    table = round_trip_table(r, cases, cleanup=lambda: redisopt.unlink_matching(r, prefix + ":*"))
    assert table.to_dict("index") == {
        "개별 SET": {"왕복": 50, "명령": 50},
        "파이프라인": {"왕복": 1, "명령": 50},
        "파이프라인 + MULTI": {"왕복": 1, "명령": 52},
        "MSET (가변 인자)": {"왕복": 1, "명령": 1},
        "Lua 스크립트": {"왕복": 1, "명령": 1},
    }
    for fn in cases.values():  # every case writes the same 50 keys
        redisopt.unlink_matching(r, prefix + ":*")
        fn()
        assert r.mget([f"{prefix}:{i}" for i in range(50)]) == ["x"] * 50


def test_lua_case_loads_its_script_up_front(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    r.script_flush()
    cases = ladder_cases(r, ks.key("fresh"), 3)
    with redisopt.count_round_trips(r) as sent:
        cases["Lua 스크립트"]()
    assert sent.round_trips == 1, "a NOSCRIPT + SCRIPT LOAD would make it 3"


@pytest.mark.parametrize("n, batch", [(10, None), (10, 1), (10, 3), (400, 100), (7, 7), (5, 50)])
def test_push_cases_counts_and_order(r: redis.Redis, ks: redisopt.KeySpace, n: int, batch: int | None) -> None:
    key = ks.key("list")
    cases = push_cases(r, key, n, batch)
    table = round_trip_table(r, cases, cleanup=lambda: r.unlink(key))
    per_trip = -(-n // (batch or n))
    assert table.loc["개별 RPUSH"].to_dict() == {"왕복": n, "명령": n}
    assert table.loc["파이프라인"].to_dict() == {"왕복": per_trip, "명령": n}
    assert table.loc["가변 인자 RPUSH"].to_dict() == {"왕복": per_trip, "명령": per_trip}
    for fn in cases.values():
        r.unlink(key)
        fn()
        assert r.lrange(key, 0, -1) == [f"item-{i}" for i in range(n)]


@pytest.mark.parametrize("n, batch", [(0, None), (5, 0), (5, -1)])
def test_push_cases_rejects_bad_sizes(r: redis.Redis, n: int, batch: int | None) -> None:
    with pytest.raises(ValueError):
        push_cases(r, "unused", n, batch)


def test_server_usec_counts_the_calls_made(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    before = server_usec(r, ["rpush", "LPUSH"])
    r.rpush(ks.key("a"), 1)
    r.rpush(ks.key("a"), 2)
    r.lpush(ks.key("a"), 3)
    after = server_usec(r, ["rpush", "LPUSH"])
    assert after[0] - before[0] == 3  # a private server: nobody else pushes meanwhile
    assert after[1] >= before[1]
    assert server_usec(r, ["nosuchcommand"]) == (0, 0)


def test_exported_from_the_package() -> None:
    for name in ("ladder_cases", "push_cases", "round_trip_table", "server_usec", "SET_MANY_LUA"):
        assert name in redisopt.__all__ and hasattr(redisopt, name)
