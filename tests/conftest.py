"""Shared fixtures: every test talks to a real server that redisopt provisions (never a fake)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import redis

import redisopt


@pytest.fixture(scope="session")
def server() -> redisopt.Server:
    return redisopt.default_server()


@pytest.fixture
def r(server: redisopt.Server) -> Iterator[redis.Redis]:
    client = server.client()
    yield client
    client.close()


@pytest.fixture
def ks(r: redis.Redis, request: pytest.FixtureRequest) -> Iterator[redisopt.KeySpace]:
    """A key space private to this test, cleared before and after it."""
    space = redisopt.KeySpace("test:" + re.sub(r"[^A-Za-z0-9_.:-]", "_", request.node.name))
    space.clear(r)
    yield space
    space.clear(r)
