"""Lock with fencing tokens: real server, real processes, both release/extend paths (native and Lua)."""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time
import weakref
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import key_slot

import redisopt
from redisopt.lock import LUA_ONLY, _parse_capabilities, choose_strategy, lock_capabilities
from redisopt.server import UrlServer

STRATEGIES = ["auto", "lua"]
PROCESSES, INCREMENTS = 8, 200

_mp = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


# --------------------------------------------------------------------------- workers (own clients)


def _locked_increments(lock_name: str, counter: str, log: str, n: int, go: threading.Event) -> None:
    client = redisopt.connect()
    lock = redisopt.Lock(client, lock_name, ttl=5.0)
    seen = []
    go.wait(30)
    for _ in range(n):
        with lock as token:
            value = int(client.get(counter) or 0)  # a plain read-modify-write: only the lock protects it
            client.set(counter, value + 1)
            seen.append(f"{token}:{value}")
    client.rpush(log, *seen)


def _unlocked_increments(counter: str, n: int, go: threading.Event) -> None:
    client = redisopt.connect()
    go.wait(30)
    for _ in range(n):
        value = int(client.get(counter) or 0)
        time.sleep(0.0005)  # the window between GET and SET that another process slips into
        client.set(counter, value + 1)


@pytest.fixture
def run_workers() -> Iterator:
    started: list = []

    def run(target, *args) -> None:
        go = _mp.Event()
        procs = [_mp.Process(target=target, args=(*args, go), daemon=True) for _ in range(PROCESSES)]
        started.extend(procs)
        for p in procs:
            p.start()
        go.set()  # all start racing at one instant
        for p in procs:
            p.join(50)
        assert [p.exitcode for p in procs] == [0] * PROCESSES

    yield run
    for p in started:
        if p.is_alive():
            p.kill()
            p.join(5)


# --------------------------------------------------------------------------- mutual exclusion


def test_processes_under_lock_lose_no_update_and_tokens_follow_hold_order(r, ks, run_workers) -> None:
    counter, log = ks.key("counter"), ks.key("log")
    run_workers(_locked_increments, ks.key("lock"), counter, log, INCREMENTS)
    total = PROCESSES * INCREMENTS
    assert int(r.get(counter)) == total
    pairs = sorted((int(t), int(v)) for t, v in (e.split(":") for e in r.lrange(log, 0, -1)))
    # Every hold got its own fencing token, and token order is hold order: the n-th token read n-1.
    assert [v for _, v in pairs] == list(range(total))
    assert [t for t, _ in pairs] == list(range(pairs[0][0], pairs[0][0] + total))


def test_processes_without_lock_lose_updates(r, ks, run_workers) -> None:
    counter = ks.key("counter")
    run_workers(_unlocked_increments, counter, INCREMENTS)
    lost = PROCESSES * INCREMENTS - int(r.get(counter))
    assert lost > 0, "the unlocked race lost nothing: the locked test above would prove nothing"


# --------------------------------------------------------------------------- ownership


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_non_owner_release_and_extend_raise(r, ks, strategy) -> None:
    name = ks.key("lock")
    holder = redisopt.Lock(r, name, ttl=5, strategy=strategy)
    other = redisopt.Lock(r, name, ttl=5, strategy=strategy)
    holder.acquire(0)
    with pytest.raises(redisopt.LockNotOwnedError, match="never acquired") as never:
        other.release()
    assert never.value.name == name
    with pytest.raises(redisopt.LockNotOwnedError):
        other.extend()
    other.token = "forged"  # a client that believes it holds the lock (e.g. after a GC pause)
    with pytest.raises(redisopt.LockNotOwnedError, match="no longer ours"):
        other.release()
    other.token = "forged"
    with pytest.raises(redisopt.LockNotOwnedError, match="no longer ours"):
        other.extend(5)
    assert holder.owned and r.pttl(name) > 4000  # neither deleted nor shortened the holder's lock
    holder.release()
    assert not holder.locked()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_expired_holder_cannot_free_the_next_holders_lock_and_is_fenced(r, ks, strategy) -> None:
    name = ks.key("lock")
    resource = redisopt.FencedResource(r, ks.key("resource"))
    slow = redisopt.Lock(r, name, ttl=0.1, strategy=strategy)
    old = slow.acquire(0)
    resource.write("from the first holder", old)
    deadline = time.monotonic() + 5
    while slow.locked() and time.monotonic() < deadline:  # the holder "pauses" past its TTL
        time.sleep(0.01)
    fresh = redisopt.Lock(r, name, ttl=5, strategy=strategy)
    new = fresh.acquire(0)
    assert new > old
    resource.write("from the new holder", new)
    with pytest.raises(redisopt.StaleTokenError) as stale:
        resource.write("late write of the expired holder", old)
    assert (stale.value.token, stale.value.highest) == (old, new)
    assert resource.read() == "from the new holder" and resource.highest() == new
    with pytest.raises(redisopt.LockNotOwnedError):
        slow.release()  # the article's plain DEL would have freed `fresh`'s lock here
    assert fresh.owned
    resource.write("same holder writes again", new)  # an equal token is the current holder
    fresh.release()


