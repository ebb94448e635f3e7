"""Private server processes (local or bundled binary), each kept by a watchdog process.

The watchdog (``watchdog.py``) owns the server and ends it when the owner's pipe closes, so a
server never outlives the notebook kernel that started it, SIGKILL included.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis

from redisopt import keeper
from redisopt.errors import ServerStartError
from redisopt.serverconf import CHAPTER_SETTINGS, private_settings, render_config
from redisopt.servers import NO_RETRY, START_TIMEOUT, Server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _PortTaken(ServerStartError):
    """Another process answered on the port picked for our server (a race); try another."""


def _kill_if_ours(*, host: str, port: int, password: str, pid: int) -> None:
    """Kill a server whose watchdog is gone, once INFO proves the port is still that process."""
    probe = redis.Redis(host=host, port=port, password=password, socket_connect_timeout=1,
                        socket_timeout=1, retry=NO_RETRY)
    try:
        if int(probe.info("server").get("process_id", 0)) == pid:
            os.kill(pid, signal.SIGKILL)
    except (redis.exceptions.RedisError, OSError):
        pass  # gone already (Linux: it died with its watchdog), or not ours to kill
    finally:
        probe.close()


def _stop_watchdog(proc: subprocess.Popen[bytes], owner: int, workdir: str, server: dict[str, Any]) -> None:
    if os.getpid() != owner:
        return  # a forked child must not stop its parent's server
    if keeper.end(proc, wait=10) != 0:  # the watchdog was killed (or failed): it cleaned up nothing
        if server["pid"]:
            _kill_if_ours(**server)
        shutil.rmtree(workdir, ignore_errors=True)


class ProcessServer(Server):
    """A private server process (local or bundled binary) kept by a watchdog.

    Other server kinds (``cluster.py``'s nodes, ``persistence.py``'s lab) subclass it: they widen
    ``allowed_settings``, add settings of their own in ``_own_settings`` and may fix the password
    and port (a cluster's nodes share one password; a restarted lab server keeps its address).
    """

    allowed_settings: frozenset[str] = CHAPTER_SETTINGS

    def __init__(self, executable: str, backend: str, config: Mapping[str, Any] | None = None, *,
                 password: str | None = None, port: int = 0) -> None:
        self.config = private_settings(config, allowed=self.allowed_settings)
        self.backend = backend
        self.executable = executable
        self._fixed_port = port
        super().__init__("127.0.0.1", 0, password or secrets.token_urlsafe(24))
        self.workdir = ""
        self.pid = 0
        try:
            for attempt in range(3):
                try:
                    self._start()
                    break
                except _PortTaken:
                    if attempt == 2:
                        raise
            self.identify()
        except BaseException:  # a failed start (or Ctrl-C) must not leave its server running
            if getattr(self, "_finalizer", None) is not None:
                self.stop()
            raise

    def _start(self) -> None:
        started = time.perf_counter()
        self.port = self._fixed_port or _free_port()
        try:
            self.workdir = tempfile.mkdtemp(prefix="redisopt-")
        except OSError as exc:  # TMPDIR missing or read-only, or the temp dir was removed
            where = tempfile.tempdir or os.environ.get("TMPDIR") or "the system temp directory"
            raise ServerStartError(
                f"cannot create the private server's directory in {where} "
                f"({exc.strerror or exc}); point TMPDIR at a writable directory"
            ) from None
        conf = Path(self.workdir, "server.conf")
        settings = {**self.config, "port": self.port, "requirepass": self.password, "dir": self.workdir,
                    **self._own_settings()}
        conf.write_text(render_config(settings), encoding="utf-8")
        conf.chmod(0o600)
        known = {"host": self.host, "port": self.port, "password": self.password or "", "pid": 0}
        proc, pid = keeper.spawn(self.workdir, [self.executable, str(conf)])
        self._watchdog = proc
        self._finalizer = weakref.finalize(self, _stop_watchdog, proc, os.getpid(), self.workdir, known)
        if pid is None:
            self.stop()
            raise ServerStartError(f"the watchdog could not start {self.executable}")
        self.pid = known["pid"] = pid  # the finalizer can now kill it if the watchdog cannot
        self._wait_ready(proc)
        conf.unlink()  # read at start and never again: no password left on disk
        self.started_in = time.perf_counter() - started

    def _own_settings(self) -> dict[str, Any]:
        """Settings a server kind computes at each start, after the checked ones (none here)."""
        return {}

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        # No retries: redis-py's default backoff would turn each "not yet" into seconds.
        probe = redis.Redis(host=self.host, port=self.port, password=self.password,
                            socket_connect_timeout=1, socket_timeout=2, retry=NO_RETRY)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:  # the server died; the watchdog reported why and left
                    log = proc.stdout.read().decode("utf-8", "replace").strip()  # type: ignore[union-attr]
                    self.stop()
                    error = _PortTaken if "in use" in log else ServerStartError
                    raise error(f"{self.executable} exited at start: {log or '(no log)'}")
                try:
                    answered = int(probe.info("server").get("process_id", 0))
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):  # not listening yet
                    answered = 0
                if answered == self.pid:
                    return
                if answered:  # another process holds the port (and took our password)
                    self.stop()
                    raise _PortTaken(
                        f"127.0.0.1:{self.port} is answered by process {answered}, not by the "
                        f"server redisopt started (process {self.pid}): another process took the port"
                    )
                time.sleep(0.005)
        finally:
            probe.close()
        log = self._log_tail()
        self.stop()
        raise ServerStartError(f"{self.executable} did not answer within {START_TIMEOUT:.0f} s: {log}")

    def _log_tail(self) -> str:
        try:
            text = Path(self.workdir, "server.out").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log left)"
        lines = [line for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-5:]) or "(empty log)"

    def stop(self) -> None:
        """Stop the server and remove its directory (the watchdog does both on EOF)."""
        self._finalizer()

    @property
    def running(self) -> bool:
        return self._watchdog.poll() is None

