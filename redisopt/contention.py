"""Real threads against one server: contention runs, and interleavings made reproducible (5장).

Chapter 5's claims are about what happens when clients run *at the same time*: a plain pipeline
lets other clients' commands in between its own, MULTI/EXEC does not; a GET+SET counter loses
updates, INCR and a Lua script do not; WATCH turns conflicts into retries. ``hammer`` releases N
real threads together behind one barrier and gathers what each update returned (or the bounded
retry error it raised), so a notebook can check the exact final count. ``interleaving`` makes the
"in between" deterministic: the pipeline blocks on BLPOP until the other client has run its
commands, so the outcome does not depend on timing. ``session`` sends raw commands on one
connection and shows each reply, as redis-cli would (QUEUED, EXECABORT).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import redis

from redisopt.errors import RedisoptError, RetryLimitExceeded

__all__ = ["Hammered", "contention_sweep", "gaps_under_load", "hammer", "interleaving", "on_one_connection"]


@dataclass(frozen=True)
class Hammered:
    """What ``hammer`` saw: each update's return value, the updates that gave up, and the wall time."""

    results: list[Any]  # what each successful update returned, all threads together
    gave_up: list[BaseException]  # updates that raised one of the ``catch`` errors
    seconds: float  # from the barrier's release to the last thread's end
    threads: int

    @property
    def done(self) -> int:
        return len(self.results)

    @property
    def retries(self) -> int:
        """Retries reported by the updates (``TxnResult.retries``); 0 for updates that report none."""
        return sum(getattr(res, "retries", 0) for res in self.results)

    @property
    def per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def hammer(
    update: Callable[[], Any],
    *,
    threads: int,
    updates: int,
    catch: tuple[type[BaseException], ...] = (RetryLimitExceeded,),
) -> Hammered:
    """Call ``update()`` ``updates`` times in each of ``threads`` real threads started together.

    Errors of the ``catch`` types are collected in ``gave_up`` (the update is counted as not done);
    any other error stops that thread and is raised here after every thread has ended.
    """
    if threads < 1 or updates < 0:
        raise ValueError(f"need threads >= 1 and updates >= 0, not threads={threads!r}, updates={updates!r}")
    results: list[Any] = []
    gave_up: list[BaseException] = []
    failures: list[BaseException] = []
    guard = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        mine: list[Any] = []
        lost: list[BaseException] = []
        try:
            barrier.wait()
            for _ in range(updates):
                try:
                    mine.append(update())
                except catch as exc:
                    lost.append(exc)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            failures.append(exc)
        with guard:
            results.extend(mine)
            gave_up.extend(lost)

    pool = [threading.Thread(target=work, name=f"hammer-{i}", daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()  # every thread is ready: the clock starts when they are released together
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise failures[0]
    return Hammered(results=results, gave_up=gave_up, seconds=seconds, threads=threads)


def contention_sweep(
    cases: Mapping[str, Callable[[], Any]],
    *,
    key: str,
    client: redis.Redis,
    threads: Sequence[int],
    total: int,
    repeat: int = 3,
) -> pd.DataFrame:
    """Run each case with each thread count (``total`` updates split across the threads), ``repeat`` times.

    Every case increments the integer at ``key`` by 1 per update; the key is deleted before each
    run and read after it, so each row says whether the final value is exact. One row per run:
    case, threads, run, seconds, updates_per_s, retries, done, gave_up, final, exact.
    """
    rows = []
    for n in threads:
        per_thread = max(1, total // n)
        for run in range(repeat):
            for case, update in cases.items():  # round-robin: noise hits every case alike
                client.delete(key)
                result = hammer(update, threads=n, updates=per_thread)
                final = int(client.get(key) or 0)
                rows.append({"case": case, "threads": n, "run": run, "seconds": result.seconds,
                             "updates_per_s": result.per_s, "retries": result.retries,
                             "done": result.done, "gave_up": len(result.gave_up),
                             "final": final, "exact": final == result.done})
    return pd.DataFrame(rows)


def interleaving(client: redis.Redis, key: str, *, transaction: bool, others: int = 3,
                 timeout: float = 5.0) -> list[Any]:
    """Our block ``INCR key, RPUSH go, BLPOP wake, INCR key`` against another client's ``INCR key`` × others.

    The other client (a thread on its own connection) waits with BLPOP on ``go`` and, once woken,
    sends its INCRs and then pushes ``wake``. Sent as a plain pipeline, our BLPOP blocks until
    then, so the other client's INCRs land between our two INCRs, every time. Inside MULTI/EXEC,
    BLPOP does not block (it replies nil at once) and nothing runs between the block's commands:
    the other INCRs come after. Returns our block's four replies.
    """
    go, wake = f"{key}:go", f"{key}:wake"
    client.delete(key, go, wake)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            if client.blpop([go], timeout=timeout) is None:
                raise RedisoptError(f"the pipeline never pushed {go!r} within {timeout} s")
            for _ in range(others):
                client.incr(key)
            client.rpush(wake, "done")
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller below
            errors.append(exc)

    thread = threading.Thread(target=other, name="interleaving-other", daemon=True)
    thread.start()
    try:
        with client.pipeline(transaction=transaction) as pipe:
            pipe.incr(key)
            pipe.rpush(go, 1)
            pipe.blpop([wake], timeout=timeout)
            pipe.incr(key)
            replies = pipe.execute()
    finally:
        thread.join(timeout + 1)
        client.delete(go, wake)
    if errors:
        raise errors[0]
    return replies


def gaps_under_load(client: redis.Redis, key: str, *, transaction: bool, commands: int = 2_000) -> int:
    """``sequence_gaps`` of our block of ``commands`` INCRs when another connection sends as many at once.

    Real traffic, not a staged order: both blocks are packed first and sent at the same moment from
    two threads, and the server reads each big block in pieces (about 16 KB at a time), serving the
    other connection between them. A plain pipeline then usually shows gaps (how many depends on
    timing); MULTI/EXEC never does. The blocks are packed before sending so that Python's GIL, not
    the server, cannot decide the outcome.
    """
    from redisopt.txn import sequence_gaps

    ours_cmds: list[tuple[Any, ...]] = [("INCR", key)] * commands
    if transaction:
        ours_cmds = [("MULTI",), *ours_cmds, ("EXEC",)]
    pool = client.connection_pool
    ours, theirs = pool.get_connection(), pool.get_connection()
    errors: list[BaseException] = []
    try:
        our_blob = ours.pack_commands(ours_cmds)
        their_blob = theirs.pack_commands([("INCR", key)] * commands)
        start = threading.Barrier(2)

        def other() -> None:
            try:
                start.wait()
                theirs.send_packed_command(their_blob)
                for _ in range(commands):
                    theirs.read_response()
            except BaseException as exc:  # noqa: BLE001 - re-raised by the caller below
                errors.append(exc)

        thread = threading.Thread(target=other, name="gaps-other", daemon=True)
        thread.start()
        start.wait()
        ours.send_packed_command(our_blob)
        replies = [ours.read_response() for _ in ours_cmds]
        thread.join()
    except BaseException:
        ours.disconnect()  # replies may be left unread: never hand these connections out again
        theirs.disconnect()
        raise
    finally:
        pool.release(ours)
        pool.release(theirs)
    if errors:
        raise errors[0]
    return sequence_gaps(replies[-1] if transaction else replies)


def _show(reply: Any) -> Any:
    if isinstance(reply, redis.exceptions.ExecAbortError):
        return f"(error) EXECABORT {reply}"
    return f"(error) {reply}" if isinstance(reply, redis.exceptions.ResponseError) else reply


def on_one_connection(client: redis.Redis, *commands: Sequence[Any]) -> pd.DataFrame:
    """Send ``commands`` one by one on ONE connection, like a redis-cli session; one row per reply.

    A command given as ``(other_client, "SET", key, value)`` runs on that client instead (another
    connection), between the session's own commands: how a concurrent writer is staged. An error
    reply is shown in its place (``(error) ...``) instead of stopping the session; errors inside
    EXEC's reply are shown the same way. The connection is closed afterwards, so no state
    the session leaves behind (an open MULTI, a WATCH) can reach another caller of the pool.
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    rows = []
    try:
        for command in commands:
            other = isinstance(command[0], redis.Redis)
            args = command[1:] if other else command
            try:
                if other:
                    reply = command[0].execute_command(*args)
                else:
                    conn.send_command(*args)
                    reply = conn.read_response()
            except redis.exceptions.ResponseError as exc:
                reply = exc
            if isinstance(reply, list):
                reply = [_show(item) for item in reply]
            shown = " ".join(str(part) for part in args)
            rows.append({"command": f"(other connection) {shown}" if other else shown, "reply": _show(reply)})
    finally:
        conn.disconnect()
        pool.release(conn)
    return pd.DataFrame(rows)
