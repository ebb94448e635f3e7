"""The guard on user servers (REDIS_URL): what it refuses, in every spelling, and what it leaves alone.

Each test reaches a real private server *as a REDIS_URL server* (so it is guarded) and checks with
a second, unguarded client that nothing on the server changed. The server is this module's own, so
a command that slipped through (the tests were first run against the old hand-written denylist)
cannot disturb the rest of the session.
"""

from __future__ import annotations

import hashlib

import pytest
import redis

import redisopt
from redisopt.guard import ALLOWED, Guard
from tests.helpers import run_python

LIB = "redisopt_guard_lib"
LIB_BODY = f"#!lua name={LIB}\nserver.register_function('echo_len', function(keys, args) return #args end)"


@pytest.fixture(scope="module")
def victim():
    """A private server that plays the user's production box."""
    srv = redisopt.start_server()
    yield srv
    srv.stop()


@pytest.fixture
def admin(victim):
    """An unguarded client to the same server, to set up state and see that it survived."""
    client = victim.client()
    client.set("precious", "keep me")
    client.function_load(LIB_BODY, replace=True)
    client.script_load("return 1")
    yield client
    client.close()


def _url(victim: redisopt.Server) -> str:
    return f"redis://:{victim.password}@127.0.0.1:{victim.port}/0"


@pytest.fixture
def user(victim) -> redisopt.Server:
    return redisopt.server.UrlServer(_url(victim))


@pytest.fixture
def url_client(user):
    client = user.client()
    client.ping()  # connected before the state is taken: the client list stays the same
    yield client
    client.close()


def _state(admin: redis.Redis) -> dict:
    """What a refused command could have changed: data, config, users, scripts, logs, saves."""
    persistence = admin.info("persistence")
    return {
        "precious": admin.get("precious"),
        "dbsize": admin.dbsize(),
        "config": admin.config_get("maxmemory") | admin.config_get("slowlog-max-len"),
        "acl": admin.acl_list(),
        "functions": sorted(_library_names(admin)),
        "script": admin.script_exists(hashlib.sha1(b"return 1").hexdigest()),
        "saves": (persistence["rdb_saves"], persistence["aof_rewrites"], persistence["rdb_bgsave_in_progress"]),
        "slowlog": admin.slowlog_len(),
        "clients": sorted(c["id"] for c in admin.client_list()),
    }


def _library_names(admin: redis.Redis) -> list[str]:
    libs = admin.function_list()  # RESP2: each library is a flat [name, value, ...] list
    return [(lib if isinstance(lib, dict) else dict(zip(lib[::2], lib[1::2], strict=True)))["library_name"]
            for lib in libs]


def _has(admin: redis.Redis, name: str) -> bool:
    return name in admin.command_list()


REFUSED_CALLS = {
    # New with the derived denylist: each of these ran on the user's server before.
    "acl-setuser-nopass": ("ACL", "SETUSER", "default", "nopass"),
    "acl-deluser": ("ACL", "DELUSER", "somebody"),
    "acl-log-reset": ("ACL", "LOG", "RESET"),
    "function-delete": ("FUNCTION", "DELETE", LIB),
    "function-load-replace": ("FUNCTION", "LOAD", "REPLACE", LIB_BODY),
    "client-kill": ("CLIENT", "KILL", "ID", "999999"),
    "client-pause": ("CLIENT", "PAUSE", "10", "WRITE"),
    "save": ("SAVE",),
    "bgsave": ("BGSAVE",),
    "bgrewriteaof": ("BGREWRITEAOF",),
    "migrate": ("MIGRATE", "127.0.0.1", "1", "precious", "0", "100"),
    "commandlog-reset": ("COMMANDLOG", "RESET", "slow"),
    "keys": ("KEYS", "*"),
    "monitor": ("MONITOR",),
    # The old hand list, kept.
    "flushall": ("FLUSHALL",),
    "flushdb": ("FLUSHDB", "ASYNC"),
    "config-set": ("CONFIG", "SET", "maxmemory", "1mb"),
    "config-resetstat": ("CONFIG", "RESETSTAT"),
    "config-rewrite": ("CONFIG", "REWRITE"),
    "debug": ("DEBUG", "SLEEP", "0"),
    "shutdown-abort": ("SHUTDOWN", "ABORT"),
    "swapdb": ("SWAPDB", "0", "1"),
    "replicaof": ("REPLICAOF", "NO", "ONE"),
    "script-flush": ("SCRIPT", "FLUSH"),
    "function-flush": ("FUNCTION", "FLUSH"),
    "slowlog-reset": ("SLOWLOG", "RESET"),
    "latency-reset": ("LATENCY", "RESET"),
    "cluster-reset": ("CLUSTER", "RESET"),
}


