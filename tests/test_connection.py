"""The instrumented connection packs exactly the bytes redis-py would, only faster; hand-packed commands too."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

import redisopt
from redisopt.connection import Tap, TCPConnection, pack_command, send_packed

ODD_COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "k", "v"),
    ("set", b"k", 1, 2.5, -3, "é"),
    ("CONFIG SET", "maxmemory", "1mb"),  # redis-py splits a str first argument into words
    (" GET\t", "k"),  # and strips whitespace around it
    (b"CONFIG GET", b"maxmemory"),  # bytes are split only when they hold a space
    (b"GET\tX", "k"),  # ... so a tab alone stays inside the word
    ("SET", bytearray(b"k"), memoryview(b"v")),  # converted to bytes by redis-py's packer
    ("SET", "big", b"x" * 100_000),  # bigger than the buffer cutoff: sent as its own chunk
    ("ECHO", ""),
]

words = st.one_of(st.text(max_size=12), st.binary(max_size=12), st.integers(), st.floats(allow_nan=False))
commands = st.lists(st.tuples(st.one_of(st.text(min_size=1, max_size=12), st.binary(min_size=1, max_size=12)),
                              st.lists(words, max_size=4)).map(lambda c: (c[0], *c[1])), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def pair() -> tuple[TCPConnection, redis.Connection]:
    ours = TCPConnection(tap=Tap(), host="127.0.0.1", port=1)  # never connected: packing only
    theirs = redis.Connection(host="127.0.0.1", port=1)
    assert type(ours._command_packer) is type(theirs._command_packer)  # hiredis's, both
    return ours, theirs


def _same(ours: TCPConnection, theirs: redis.Connection, cmds: list[tuple[Any, ...]]) -> None:
    def packed(conn: Any) -> bytes:
        try:
            return b"".join(bytes(c) for c in conn.pack_commands(cmds))
        except Exception as exc:  # the same error either way
            return repr(type(exc)).encode()

    assert packed(ours) == packed(theirs)


def test_pipelines_pack_byte_for_byte_as_redis_py(pair) -> None:
    _same(*pair, ODD_COMMANDS)
    for command in ODD_COMMANDS:
        _same(*pair, [command])
    _same(*pair, [("SET", None)])  # a type redis-py refuses: refused here too (DataError)


@settings(max_examples=300, deadline=None)
@given(cmds=commands)
def test_any_command_packs_as_redis_py(pair, cmds) -> None:
    _same(*pair, cmds)


def test_big_values_are_not_copied_into_one_buffer(pair) -> None:
    ours, _ = pair
    chunks = ours.pack_commands([("SET", "a", "1"), ("SET", "big", b"x" * 100_000), ("SET", "b", "2")])
    assert [len(c) > 100_000 for c in chunks] == [False, True, False]


def test_pack_command_frames_as_hiredis() -> None:
    for values in ([], [b""], [b"a", b"x" * 5_000]):
        assert pack_command((b"RPUSH", b"k"), iter(values)).data == hiredis.pack_command(("RPUSH", "k", *values))


def test_send_packed_counts_and_raises_error_replies_in_step(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    key, other = ks.key("list"), ks.key("string")
    r.set(other, "not a list")
    commands = [pack_command((b"RPUSH", key.encode()), [b"a", b"b"]),
                pack_command((b"RPUSH", other.encode()), [b"c"]),  # WRONGTYPE
                pack_command((b"RPUSH", key.encode()), [b"d"])]
    with redisopt.count_round_trips(r) as rt, pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        send_packed(r, commands)
    assert (rt.round_trips, rt.commands) == (1, 3)
    assert r.lrange(key, 0, -1) == ["a", "b", "d"]  # the server ran the others; the error came back in place
    assert r.ping() is True  # every reply was read: the pooled connection is still in step
    assert send_packed(r, commands[:1]) == [5]
