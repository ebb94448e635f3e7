"""The container backend on a real Docker engine (``make test-containers`` provides one).

They run only where an engine answers and has the image REDISOPT_IMAGE names (tools/with-docker.sh
starts a throwaway engine and builds that image locally: no registry is needed); elsewhere the
module is skipped with one line. Every subprocess here may connect to loopback addresses only: a
connect anywhere else (the docker0 gateway testcontainers suggests) ends it with exit code 3.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import nbformat
import pytest
import redis
import redis.backoff
import redis.retry
from nbclient import NotebookClient

import redisopt
from redisopt.containers import engine_url
from tests.helpers import ROOT, gone, run_python

IMAGE = os.environ.get("REDISOPT_IMAGE", "").strip()
CLOSED_REGISTRY = "127.0.0.1:1"  # nothing listens: a pull fails at once and never leaves the machine


def _engine_or_reason() -> tuple[object, str]:
    if not IMAGE:
        return None, "REDISOPT_IMAGE is not set (make test-containers builds one and sets it)"
    import docker

    try:
        engine = docker.from_env(environment={**os.environ, "DOCKER_HOST": engine_url() or ""}, timeout=10)
        engine.ping()
    except Exception as exc:
        return None, f"no Docker engine answers ({str(exc).splitlines()[0][:100] if str(exc) else exc!r})"
    try:
        engine.images.get(IMAGE)
    except Exception:
        return None, f"image {IMAGE} is not on the engine (make test-containers builds it)"
    return engine, ""


ENGINE, _REASON = _engine_or_reason()
if _REASON:
    pytest.skip(f"container tests: {_REASON}", allow_module_level=True)

ENV = {"DOCKER_HOST": engine_url() or "", "REDISOPT_IMAGE": IMAGE, "TESTCONTAINERS_RYUK_DISABLED": "true"}
FORCED = {**ENV, "REDISOPT_BACKEND": "container"}

LOOPBACK_ONLY = """\
import ipaddress, os, sys
def _loopback_only(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = host == "localhost"
        if not ok:
            print(f"non-loopback connect to {host}", file=sys.stderr, flush=True)
            os._exit(3)
sys.addaudithook(_loopback_only)
"""


def _containers() -> set[str]:
    """Names of all containers on the engine, running or not.

    One list call: docker-py's ``containers.list`` inspects each container afterwards, and one
    removed in between (our reaper at work) makes it raise NotFound.
    """
    return {name.lstrip("/") for c in ENGINE.api.containers(all=True) for name in c["Names"]}  # type: ignore[attr-defined]


def _new_since(before: set[str], timeout: float = 0.0) -> list[str]:
    """Containers that appeared since ``before`` and are still there (after waiting up to timeout)."""
    deadline = time.monotonic() + timeout
    while (left := sorted(_containers() - before)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture(scope="module", autouse=True)
def _nothing_left_on_the_engine() -> Iterator[None]:
    before = _containers()
    yield
    left = _new_since(before)
    for name in left:
        ENGINE.containers.get(name).remove(force=True)  # type: ignore[attr-defined]
    assert not left, f"containers left behind: {left}"


@pytest.fixture
def before() -> set[str]:
    """The containers on the engine when the test starts (the module's own one among them)."""
    return _containers()


@pytest.fixture(scope="module")
def container() -> Iterator[redisopt.Server]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FORCED.items():
            mp.setenv(name, value)
        server = redisopt.start_server({"maxmemory": "8mb", "maxmemory-policy": "allkeys-lru"})
    yield server
    server.stop()


# --------------------------------------------------------------------------- a private server


def test_starts_a_private_server_in_a_container(container: redisopt.Server) -> None:
    assert container.backend == "container"
    assert container.host == "127.0.0.1"
    assert container.name == "Valkey" and container.version  # the locally built image
    assert container.client().ping()


def test_port_is_published_on_loopback_only(container: redisopt.Server) -> None:
    attrs = ENGINE.containers.get(container.container_name).attrs  # type: ignore[attr-defined]
    assert attrs["NetworkSettings"]["Ports"] == {"6379/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(container.port)}]}
    assert attrs["HostConfig"]["PortBindings"]["6379/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": ""}]


def test_debug_populate_works_through_the_published_port(container: redisopt.Server) -> None:
    """The chapters fill big keyspaces with DEBUG POPULATE; "local" would refuse us (port forwarding)."""
    client = container.client()
    assert client.execute_command("DEBUG", "POPULATE", 1000, "redisopt:test:populate", 8) in (b"OK", "OK", True)
    assert len(list(client.scan_iter("redisopt:test:populate:*", count=1000))) == 1000
    client.delete(*client.keys("redisopt:test:populate:*"))


def test_password_is_required(container: redisopt.Server) -> None:
    anonymous = redis.Redis(host=container.host, port=container.port, socket_timeout=5,
                            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    anonymous.close()


def test_nothing_is_persisted(container: redisopt.Server) -> None:
    config = container.client().config_get("save", "appendonly")
    assert config == {"save": "", "appendonly": "no"}


def test_start_server_settings_reach_the_container(container: redisopt.Server) -> None:
    config = container.client().config_get("maxmemory", "maxmemory-policy")
    assert config == {"maxmemory": str(8 * 1024 * 1024), "maxmemory-policy": "allkeys-lru"}


# --------------------------------------------------------------------------- where to connect


@pytest.mark.parametrize(
    "setting",
    [
        {},  # /.dockerenv exists on many CI runners and dev containers: testcontainers says docker0's gateway
        {"TESTCONTAINERS_CONNECTION_MODE": "docker_host"},
        {"TESTCONTAINERS_CONNECTION_MODE": "gateway_ip"},
        {"TESTCONTAINERS_CONNECTION_MODE": "bridge_ip"},
        {"TESTCONTAINERS_HOST_OVERRIDE": "127.0.0.2"},  # a host where the port is *not* published
    ],
    ids=["default", "docker_host", "gateway_ip", "bridge_ip", "host-override"],
)
def test_connects_to_loopback_whatever_testcontainers_says(setting: dict[str, str]) -> None:
    out = run_python(
        LOOPBACK_ONLY + "import redisopt; c = redisopt.connect(); s = redisopt.default_server()\n"
        "print(s.backend, s.host, c.ping())",
        env={**FORCED, **setting}, timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["container", "127.0.0.1", "True"]
    assert out.stderr == ""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_an_unreachable_published_port_fails_clearly_and_in_bounded_time(before: set[str]) -> None:
    # The owner in a network namespace of its own reaches the engine (a unix socket) but not the
    # engine's loopback: the situation of Docker outside of Docker, or of a remote engine.
    code = LOOPBACK_ONLY + (
        "import redisopt\n"
        "try:\n    redisopt.connect()\nexcept redisopt.ServerStartError as e:\n    print(e)\n"
    )
    env = {**{k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "REDISOPT_BACKEND"}}, **FORCED}
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"', sys.executable, code],
        env=env, capture_output=True, text=True, timeout=90, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    message = out.stdout
    assert "publishes its port on 127.0.0.1:" in message and "nothing answers there" in message, out.stdout
    assert "3 s after the server said it was ready" in message  # not after the whole START_TIMEOUT
    assert _new_since(before) == []


# --------------------------------------------------------------------------- nothing left behind

# The process (a script, a kernel) reports its pid, its watchdog's pid and directory, and a ping.
REPORT = LOOPBACK_ONLY + (
    "import os, redisopt; r = redisopt.connect(); s = redisopt.default_server()\n"
    "k = getattr(s, '_keeper', None)  # none before the watchdog kept containers\n"
    "print(os.getpid(), k.pid if k else 0, getattr(s, 'keeper_dir', '-'), r.ping(), flush=True)\n"
)
# testcontainers' own host is right in this mode: these tests are about cleanup alone.
KEPT = {**FORCED, "TESTCONTAINERS_CONNECTION_MODE": "docker_host"}


def _check_gone(before: set[str], watchdog: int, keeper_dir: str) -> None:
    assert _new_since(before, timeout=15) == [], "container still there"
    assert watchdog and gone(watchdog, 15.0), "watchdog still running"
    assert not os.path.exists(keeper_dir), "watchdog directory left"


def test_nothing_left_after_a_normal_exit(before: set[str]) -> None:
    out = run_python(REPORT, env=KEPT)
    assert out.returncode == 0, out.stderr[-2000:]
    _, watchdog, keeper_dir, pong = out.stdout.split()
    assert pong == "True"
    assert _new_since(before) == [], "removed before the process exits, not some time later"
    _check_gone(before, int(watchdog), keeper_dir)


def test_nothing_left_after_sigkill_of_the_owner(before: set[str]) -> None:
    env = {**{k: v for k, v in os.environ.items() if k not in {"REDIS_URL"}}, **KEPT}
    proc = subprocess.Popen([sys.executable, "-c", REPORT + "import time; time.sleep(60)"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        _, watchdog, keeper_dir, pong = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert pong == "True" and _new_since(before) != []
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    _check_gone(before, int(watchdog), keeper_dir)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper learns of its watchdog's death on Linux")
def test_nothing_left_after_sigkill_of_the_watchdog(before: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FORCED.items():
        monkeypatch.setenv(name, value)
    server = redisopt.start_server()
    assert _new_since(before) != []
    os.kill(server._keeper.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    assert _new_since(before, timeout=15) == [], "the reaper did not remove the container"
    server.stop()  # still returns, and removes the watchdog's directory
    assert not os.path.exists(server.keeper_dir)  # type: ignore[attr-defined]


@pytest.mark.parametrize("ending", ["shutdown", "sigkill"])
def test_nothing_left_after_the_kernel_ends(ending: str, monkeypatch: pytest.MonkeyPatch, before: set[str]) -> None:
    for name, value in KEPT.items():
        monkeypatch.setenv(name, value)
    cell = nbformat.v4.new_code_cell(REPORT.replace("flush=True", "flush=True, end=''"))
    nb = nbformat.v4.new_notebook(cells=[cell])
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    with client.setup_kernel():
        client.execute_cell(cell, 0)
        owner, watchdog, keeper_dir, pong = cell.outputs[0]["text"].split()
        assert pong == "True" and _new_since(before) != []
        if ending == "sigkill":
            os.kill(int(owner), signal.SIGKILL)
    _check_gone(before, int(watchdog), keeper_dir)


# --------------------------------------------------------------------------- an engine that cannot run it

DOCTOR = "from redisopt.__main__ import main; raise SystemExit(main(['doctor']))"


def test_an_image_that_cannot_be_pulled_falls_through_and_doctor_says_why() -> None:
    image = f"{CLOSED_REGISTRY}/redis:7.4.2"
    env = {**ENV, "REDISOPT_IMAGE": image}
    out = run_python(LOOPBACK_ONLY + "import redisopt; c = redisopt.connect()\n"
                     "print(redisopt.default_server().backend, c.ping())", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() in (["bundled", "True"], ["local", "True"])
    assert out.stderr == ""
    doctor = run_python(DOCTOR, env=env)
    assert doctor.returncode == 0 and "Traceback" not in doctor.stdout + doctor.stderr, doctor
    line = next(line for line in doctor.stdout.splitlines() if line.split()[:2] == ["skip", "container"])
    assert f"image {image} is not on the engine and cannot be pulled" in line, line
    forced = run_python("import redisopt\ntry:\n    redisopt.connect()\n"
                        "except redisopt.NoServerError as e:\n    print(e)",
                        env={**env, "REDISOPT_BACKEND": "container"})
    assert "cannot be pulled" in forced.stdout and "Traceback" not in forced.stderr, forced


def test_ryuk_is_never_needed() -> None:
    # Ryuk on, and its image at the closed registry: testcontainers alone would fail to pull it.
    env = {**FORCED, "TESTCONTAINERS_RYUK_DISABLED": "false",
           "RYUK_CONTAINER_IMAGE": f"{CLOSED_REGISTRY}/testcontainers/ryuk:0.8.1"}
    out = run_python(LOOPBACK_ONLY + "import redisopt; print(redisopt.connect().ping())", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True"]


@pytest.fixture(scope="module")
def unstartable_image() -> Iterator[str]:
    """An image the engine has but cannot start: no redis-server in it."""
    import io

    tag = "redisopt-test/empty:1"
    ENGINE.images.build(fileobj=io.BytesIO(b"FROM scratch\nLABEL purpose=redisopt-test\n"), tag=tag, rm=True)  # type: ignore[attr-defined]
    yield tag
    ENGINE.images.remove(tag, force=True)  # type: ignore[attr-defined]


def test_an_image_that_cannot_start_falls_through_with_a_warning(unstartable_image: str, before: set[str]) -> None:
    code = LOOPBACK_ONLY + "import redisopt; redisopt.connect(); print(redisopt.default_server().backend)"
    out = run_python(code, env={**ENV, "REDISOPT_IMAGE": unstartable_image})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() in {"bundled", "local"}
    assert f"could not run {unstartable_image}" in out.stderr and "using the next backend" in out.stderr
    assert "Traceback" not in out.stderr
    assert _new_since(before) == []