@pytest.mark.parametrize("args", REFUSED_CALLS.values(), ids=REFUSED_CALLS.keys())
def test_refused_on_a_url_server_and_nothing_changes(url_client, admin, args) -> None:
    if not _has(admin, args[0].lower()):
        pytest.skip(f"{args[0]} does not exist on this server")
    before = _state(admin)
    with pytest.raises(redisopt.DestructiveCommandError, match="REDISOPT_ALLOW_DESTRUCTIVE=1") as err:
        url_client.execute_command(*args)
    assert " ".join(args[:2]).upper().startswith(str(err.value).split(" refused")[0])
    assert _state(admin) == before


FUNCTION_DUMP_SPELLINGS = ["FLUSH", "REPLACE", "APPEND"]


@pytest.mark.parametrize("policy", FUNCTION_DUMP_SPELLINGS)
def test_function_restore_is_refused(url_client, admin, policy) -> None:
    payload = admin.function_dump()
    before = _state(admin)
    with pytest.raises(redisopt.DestructiveCommandError, match="FUNCTION RESTORE"):
        url_client.execute_command("FUNCTION", "RESTORE", payload, policy)
    assert _state(admin) == before


SPELLINGS = {
    "lower": ("flushall",),
    "mixed": ("FlUsHaLl",),
    "bytes": (b"FLUSHALL",),
    "bytearray": (bytearray(b"FLUSHALL"),),
    "memoryview": (memoryview(b"FLUSHALL"),),
    "empty-first-arg": ("", "FLUSHALL"),
    "blank-first-arg": ("  \t", "FLUSHALL"),
    "empty-first-arg-config": ("", "CONFIG", "SET", "maxmemory", "1mb"),
    "one-string": ("CONFIG SET", "maxmemory", "1mb"),
    "one-string-spaced": ("  config \t set ", "maxmemory", "1mb"),
    "one-bytes-string": (b"CONFIG SET", "maxmemory", "1mb"),
    "bytes-subcommand": ("CONFIG", b"set", "maxmemory", "1mb"),
    "memoryview-subcommand": (memoryview(b"CONFIG"), memoryview(b"SeT"), "maxmemory", "1mb"),
    "acl-one-string": ("acl setuser default nopass",),
}