def test_fenced_resource_rejects_bad_tokens(r, ks) -> None:
    resource = redisopt.FencedResource(r, ks.key("resource"))
    for bad in (0, -1, True, "3", 1.5):
        with pytest.raises(ValueError):
            resource.write("x", bad)
    assert resource.highest() == 0 and resource.read() is None


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_timeout_semantics(r, ks, strategy) -> None:
    name = ks.key("lock")
    holder = redisopt.Lock(r, name, ttl=10, strategy=strategy)
    waiter = redisopt.Lock(r, name, ttl=10, strategy=strategy)
    first = holder.acquire(0)
    with pytest.raises(redisopt.LockTimeout) as no_wait:
        waiter.acquire(0)
    assert waiter.attempts == 1 and no_wait.value.name == name
    assert isinstance(no_wait.value, TimeoutError)
    started = time.monotonic()
    with pytest.raises(redisopt.LockTimeout):
        waiter.acquire(0.2)
    assert time.monotonic() - started >= 0.2 and waiter.attempts > 1
    releaser = threading.Timer(0.3, holder.release)
    started = time.monotonic()
    releaser.start()
    try:
        token = waiter.acquire(None)  # waits without limit, until the other thread releases
    finally:
        releaser.join()
    assert time.monotonic() - started >= 0.3 and token == first + 1
    waiter.release()
    with pytest.raises(ValueError, match="timeout"):
        waiter.acquire(-1)


