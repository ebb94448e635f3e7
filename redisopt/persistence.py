"""The persistence lab (8장): a server that writes an AOF, survives a SIGKILL and restarts on its data.

Private servers refuse persistence settings and lose their directory when they stop. The lab is
the one server kind that keeps a data directory across restarts: the directory has a watchdog of
its own (a sleeper process kept by ``watchdog.py``), so it is removed by ``stop()`` or when this
Python process ends, SIGKILL included, while each server run inside it comes and goes.

What the lab can show honestly, and what it cannot:
- ``appendfsync always`` fsyncs before each reply, ``everysec`` once a second in the background,
  ``no`` leaves flushing to the OS. ``fsync_throughput`` measures what each costs in writes/s.
- A SIGKILL of the *server process* loses nothing it acknowledged, as a rule under every policy:
  the server write(2)s the AOF buffer before it sends the replies of that event-loop turn, and the
  kernel's page cache outlives the process. ``kill_during_writes`` counts it. One documented
  exception: under ``everysec``, while a background fsync is still running (a disk too slow to
  keep up), the server postpones its write(2) for up to 2 s (INFO ``aof_delayed_fsync`` counts
  those) — a kill in that window may lose what it postponed. A healthy disk never gets there.
- What fsync protects against is an OS crash or power loss, when the page cache is gone: then
  ``everysec`` may lose about the last second and ``no`` up to the OS's own flush interval (~30 s
  on Linux). A notebook cannot stage that; the lab says so rather than pretend.
"""

from __future__ import annotations

import os
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import redis

from redisopt import keeper
from redisopt.cluster import server_binary
from redisopt.errors import ServerStartError
from redisopt.processes import ProcessServer, _free_port
from redisopt.serverconf import PERSISTENCE_SETTINGS
from redisopt.servers import NO_RETRY

FSYNC_POLICIES = ("always", "everysec", "no")
LOAD_TIMEOUT = 30.0  # seconds a restarted server may take to load its AOF
_SLEEPER = "import time\nwhile True: time.sleep(3600)"  # holds the data dir's watchdog open


class LabServer(ProcessServer):
    """One run of the lab's server: persistence settings allowed, ``dir`` set to the lab's data dir."""

    allowed_settings = PERSISTENCE_SETTINGS

    def __init__(self, executable: str, backend: str, config: Mapping[str, Any], *, datadir: str,
                 password: str, port: int) -> None:
        self.datadir = datadir
        super().__init__(executable, backend, config, password=password, port=port)

    def _own_settings(self) -> dict[str, Any]:
        return {"dir": self.datadir}

    def describe(self) -> str:
        return super().describe().replace("private: loopback, password, no persistence",
                                          "persistence lab: loopback, password, AOF")


def _end_keeper(proc: Any, owner: int) -> None:
    if os.getpid() == owner:
        keeper.end(proc, wait=10)


