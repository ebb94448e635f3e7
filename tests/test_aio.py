"""asyncio clients: the same server, exact round-trip counts and the guard, as the sync clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

import redisopt
import redisopt.aio
from redisopt.servers import UrlServer


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_connect_reaches_the_same_server_as_the_sync_client(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    r.set(ks.key("from-sync"), "hello")

    async def main() -> str:
        client = redisopt.aio.connect()
        try:
            return await client.get(ks.key("from-sync"))
        finally:
            await client.aclose()

    assert run(main()) == "hello"


def test_round_trips_are_counted_exactly(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    async def main() -> tuple[redisopt.RoundTrips, redisopt.RoundTrips, redisopt.RoundTrips]:
        client = redisopt.aio.client_for(server)
        try:
            await client.ping()  # the handshake happens here, and is counted apart
            with redisopt.count_round_trips(client) as singles:
                for i in range(10):
                    await client.set(ks.key("k", i), i)
            with redisopt.count_round_trips(client) as piped:
                async with client.pipeline(transaction=False) as pipe:
                    for i in range(10):
                        pipe.get(ks.key("k", i))
                    await pipe.execute()
            with redisopt.count_round_trips(client) as multi:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.incr(ks.key("n")).incr(ks.key("n"))
                    await pipe.execute()
            return singles, piped, multi
        finally:
            await client.aclose()

    singles, piped, multi = run(main())
    assert (singles.round_trips, singles.commands, singles.connects) == (10, 10, 0)
    assert (piped.round_trips, piped.commands) == (1, 10)
    assert (multi.round_trips, multi.commands) == (1, 4)  # MULTI, INCR, INCR, EXEC


@pytest.fixture
def url_server(server: redisopt.Server) -> Iterator[UrlServer]:
    yield UrlServer(f"redis://:{server.password}@127.0.0.1:{server.port}/0")


def test_the_guard_refuses_on_a_url_server_and_sends_nothing(url_server: UrlServer, r: redis.Redis,
                                                             ks: redisopt.KeySpace) -> None:
    r.set(ks.key("precious"), "keep me")

    async def main() -> list[str]:
        client = redisopt.aio.client_for(url_server)
        refused = []
        try:
            for call in (lambda: client.flushall(), lambda: client.config_set("maxmemory", "1mb"),
                         lambda: client.execute_command("", "FLUSHDB"),
                         lambda: client.eval("return redis.call('FLUSHDB')", 0)):
                try:
                    await call()
                except redisopt.DestructiveCommandError as exc:
                    refused.append(str(exc).split()[0])
            with redisopt.count_round_trips(client) as rt:
                with pytest.raises(redisopt.DestructiveCommandError):
                    async with client.pipeline(transaction=True) as pipe:
                        pipe.set(ks.key("x"), 1).flushdb()
                        await pipe.execute()
            assert rt.round_trips == 0
            assert await client.get(ks.key("precious")) == "keep me"  # ordinary commands still run
        finally:
            await client.aclose()
        return refused

    assert run(main()) == ["FLUSHALL", "CONFIG", "FLUSHDB", "EVAL"]
    assert r.get(ks.key("precious")) == "keep me" and r.get(ks.key("x")) is None
    assert r.config_get("maxmemory")["maxmemory"] == "0"


def test_a_client_keeps_a_started_server_alive() -> None:
    async def main() -> bool:
        client = redisopt.aio.client_for(redisopt.start_server({"maxmemory": "8mb"}))
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    assert run(main())


def test_many_tasks_wait_for_a_connection_instead_of_failing(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    async def main() -> list[int]:
        client = redisopt.aio.client_for(server, max_connections=5)
        try:
            return await asyncio.gather(*(client.incr(ks.key("n")) for _ in range(200)))
        finally:
            await client.aclose()

    assert sorted(run(main())) == list(range(1, 201))
