"""One record set in three layouts: same data back, honest costs, clear errors."""

from __future__ import annotations

import socket

import pytest
import redis

import redisopt


@pytest.fixture
def users() -> dict:
    return redisopt.sample_users(50)


@pytest.fixture
def stores(r: redis.Redis, ks: redisopt.KeySpace, users: dict) -> dict:
    stores = {layout: redisopt.RecordStore(r, ks, layout) for layout in redisopt.LAYOUTS}
    for store in stores.values():
        store.put_many(users)
    return stores


def test_sample_users_are_deterministic() -> None:
    assert redisopt.sample_users(5) == redisopt.sample_users(5)
    assert redisopt.sample_users(5, seed=1) != redisopt.sample_users(5, seed=2)
    assert set(redisopt.sample_users(1)[1]) == set(redisopt.USER_FIELDS)


def test_every_layout_returns_the_same_records(stores: dict, users: dict) -> None:
    for uid, user in users.items():
        expected = {k: str(v) for k, v in user.items()}
        assert [s.get(uid) for s in stores.values()] == [expected] * 3
        assert {s.get_field(uid, "city") for s in stores.values()} == {user["city"]}
    assert [s.get(999) for s in stores.values()] == [None] * 3


def test_keys_per_record(stores: dict) -> None:
    assert len(stores["json"].keys(1)) == len(stores["hash"].keys(1)) == 1
    assert len(stores["fields"].keys(1)) == len(redisopt.USER_FIELDS)


def test_each_whole_record_read_is_one_round_trip(r: redis.Redis, stores: dict) -> None:
    r.ping()
    for store in stores.values():
        with redisopt.count_round_trips(r) as rt:
            store.get(3)
        assert rt.round_trips == 1, store.layout


def test_put_many_is_one_round_trip(r: redis.Redis, ks: redisopt.KeySpace, users: dict) -> None:
    store = redisopt.RecordStore(r, ks, "fields")
    r.ping()
    with redisopt.count_round_trips(r) as rt:
        store.put_many(users)
    assert rt.round_trips == 1 and rt.commands == len(users)


def test_json_field_read_transfers_the_whole_document(stores: dict, r: redis.Redis) -> None:
    doc = r.get(stores["json"].key(1))
    assert stores["json"].field_read_bytes(1, "age") == len(doc.encode())
    assert stores["hash"].field_read_bytes(1, "age") == len(str(redisopt.sample_users(1)[1]["age"]))


def test_increment_round_trips_and_results(r: redis.Redis, stores: dict, users: dict) -> None:
    r.ping()
    costs = {}
    for layout, store in stores.items():
        with redisopt.count_round_trips(r) as rt:
            assert store.increment(2, "visits", 5) == users[2]["visits"] + 5
        costs[layout] = rt.round_trips
    assert costs == {"json": 2, "hash": 1, "fields": 1}


def test_hash_increment_loses_no_update_under_threads(r: redis.Redis, stores: dict, users: dict) -> None:
    import threading

    store = stores["hash"]

    def bump() -> None:
        for _ in range(100):
            store.increment(4, "visits")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(store.get_field(4, "visits")) == users[4]["visits"] + 400


def test_bad_input_is_named(r: redis.Redis, ks: redisopt.KeySpace, stores: dict) -> None:
    with pytest.raises(ValueError, match="layout 'xml'"):
        redisopt.RecordStore(r, ks, "xml")
    with pytest.raises(ValueError, match="unknown field"):
        stores["hash"].put_many({1: {"nickname": "x"}})
    with pytest.raises(KeyError, match="no record"):
        stores["json"].increment(12345, "visits")


def _raw_reply(server: redisopt.Server, *args: str) -> bytes:
    """The exact bytes the server sends back for one command, read off a plain socket."""
    def frame(*words: str) -> bytes:
        parts = [f"*{len(words)}\r\n".encode()]
        for word in words:
            data = word.encode()
            parts.append(f"${len(data)}\r\n".encode() + data + b"\r\n")
        return b"".join(parts)

    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        stream = sock.makefile("rb")
        if server.password:
            sock.sendall(frame("AUTH", server.password))
            assert stream.readline() == b"+OK\r\n"
        sock.sendall(frame(*args))
        header = stream.readline()
        assert header.startswith(b"$"), header
        return header + stream.read(int(header[1:]) + 2)


def test_wire_bytes_are_what_the_server_sends(server: redisopt.Server, stores: dict) -> None:
    assert [redisopt.resp_bulk_size(n) for n in (0, 2, 111)] == [6, 8, 119]
    json_reply = _raw_reply(server, "GET", stores["json"].key(1))
    hash_reply = _raw_reply(server, "HGET", stores["hash"].key(1), "age")
    assert stores["json"].field_read_wire_bytes(1, "age") == len(json_reply)
    assert stores["hash"].field_read_wire_bytes(1, "age") == len(hash_reply)
    assert stores["fields"].field_read_wire_bytes(1, "age") == len(hash_reply)