class PersistenceLab:
    """A server with AOF on (``appendfsync`` as given) whose data survives ``kill()`` + ``restart()``.

    The address and password stay the same across restarts, so clients made by ``client()``
    reconnect by themselves once the server is back (until then they raise ConnectionError).
    """

    def __init__(self, appendfsync: str = "everysec", config: Mapping[str, Any] | None = None) -> None:
        if appendfsync not in FSYNC_POLICIES:
            raise ValueError(f"appendfsync must be one of {', '.join(FSYNC_POLICIES)}, not {appendfsync!r}")
        self.executable, self.backend = server_binary()
        self.config = {"appendonly": "yes", "appendfsync": appendfsync, "save": '""',
                       "aof-use-rdb-preamble": "yes", **dict(config or {})}
        self.password = secrets.token_urlsafe(24)
        self.datadir = tempfile.mkdtemp(prefix="redisopt-lab-")
        proc, pid = keeper.spawn(self.datadir, [sys.executable, "-I", "-S", "-c", _SLEEPER])
        self._keeper = weakref.finalize(self, _end_keeper, proc, os.getpid())
        if pid is None:
            self._keeper()
            raise ServerStartError("the persistence lab could not keep its data directory")
        self.server: LabServer | None = None
        self.port = 0
        self.restarts = 0
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> float:
        started = time.perf_counter()
        self.server = LabServer(self.executable, self.backend, self.config, datadir=self.datadir,
                                password=self.password, port=self.port or _free_port())
        self.port = self.server.port
        self._wait_loaded()
        return time.perf_counter() - started

    def _wait_loaded(self) -> None:
        probe = self.admin()
        deadline = time.monotonic() + LOAD_TIMEOUT
        try:
            while int(probe.info("persistence").get("loading", 0)):
                if time.monotonic() > deadline:
                    raise ServerStartError(f"the lab server still loads its AOF after {LOAD_TIMEOUT:g} s")
                time.sleep(0.01)
        finally:
            probe.close()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redisopt client (counted) to the lab's server; it outlives restarts."""
        if self.server is None:
            raise ServerStartError("the persistence lab is stopped")
        return self.server.client(**kwargs)

    def admin(self, **kwargs: Any) -> redis.Redis:
        """A plain client with no retries and short timeouts: fails fast while the server is down."""
        options = {"socket_connect_timeout": 2, "socket_timeout": 5, "retry": NO_RETRY, "decode_responses": True}
        options.update(kwargs)
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **options)

    def kill(self) -> None:
        """SIGKILL the server process (no shutdown, no final fsync), and wait until it is gone."""
        server = self.server
        if server is None or not server.running:
            return
        os.kill(server.pid, signal.SIGKILL)
        server._watchdog.wait(timeout=10)  # the watchdog sees its child die and exits
        server.stop()

    def restart(self) -> float:
        """Kill the server if it runs, start it again on the same data, port and password; seconds taken."""
        self.kill()
        self.restarts += 1
        return self._start()

    def files(self) -> pd.DataFrame:
        """The data directory's files (AOF parts, manifest, RDB) and their sizes."""
        root = Path(self.datadir)
        rows = [{"file": str(p.relative_to(root)), "bytes": p.stat().st_size}
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != "server.out"]
        return pd.DataFrame(rows, columns=["file", "bytes"])

    def stop(self) -> None:
        """Stop the server and remove the data directory."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        self._keeper()

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.running

    def __enter__(self) -> PersistenceLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- measurements


def fsync_cost(directory: str, samples: int = 20) -> float:
    """Median seconds one small write + fsync takes in ``directory``: what ``always`` adds per write.

    The verdicts on appendfsync need it: on tmpfs (Debian 13's and Fedora's /tmp) or a disk with
    a power-safe write cache, fsync is nearly free and ``always`` is barely slower than ``no``.
    """
    if samples < 1:
        raise ValueError("samples must be >= 1")
    path = os.path.join(directory, "fsync-probe")
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(samples):
            started = time.perf_counter()
            os.write(fd, b"x" * 64)
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times)


def fsync_throughput(policies: Sequence[str] = FSYNC_POLICIES, seconds: float = 1.0,
                     value_size: int = 64) -> pd.DataFrame:
    """Acknowledged SETs per second from one client, one round trip each, under each appendfsync.

    One lab server, switched with CONFIG SET between runs (its own server: nothing to guard).
    Each run lasts ``seconds``; ``aof_bytes`` is how much the AOF grew (the same writes, logged);
    ``fsync_ms`` is what one fsync costs in the lab's data dir (``fsync_cost``), measured once.
    """
    if seconds <= 0:
        raise ValueError("seconds must be > 0")
    rows = []
    with PersistenceLab(policies[0]) as lab:
        admin = lab.admin()
        fsync_ms = fsync_cost(lab.datadir) * 1000
        value = "x" * value_size
        try:
            for policy in policies:
                admin.config_set("appendfsync", policy)
                before = admin.info("persistence")
                writes, started = 0, time.perf_counter()
                deadline = started + seconds
                while time.perf_counter() < deadline:
                    admin.set(f"k:{writes % 10_000}", value)
                    writes += 1
                elapsed = time.perf_counter() - started
                after = admin.info("persistence")
                grown = int(after.get("aof_current_size", 0)) - int(before.get("aof_current_size", 0))
                rows.append({"appendfsync": policy, "writes": writes, "seconds": round(elapsed, 3),
                             "writes_per_s": writes / elapsed, "aof_bytes": grown, "fsync_ms": fsync_ms})
        finally:
            admin.close()
    return pd.DataFrame(rows, columns=["appendfsync", "writes", "seconds", "writes_per_s", "aof_bytes", "fsync_ms"])


@dataclass
class KillOutcome:
    """A server SIGKILLed under writes: what the writer had acknowledged vs what the restart found."""

    appendfsync: str
    acknowledged: int  # RPUSH replies the writer received before the kill
    found: int  # list length after the restart
    in_order: bool  # the list is exactly 0, 1, …, found-1
    writer_error: str  # what the writer saw when the server died
    # INFO persistence just before the kill. While a background fsync runs, everysec holds writes
    # (already acknowledged) in memory for up to 2 s; this counts the holds that ran out the 2 s.
    aof_delayed_fsync: int = 0

    @property
    def lost(self) -> int:
        """Acknowledged writes missing after the restart (0 is the promise of the AOF here)."""
        return max(self.acknowledged - self.found, 0)

    @property
    def unacknowledged_kept(self) -> int:
        """Writes applied and logged whose reply never arrived (the kill hit between the two)."""
        return max(self.found - self.acknowledged, 0)

    def row(self) -> dict[str, Any]:
        return {"appendfsync": self.appendfsync, "acknowledged": self.acknowledged, "found": self.found,
                "lost": self.lost, "unacknowledged_kept": self.unacknowledged_kept, "in_order": self.in_order,
                "aof_delayed_fsync": self.aof_delayed_fsync}


def kill_during_writes(appendfsync: str = "everysec", seconds: float = 0.5, key: str = "lab:acks",
                       config: Mapping[str, Any] | None = None) -> KillOutcome:
    """RPUSH 0, 1, 2, … one acknowledged write at a time; SIGKILL the server after ``seconds``; restart.

    The writer stops at the first error (no retry: a retried RPUSH could be applied twice).
    ``config`` goes to the lab, e.g. ``{"appendonly": "no"}`` for the control where all is lost.
    """
    with PersistenceLab(appendfsync, config) as lab:
        writer = lab.admin(socket_timeout=10)
        acked = [0]
        error = [""]

        def write() -> None:
            try:
                while True:
                    writer.rpush(key, acked[0])
                    acked[0] += 1
            except redis.exceptions.RedisError as exc:
                error[0] = type(exc).__name__

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        time.sleep(seconds)
        probe = lab.admin()
        try:
            delayed = int(probe.info("persistence").get("aof_delayed_fsync", 0))
        finally:
            probe.close()
        lab.kill()
        thread.join(timeout=15)
        writer.close()
        if thread.is_alive():
            raise RuntimeError("the writer did not notice the server's death within 15 s")
        lab.restart()
        reader = lab.admin()
        try:
            values = reader.lrange(key, 0, -1)
        finally:
            reader.close()
        return KillOutcome(appendfsync, acked[0], len(values), values == [str(i) for i in range(len(values))],
                           error[0], delayed)


def kill_table(policies: Sequence[str] = ("always", "everysec", "no"), seconds: float = 0.5) -> pd.DataFrame:
    """``kill_during_writes`` for each policy, one row each."""
    return pd.DataFrame([kill_during_writes(p, seconds).row() for p in policies])


def persistence_figures(seconds: float = 1.0) -> dict[str, float]:
    """Benchmark keys: acknowledged SETs/s (one client, one round trip each) per appendfsync policy."""
    table = fsync_throughput(seconds=seconds)
    return {f"aof_{row.appendfsync}_writes_per_s": float(row.writes_per_s) for row in table.itertuples()}