def test_acquire_without_an_argument_uses_the_constructors_timeout(r, ks) -> None:
    holder = redisopt.Lock(r, ks.key("lock"), ttl=10)
    holder.acquire()
    waiter = redisopt.Lock(r, ks.key("lock"), ttl=10, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(redisopt.LockTimeout):
        waiter.acquire()  # before the fix: None, which waited without limit
    assert time.monotonic() - started >= 0.2
    holder.release()


def test_acquire_twice_on_one_object_is_an_error(r, ks) -> None:
    lock = redisopt.Lock(r, ks.key("lock"), ttl=5)
    lock.acquire(0)
    with pytest.raises(redisopt.LockError, match="already held"):
        lock.acquire(0)
    lock.release()


@pytest.mark.parametrize("ttl", [0, -1, 0.0, None, "10", True])
def test_ttl_must_be_positive(r, ks, ttl) -> None:
    with pytest.raises(ValueError, match="ttl"):
        redisopt.Lock(r, ks.key("lock"), ttl=ttl)


def test_extend_sets_the_remaining_time(r, ks) -> None:
    lock = redisopt.Lock(r, ks.key("lock"), ttl=1)
    lock.acquire(0)
    lock.extend(30)
    assert 29_000 < r.pttl(lock.key) <= 30_000
    lock.extend(2)  # shorter too: it sets the remaining time, it does not add
    assert 1_000 < r.pttl(lock.key) <= 2_000
    with pytest.raises(ValueError, match="ttl"):
        lock.extend(0)
    lock.release()


# --------------------------------------------------------------------------- context manager


def test_context_manager(r, ks) -> None:
    name = ks.key("lock")
    with redisopt.Lock(r, name, ttl=5) as token:
        assert isinstance(token, int) and r.exists(name)
    assert not r.exists(name)
    with pytest.raises(KeyError), redisopt.Lock(r, name, ttl=5):
        raise KeyError("the body's own error")
    assert not r.exists(name)  # released on the way out
    with pytest.raises(redisopt.LockNotOwnedError), redisopt.Lock(r, name, ttl=0.05):
        time.sleep(0.2)  # the body outlived the lock: the caller must hear of it
    with pytest.raises(KeyError) as both, redisopt.Lock(r, name, ttl=0.05):
        time.sleep(0.2)
        raise KeyError("first")
    assert "no longer ours" in " ".join(getattr(both.value, "__notes__", []))


# --------------------------------------------------------------------------- auto-renewal


def test_renewal_keeps_the_lock_then_stops_at_its_cap(r, ks) -> None:
    lock = redisopt.Lock(r, ks.key("lock"), ttl=1.0, auto_renew=True, renew_every=0.2, max_renewals=3)
    started = time.monotonic()
    lock.acquire(0)
    deadline = started + 10
    while lock.locked() and time.monotonic() < deadline:
        time.sleep(0.01)
    held = time.monotonic() - started
    assert not lock.locked(), "the lock never expired: renewal did not stop at its cap"
    assert lock.renewals == 3
    assert held >= 1.0 + 0.2, "the lock expired no later than its first TTL: renewal did nothing"
    assert not lock._renewer.thread.is_alive()
    time.sleep(0.3)
    assert lock.renewals == 3
    with pytest.raises(redisopt.LockNotOwnedError):
        lock.release()


def test_renewal_thread_is_joined_on_release_and_ends_when_the_lock_is_collected(r, ks) -> None:
    lock = redisopt.Lock(r, ks.key("lock"), ttl=1, auto_renew=True, renew_every=0.05)
    lock.acquire(0)
    renewer = lock._renewer
    deadline = time.monotonic() + 5
    while lock.renewals < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lock.renewals >= 2
    lock.release()
    assert not renewer.thread.is_alive() and lock._renewer is None
    forgotten = redisopt.Lock(r, ks.key("other"), ttl=1, auto_renew=True, renew_every=0.05)
    forgotten.acquire(0)
    thread, ref = forgotten._renewer.thread, weakref.ref(forgotten)
    del forgotten
    gc.collect()
    assert ref() is None, "the renewal thread keeps its Lock alive"
    thread.join(2)
    assert not thread.is_alive()


# --------------------------------------------------------------------------- round trips and strategies


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_uncontended_acquire_and_release_take_two_round_trips(r, ks, strategy) -> None:
    lock = redisopt.Lock(r, ks.key("lock"), ttl=5, strategy=strategy)  # probes and loads scripts here
    with redisopt.count_round_trips(r) as trips:
        lock.acquire(0)
        lock.release()
    assert (trips.round_trips, trips.commands) == (2, 2)
    lock.acquire(0)
    with redisopt.count_round_trips(r) as trips:
        lock.extend()
    assert trips.round_trips == 1
    lock.release()


def test_strategy_follows_the_servers_commands(r, ks) -> None:
    caps = lock_capabilities(r)
    assert ("DELIFEQ" in caps) == redisopt.has_command(r, "DELIFEQ")
    assert ("DELEX" in caps) == redisopt.has_command(r, "DELEX")
    key = ks.key("probe")
    r.set(key, "v")
    try:  # what the server really does with SET IFEQ decides, not what COMMAND DOCS said
        r.execute_command("SET", key, "w", "IFEQ", "v")
        has_ifeq = r.get(key) == "w"
    except redis.ResponseError:
        has_ifeq = False
    assert ("SET IFEQ" in caps) == has_ifeq
    auto = redisopt.Lock(r, ks.key("lock")).strategy
    assert auto.extend == ("SET IFEQ" if has_ifeq else "lua")
    assert auto.release == ("DELIFEQ" if "DELIFEQ" in caps else "DELEX" if "DELEX" in caps else "lua")
    assert redisopt.Lock(r, ks.key("lock"), strategy="lua").strategy == LUA_ONLY
    if auto.release == "lua" or auto.extend == "lua":
        with pytest.raises(redisopt.ConfigError, match="native"):
            redisopt.Lock(r, ks.key("lock"), strategy="native")
    else:
        assert redisopt.Lock(r, ks.key("lock"), strategy="native").strategy == auto
    with pytest.raises(redisopt.ConfigError, match="strategy"):
        redisopt.Lock(r, ks.key("lock"), strategy="fast")


@pytest.mark.parametrize("info", [None, [], [None, None], [[], []]])
def test_unknown_commands_in_command_info_mean_lua(info) -> None:
    assert choose_strategy(_parse_capabilities(info, None), "auto") == LUA_ONLY


def test_parse_capabilities_reads_delex_and_ifeq() -> None:
    docs = {b"set": [b"arguments", [[b"token", b"IFEQ"]]]}
    caps = _parse_capabilities([None, [b"delex", 3]], docs)
    assert caps == {"DELEX", "SET IFEQ"}
    strategy = choose_strategy(caps, "native")
    assert (strategy.release, strategy.extend) == ("DELEX", "SET IFEQ")
    assert choose_strategy(caps, "auto") == strategy


# --------------------------------------------------------------------------- without fencing, cluster slots


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_without_fencing_no_counter_key_is_left_and_it_still_excludes(r, ks, strategy) -> None:
    name = ks.key("lock")
    lock = redisopt.Lock(r, name, ttl=5, strategy=strategy, fencing=False)
    token = lock.acquire(0)
    held = sorted(r.scan_iter(match=ks.pattern()))
    lock.release()
    assert token == 0 and lock.fencing_token == 0
    assert held == [name], "fencing=False created a key besides the lock itself"
    assert not r.exists(lock.fencing_key) and sorted(r.scan_iter(match=ks.pattern())) == []
    with redisopt.count_round_trips(r) as trips:
        lock.acquire(0)
        lock.release()
    assert (trips.round_trips, trips.commands) == (2, 2)
    holder = redisopt.Lock(r, name, ttl=5, strategy=strategy, fencing=False)
    with holder as zero:
        assert zero == 0
        with pytest.raises(redisopt.LockTimeout):
            lock.acquire(0)
        with pytest.raises(redisopt.LockNotOwnedError):
            lock.release()
    with pytest.raises(ValueError):  # 0 is no fencing token: a FencedResource refuses it
        redisopt.FencedResource(r, ks.key("resource")).write("x", zero)
    assert sorted(r.scan_iter(match=ks.pattern())) == []
    fenced = redisopt.Lock(r, name, ttl=5, strategy=strategy)
    assert fenced.acquire(0) >= 1 and r.exists(fenced.fencing_key)  # the default still counts
    fenced.release()


@pytest.mark.parametrize("name", ["job", "redisopt:ch05:lock", "app:{job}:lock", "{job}", "a b:é"])
def test_lock_and_fencing_keys_share_one_cluster_slot(r, ks, name) -> None:
    lock = redisopt.Lock(r, name)
    assert lock.key == name and lock.fencing_key.startswith(name + ":")  # a KeySpace's SCAN finds both
    assert lock.fencing_key != lock.key
    assert key_slot(lock.fencing_key.encode()) == key_slot(lock.key.encode())


def test_keyspace_clear_removes_the_fencing_counter(r, ks) -> None:
    lock = redisopt.Lock(r, ks.key("lock"))
    lock.acquire(0)
    lock.release()
    assert r.exists(lock.fencing_key)
    ks.clear(r)
    assert not r.exists(lock.fencing_key)


@pytest.mark.parametrize("name", ["a{b", "a}b", "a{}b", "}{"])
def test_names_whose_braces_make_no_hash_tag_are_refused(r, name) -> None:
    with pytest.raises(ValueError, match="hash tag"):
        redisopt.Lock(r, name)


# --------------------------------------------------------------------------- on a user's server


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lock_scripts_pass_the_guard_on_a_redis_url_server(server, ks, strategy) -> None:
    guarded = UrlServer(f"redis://:{server.password}@127.0.0.1:{server.port}/0").client()
    try:
        lock = redisopt.Lock(guarded, ks.key("lock"), ttl=5, strategy=strategy)
        resource = redisopt.FencedResource(guarded, ks.key("resource"))
        token = lock.acquire(0)
        lock.extend(10)
        resource.write("v", token)
        lock.release()
        with pytest.raises(redisopt.DestructiveCommandError):  # the guard is really on
            guarded.eval("return redis.call('FLUSHDB')", 0)
    finally:
        guarded.close()


def test_lock_works_on_a_bytes_client(server, ks) -> None:
    raw = server.client(decode_responses=False)
    try:
        resource = redisopt.FencedResource(raw, ks.key("resource"))
        with redisopt.Lock(raw, ks.key("lock"), ttl=5) as token:
            resource.write(b"v", token)
        lock = redisopt.Lock(raw, ks.key("lock"), ttl=5)
        lock.acquire(0)
        assert lock.owned
        lock.release()
    finally:
        raw.close()