@pytest.mark.parametrize("args", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_every_spelling_is_refused(url_client, admin, args) -> None:
    before = _state(admin)
    with pytest.raises(redisopt.DestructiveCommandError):
        url_client.execute_command(*args)
    assert _state(admin) == before


METHODS = {
    "flushall": lambda c: c.flushall(),
    "flushdb": lambda c: c.flushdb(asynchronous=True),
    "config_set": lambda c: c.config_set("maxmemory", "1mb"),
    "acl_setuser": lambda c: c.acl_setuser("default", nopass=True),
    "client_kill": lambda c: c.client_kill_filter(_id=999999),
    "bgsave": lambda c: c.bgsave(),
    "script_flush": lambda c: c.script_flush(),
    "function_delete": lambda c: c.function_delete(LIB),
    "in-pipeline": lambda c: c.pipeline().set("x", 1).flushdb().execute(),
}


@pytest.mark.parametrize("call", METHODS.values(), ids=METHODS.keys())
def test_redis_py_methods_are_refused(url_client, admin, call) -> None:
    before = _state(admin)
    with pytest.raises(redisopt.DestructiveCommandError):
        call(url_client)
    assert _state(admin) == before


def test_what_the_server_would_not_run_is_not_refused(url_client, admin) -> None:
    # Bytes are sent as they are: an empty or tab-prefixed name is an unknown command to the server.
    for args in [(b"", b"FLUSHALL"), (b"\tFLUSHALL",)]:
        with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
            url_client.execute_command(*args)
    assert admin.get("precious") == "keep me"


def test_a_refused_command_in_a_pipeline_sends_none_of_it(url_client, admin) -> None:
    admin.delete("fresh")
    for transaction in (False, True):
        pipe = url_client.pipeline(transaction=transaction)
        pipe.set("fresh", 1).execute_command("config set", "maxmemory", "1mb").incr("fresh")
        with redisopt.count_round_trips(url_client) as rt, pytest.raises(redisopt.DestructiveCommandError):
            pipe.execute()
        assert rt.round_trips == 0
        assert admin.exists("fresh") == 0
        assert admin.config_get("maxmemory")["maxmemory"] == "0"


def test_pool_reuse_and_pubsub_stay_guarded(url_client, admin) -> None:
    for _ in range(3):  # the same pooled connection, again and again
        assert url_client.get("precious") == "keep me"
        with pytest.raises(redisopt.DestructiveCommandError):
            url_client.flushdb()
    pubsub = url_client.pubsub()
    pubsub.subscribe("redisopt-guard-channel")
    with pytest.raises(redisopt.DestructiveCommandError):
        pubsub.execute_command("FLUSHALL")
    pubsub.close()
    assert admin.get("precious") == "keep me"


# --------------------------------------------------------------------------- derived from the server


def test_refusals_follow_the_servers_own_categories(user, url_client, admin) -> None:
    url_client.ping()
    flagged = set(admin.command_list(category="dangerous")) | set(admin.command_list(category="admin"))
    refused = set(user.guard(False).refused)
    assert flagged - refused == set(ALLOWED) & flagged  # all the server flags, but the allowlist
    for name in ["config|set", "acl|setuser", "client|kill", "save", "migrate", "function|delete",
                 "function|restore", "script|flush", "slowlog|reset", "flushall"]:
        assert name in refused
    for name in ["config|get", "info", "slowlog|get", "get", "eval", "function|load", "client|setname"]:
        assert name not in refused


@pytest.mark.parametrize(
    "args",
    [("INFO", "server"), ("CONFIG", "GET", "maxmemory"), ("SLOWLOG", "GET", "5"), ("SLOWLOG", "LEN"),
     ("LATENCY", "LATEST"), ("LATENCY", "HISTORY", "command"), ("MEMORY", "USAGE", "precious"),
     ("OBJECT", "ENCODING", "precious"), ("COMMAND", "INFO", "get"), ("CLIENT", "SETNAME", "me"),
     ("CLIENT", "ID"), ("CLIENT", "INFO"), ("SCRIPT", "EXISTS", "0" * 40), ("FUNCTION", "LIST"),
     ("SCAN", "0", "COUNT", "10"), ("UNLINK", "not-there")],
    ids=lambda args: " ".join(args[:2]),
)
def test_what_the_chapters_use_still_runs(url_client, admin, args) -> None:
    url_client.execute_command(*args)
    assert admin.get("precious") == "keep me"


def test_the_metadata_is_fetched_once_per_server_and_never_counted(victim, admin) -> None:
    def command_calls() -> int:
        return admin.info("commandstats").get("cmdstat_command", {}).get("calls", 0)

    before = command_calls()
    user = redisopt.server.UrlServer(_url(victim))  # identify() connects: the one fetch
    clients = [user.client(), user.client(decode_responses=False)]
    private = victim.client()
    for client in [*clients, private]:
        with redisopt.count_round_trips(client) as rt:
            client.set("counted", 1)
            client.get("counted")
            client.pipeline(transaction=False).set("counted", 2).get("counted").execute()
            client.pipeline(transaction=True).incr("counted").get("counted").execute()
        assert (rt.round_trips, rt.commands, rt.connects) == (4, 8, 1)
        client.close()
    assert command_calls() - before == 1


def test_the_rules_read_the_same_over_resp3_and_raw_bytes(victim, user, url_client) -> None:
    resp3 = redisopt.server.UrlServer(_url(victim) + "?protocol=3")
    assert set(resp3.guard(False).refused) == set(user.guard(False).refused)
    raw = victim.client(decode_responses=False)
    guard = Guard("a raw connection")
    connection = raw.connection_pool.get_connection()
    try:
        guard.load(connection)
    finally:
        raw.connection_pool.release(connection)
        raw.close()
    assert set(guard.refused) == set(user.guard(False).refused)
    with pytest.raises(redisopt.DestructiveCommandError, match="^CONFIG SET refused: a raw connection"):
        guard.check([b"config", b"SET", b"maxmemory", b"1mb"])


def test_refusal_names_the_command_and_the_opt_in(url_client) -> None:
    with pytest.raises(redisopt.DestructiveCommandError) as err:
        url_client.execute_command("client", "kill", "id", "1")
    message = str(err.value)
    assert message.startswith("CLIENT KILL refused")
    assert "REDISOPT_ALLOW_DESTRUCTIVE=1" in message and "allow_destructive=True" in message
    assert "@admin" in message or "@dangerous" in message


def test_opting_in_allows_destructive_commands(victim, admin) -> None:
    user = redisopt.server.UrlServer(_url(victim))
    client = user.client(allow_destructive=True)
    assert client.config_set("slowlog-max-len", "129")
    assert admin.config_get("slowlog-max-len")["slowlog-max-len"] == "129"
    client.config_set("slowlog-max-len", "128")
    client.close()


def test_opting_in_through_the_environment(victim) -> None:
    code = (
        "import redisopt\n"
        "c = redisopt.connect()\n"
        "c.config_set('slowlog-max-len', '130'); print(c.config_get('slowlog-max-len')['slowlog-max-len'])\n"
        "c.config_set('slowlog-max-len', '128')\n"
    )
    done = run_python(code, env={"REDIS_URL": _url(victim), "REDISOPT_ALLOW_DESTRUCTIVE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "130"


def test_private_servers_are_never_guarded(admin) -> None:
    assert admin.config_set("slowlog-max-len", "131")
    admin.config_set("slowlog-max-len", "128")
    admin.slowlog_reset()
    assert admin.keys("precious") == ["precious"]


def test_a_user_without_the_command_command_gets_the_fallback_list(victim, admin) -> None:
    admin.acl_setuser("nocommand", enabled=True, passwords=["+pw-for-guard-test"],
                      commands=["+@all", "-command"], keys=["*"], channels=["*"])
    try:
        user = redisopt.server.UrlServer(f"redis://nocommand:pw-for-guard-test@127.0.0.1:{victim.port}/0")
        client = user.client()
        assert client.get("precious") == "keep me"
        assert user.guard(False).source.startswith("built-in")
        for args in [("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1mb"), ("ACL", "SETUSER", "x"),
                     ("FUNCTION", "DELETE", LIB), ("SAVE",)]:
            with pytest.raises(redisopt.DestructiveCommandError):
                client.execute_command(*args)
        assert client.config_get("maxmemory")["maxmemory"] == "0"
        client.close()
    finally:
        admin.acl_deluser("nocommand")
    assert admin.get("precious") == "keep me"


# --------------------------------------------------------------------------- scripts


BAD_SCRIPTS = {
    "flushdb": "return redis.call('FLUSHDB')",
    "pcall-lower": "return redis.pcall('flushdb')",
    "server-call": 'return server.call("FlushAll")',
    "long-bracket": "return redis.call([[FLUSHDB]])",
    "spaced": "return redis . call ( 'flushdb' , 'ASYNC' )",
    "no-parens": "return redis.call'FLUSHDB'",
    "non-literal": "return redis.call(ARGV[1])",
    "concatenated": "return redis.call('FLUSH' .. 'DB')",
    "escaped": "return redis.call('FLUSH\\68B')",
    "alias": "local c = redis.call\nreturn c('FLUSHDB')",
    "module-alias": "local r = redis\nreturn r.call('FLUSHDB')",
    "indexed": "return redis['call']('FLUSHDB')",
    "second-of-two": "redis.call('SET', KEYS[1], 1)\nreturn redis.call('KEYS', '*')",
    "loadstring": "return loadstring(\"return redis.call('FLUSHDB')\")()",
    "global-table": "return _G.redis.call('FLUSHDB')",
    "rawget": "return rawget(_G, 'redis').call('FLUSHDB')",
}


@pytest.mark.parametrize("body", BAD_SCRIPTS.values(), ids=BAD_SCRIPTS.keys())
def test_scripts_that_call_a_refused_command_are_refused(url_client, admin, body) -> None:
    before = _state(admin)
    with pytest.raises(redisopt.DestructiveCommandError, match="script"):
        url_client.eval(body, 1, "precious", "FLUSHDB")
    with pytest.raises(redisopt.DestructiveCommandError, match="script"):
        url_client.script_load(body)
    with pytest.raises(redisopt.DestructiveCommandError, match="script"):
        url_client.execute_command("EVAL_RO", body, 0)
    sha = hashlib.sha1(body.encode()).hexdigest()
    with pytest.raises(redis.exceptions.NoScriptError):
        url_client.evalsha(sha, 0)  # never loaded, so there is nothing to run
    assert _state(admin) == before


GOOD_SCRIPTS = {
    "get": "return redis.call('GET', KEYS[1])",
    "comment": "-- never redis.call('FLUSHALL') here\nreturn redis.call('GET', KEYS[1])",
    "long-comment": "--[==[ redis.call(ARGV[1]) ]==]\nreturn redis.pcall(\"get\", KEYS[1])",
    "string-data": "local s = 'redis.call(\"FLUSHALL\")'\nreturn redis.call('GET', KEYS[1])",
    "helpers": "redis.log(redis.LOG_DEBUG, 'x')\nreturn redis.call('GET', KEYS[1]) or redis.status_reply('OK')",
}


@pytest.mark.parametrize("body", GOOD_SCRIPTS.values(), ids=GOOD_SCRIPTS.keys())
def test_benign_scripts_run(url_client, body) -> None:
    assert url_client.eval(body, 1, "precious") == "keep me"


@pytest.mark.parametrize("body", ["return redis.call('GET',", "return redis.call('GET'", "return 'unclosed"])
def test_a_cut_off_script_reaches_the_server_and_gets_its_error(url_client, body) -> None:
    with pytest.raises(redis.exceptions.ResponseError):  # the server's compile error, not ours
        url_client.eval(body, 0)


def test_register_script_loads_on_noscript_and_runs(url_client, admin) -> None:
    body = "return redis.call('GET', KEYS[1]) .. ARGV[1]"
    admin.script_flush()
    script = url_client.register_script(body)
    with redisopt.count_round_trips(url_client) as rt:
        assert script(keys=["precious"], args=["!"]) == "keep me!"  # EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA
    assert rt.commands == 3
    assert script(keys=["precious"], args=["?"]) == "keep me?"
    bad = url_client.register_script("return redis.call('FLUSHALL')")
    with pytest.raises(redisopt.DestructiveCommandError):
        bad()
    assert admin.get("precious") == "keep me"


def test_functions_are_checked_when_loaded(url_client, admin) -> None:
    bad = "#!lua name=redisopt_guard_bad\nredis.register_function('wipe', function() return redis.call('FLUSHALL') end)"
    with pytest.raises(redisopt.DestructiveCommandError, match="script"):
        url_client.function_load(bad)
    with pytest.raises(redis.exceptions.ResponseError):
        url_client.fcall("wipe", 0)  # it was never loaded
    good = ("#!lua name=redisopt_guard_good\n"
            "redis.register_function('get', function(k) return redis.call('GET', k[1]) end)")
    try:
        assert url_client.function_load(good) == "redisopt_guard_good"
        assert url_client.fcall("get", 1, "precious") == "keep me"
    finally:
        admin.function_delete("redisopt_guard_good")
    assert admin.get("precious") == "keep me"


HAND_PACKED_REFUSED = {
    "flushall": ((b"FLUSHALL",), []),
    "config-set": ((b"config", b"set"), [b"maxmemory", b"1mb"]),
    "eval-flush": ((b"EVAL",), [b"return redis.call('FLUSHDB')", b"0"]),
    "function-replace": ((b"FUNCTION", b"LOAD", b"REPLACE"), [LIB_BODY.encode()]),
}


@pytest.mark.parametrize(("head", "values"), HAND_PACKED_REFUSED.values(), ids=HAND_PACKED_REFUSED.keys())
def test_hand_packed_commands_are_guarded_too(url_client, admin, head, values) -> None:
    """connection.send_packed (WorkQueue.put_many's path) bypasses redis-py's packer, not the guard."""
    from redisopt.connection import pack_command, send_packed

    admin.delete("fresh")
    before = _state(admin)
    commands = [pack_command((b"RPUSH", b"fresh"), [b"1"]), pack_command(head, values)]
    with redisopt.count_round_trips(url_client) as rt, pytest.raises(redisopt.DestructiveCommandError):
        send_packed(url_client, commands)
    assert (rt.round_trips, rt.commands) == (0, 0)  # refused before any byte of the batch was sent
    assert admin.exists("fresh") == 0 and _state(admin) == before


def test_a_hand_packed_name_never_whitelists_a_redis_py_spelling(url_client, admin) -> None:
    """On our wire b"CONFIG SET" is one (unknown) name; passed to redis-py it is split in two and refused."""
    from redisopt.connection import pack_command, send_packed

    with pytest.raises(redis.exceptions.ResponseError, match="(?i)unknown command"):
        send_packed(url_client, [pack_command((b"CONFIG SET", b"maxmemory"), [b"1mb"])])
    with pytest.raises(redisopt.DestructiveCommandError):
        url_client.execute_command(b"CONFIG SET", "maxmemory", "1mb")
    assert admin.config_get("maxmemory")["maxmemory"] == "0"


def test_the_queue_runs_on_a_url_server_counted(url_client, admin) -> None:
    queue = redisopt.WorkQueue(url_client, "guarded")
    queue.clear()
    with redisopt.count_round_trips(url_client) as rt:
        assert queue.put_many({"i": i} for i in range(2_500)) == 2_500
    assert (rt.round_trips, rt.commands) == (1, 3)
    assert admin.llen(queue.key) == 2_500 and queue.get(0) == {"i": 0}
    queue.clear()
