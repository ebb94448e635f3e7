"""Steps: a cache operation written once as a generator of I/O requests, run by a sync or an asyncio driver.

The cache's algorithms (single flight, XFetch, leases, write-behind) are the hard part, and an
asyncio twin that copies them drifts (redis-py's own Lock and asyncio Lock did). So each
operation is a generator that *yields* what it needs — a command, a pipeline, a script, a
sleep, the caller's loader, a call into the store — and receives the reply. ``run`` executes the
steps on a ``redis.Redis``; ``redisopt.aio.cache.arun`` on a ``redis.asyncio.Redis``. Neither
knows anything about caching. Payload replies are read undecoded (``NEVER_DECODE``), so binary
codecs (msgpack, zlib) work on a ``decode_responses=True`` client too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import NEVER_DECODE
from redis.commands.core import Script


@dataclass(frozen=True)
class Cmd:
    """One command, one round trip; ``raw``: the reply's bytes are not decoded."""

    args: tuple[Any, ...]
    raw: bool = False


@dataclass(frozen=True)
class Pipe:
    """Several commands in one round trip; ``transaction``: inside MULTI/EXEC (then ``raw`` is ignored)."""

    commands: tuple[tuple[Any, ...], ...]
    transaction: bool = False
    raw: bool = False


@dataclass(frozen=True)
class Eval:
    """A Lua script by EVALSHA (loaded once on NOSCRIPT); its reply is never decoded."""

    script: Script
    keys: tuple[Any, ...]
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Sleep:
    """Wait without holding a connection (a waiter must not pin one of the pool's connections)."""

    seconds: float


@dataclass(frozen=True)
class Load:
    """Call the caller's loader (the slow database read); the reply is its value."""


@dataclass(frozen=True)
class Call:
    """Blocking work that is not Redis, e.g. ``store.put`` (the asyncio driver runs it in a thread)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


Step = Cmd | Pipe | Eval | Sleep | Load | Call
Steps = Generator[Step, Any, Any]


def _options(raw: bool) -> dict[str, Any]:
    return {NEVER_DECODE: True} if raw else {}


def execute(client: redis.Redis, step: Step, loader: Callable[[], Any] | None) -> Any:
    """Carry out one step on a sync client."""
    if isinstance(step, Cmd):
        return client.execute_command(*step.args, **_options(step.raw))
    if isinstance(step, Pipe):
        pipe = client.pipeline(transaction=step.transaction)
        for args in step.commands:
            pipe.execute_command(*args, **_options(step.raw and not step.transaction))
        return pipe.execute()
    if isinstance(step, Eval):
        call = ("EVALSHA", step.script.sha, len(step.keys), *step.keys, *step.args)
        try:
            return client.execute_command(*call, **_options(True))
        except redis.exceptions.NoScriptError:
            client.script_load(step.script.script)
            return client.execute_command(*call, **_options(True))
    if isinstance(step, Sleep):
        time.sleep(step.seconds)
        return None
    if isinstance(step, Load):
        if loader is None:
            raise TypeError("this cache has no store: get_or_load needs a loader")
        return loader()
    if isinstance(step, Call):
        return step.fn(*step.args)
    raise TypeError(f"unknown step {step!r}")


def run(client: redis.Redis, steps: Steps, loader: Callable[[], Any] | None = None) -> Any:
    """Drive ``steps`` to completion on a sync client; what a step raises is thrown back into the
    generator (so it can release a lock) and propagates from here if it is not handled."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        error = None
        try:
            reply = execute(client, step, loader)
        except BaseException as exc:  # noqa: BLE001 - handed to the generator, re-raised there
            error, reply = exc, None
