"""Private-server settings: what every private server runs with, and how chapters may add to it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from redisopt.errors import ConfigError

# What every private server runs with. Chapters add to it (never remove) via start_server(config).
PRIVATE_CONFIG: dict[str, str] = {
    "bind": "127.0.0.1",
    "protected-mode": "yes",
    "save": '""',
    "appendonly": "no",
    "daemonize": "no",
    "logfile": '""',
    "enable-debug-command": "local",
}
_CONFIG_NAME = re.compile(r"^[a-z][a-z0-9-]*$")

# Settings a chapter may add with start_server(config). An allowlist, not a denylist: each server
# release adds settings, and a new one must not slip through because nobody listed it as unsafe.
# Everything here changes how the server uses memory, encodes values, reports slowness or
# schedules work; nothing here makes it write files, accept another password or user, listen
# elsewhere, load code, or talk to another server. To add one, say which chapter needs it and why
# it cannot loosen a private server.
CHAPTER_SETTINGS: frozenset[str] = frozenset(
    {
        # memory and eviction (3장): the eviction lab needs a small maxmemory and each policy
        "maxmemory", "maxmemory-policy", "maxmemory-samples", "maxmemory-eviction-tenacity",
        "maxmemory-clients", "lfu-log-factor", "lfu-decay-time", "active-expire-effort",
        # encodings and their thresholds (1장, 3장); the *-ziplist-* names are Redis's old aliases
        "hash-max-listpack-entries", "hash-max-listpack-value",
        "hash-max-ziplist-entries", "hash-max-ziplist-value",
        "set-max-intset-entries", "set-max-listpack-entries", "set-max-listpack-value",
        "zset-max-listpack-entries", "zset-max-listpack-value",
        "zset-max-ziplist-entries", "zset-max-ziplist-value",
        "list-max-listpack-size", "list-max-ziplist-size", "list-compress-depth",
        "stream-node-max-bytes", "stream-node-max-entries", "hll-sparse-max-bytes",
        # background freeing and defragmentation (4장: DEL vs UNLINK)
        "lazyfree-lazy-eviction", "lazyfree-lazy-expire", "lazyfree-lazy-server-del",
        "lazyfree-lazy-user-del", "lazyfree-lazy-user-flush",
        "activedefrag", "active-defrag-ignore-bytes", "active-defrag-threshold-lower",
        "active-defrag-threshold-upper", "active-defrag-cycle-min", "active-defrag-cycle-max",
        "jemalloc-bg-thread", "activerehashing",
        # monitoring (7장): slowlog, Valkey's commandlog, latency monitor and tracking
        "slowlog-log-slower-than", "slowlog-max-len", "latency-monitor-threshold",
        "latency-tracking", "latency-tracking-info-percentiles",
        "commandlog-execution-slower-than", "commandlog-slow-execution-max-len",
        "commandlog-request-larger-than", "commandlog-large-request-max-len",
        "commandlog-reply-larger-than", "commandlog-large-reply-max-len",
        "notify-keyspace-events", "loglevel",
        # scheduling, clients and limits (5장 Lua busy scripts, 6장 stampedes, 8장 pub/sub)
        "hz", "dynamic-hz", "timeout", "tcp-keepalive", "databases", "io-threads", "maxclients",
        "busy-reply-threshold", "lua-time-limit", "client-output-buffer-limit",
        "client-query-buffer-limit", "tracking-table-max-keys",
        # a unix socket as well as the TCP port; unixsocketperm is checked below (owner only)
        "unixsocket", "unixsocketperm",
    }
)
# A Redis Cluster node (8장) is a different server kind: cluster-enabled, cluster-config-file,
# cluster-node-timeout, … belong to the cluster server's own settings (cluster.py passes them
# through ``private_settings(config, allowed=CHAPTER_SETTINGS | its own)``), never to
# start_server(config), where they would turn a plain private server into a half-made node.
# Likewise the persistence lab (persistence.py) is the one kind that may write an AOF or RDB, in
# a data directory it keeps across a restart and removes at the end. A name on a kind's own list
# overrides the refusals below for that kind only.
CLUSTER_SETTINGS: frozenset[str] = CHAPTER_SETTINGS | {
    "cluster-enabled", "cluster-config-file", "cluster-port", "cluster-node-timeout",
    "cluster-require-full-coverage", "cluster-allow-reads-when-down", "cluster-announce-ip",
    "masterauth", "primaryauth",
}
PERSISTENCE_SETTINGS: frozenset[str] = CHAPTER_SETTINGS | {
    "appendonly", "appendfsync", "appendfilename", "appenddirname", "save", "dbfilename",
    "aof-use-rdb-preamble", "aof-timestamp-enabled", "no-appendfsync-on-rewrite",
    "auto-aof-rewrite-percentage", "auto-aof-rewrite-min-size", "aof-load-truncated",
    "rdbcompression", "rdbchecksum",
}

# Why the settings people most often reach for are refused; anything else not on the allowlist
# gets the generic reason.
_REFUSED_BECAUSE: dict[str, str] = {
    **dict.fromkeys(
        ("bind", "port", "protected-mode", "tls-port", "bind-source-addr"),
        "a private server listens on 127.0.0.1, on the port redisopt picked, and nowhere else",
    ),
    **dict.fromkeys(
        ("requirepass", "user", "aclfile", "masterauth", "masteruser", "primaryauth", "primaryuser",
         "acl-pubsub-default", "enable-protected-configs"),
        "a private server has one user, with the random password redisopt generated",
    ),
    **dict.fromkeys(
        ("save", "appendonly", "appendfsync", "appendfilename", "appenddirname", "dbfilename",
         "dir", "logfile", "pidfile", "daemonize", "supervised", "syslog-enabled"),
        "a private server writes nothing but its log, only in its own temp directory, and is "
        "kept by redisopt's watchdog",
    ),
    **dict.fromkeys(
        ("loadmodule", "enable-module-command", "enable-debug-command", "rename-command"),
        "it changes which commands or code the server runs",
    ),
    "include": "it would load settings from a file redisopt has not checked",
    "replicaof": "a private server never copies or serves another server",
    "slaveof": "a private server never copies or serves another server",
}
_ANY_SOCKET_PERM = 0o077  # group and other bits: a private socket is for its owner only

def render_config(config: Mapping[str, Any]) -> str:
    """Render server settings as a config file, rejecting names and values that could inject."""
    lines = []
    for name, value in config.items():
        if not _CONFIG_NAME.match(name):
            raise ConfigError(f"config name {name!r} is not a server setting name")
        text = str(value)
        if "\n" in text or "\r" in text:
            raise ConfigError(f"config value for {name!r} contains a line break")
        lines.append(f"{name} {text if text else chr(34) * 2}")
    return "\n".join(lines) + "\n"


def _refusal(name: str) -> str | None:
    if name in _REFUSED_BECAUSE:
        return _REFUSED_BECAUSE[name]
    if name.startswith("cluster-"):
        return "cluster settings belong to the cluster server kind, not start_server()"
    if name.startswith("tls-"):
        return "a private server speaks plain TCP on loopback"
    return None


def check_setting(name: str, value: str, allowed: frozenset[str] = CHAPTER_SETTINGS) -> None:
    """Refuse a setting outside the allowlist, naming it and saying why."""
    reason = None if name in allowed else _refusal(name)
    if reason is None and name not in allowed:
        reason = (
            "it is not on the allowlist of settings the chapters need "
            "(redisopt.serverconf.CHAPTER_SETTINGS: memory, eviction, encodings, slowlog and "
            "latency, lazyfree, timeouts and limits)"
        )
    if reason:
        raise ConfigError(f"{name} cannot be set on a private server: {reason}")
    if name == "unixsocketperm":
        try:
            perm = int(value, 8)
        except ValueError:
            raise ConfigError(f"unixsocketperm {value!r} is not an octal permission like 700") from None
        if perm & _ANY_SOCKET_PERM:
            raise ConfigError(
                f"unixsocketperm {value} cannot be set on a private server: it would let other "
                "users connect; use 700 (owner only)"
            )
    if name == "unixsocket" and not value.startswith("/"):
        raise ConfigError(f"unixsocket {value!r} must be an absolute path")


def private_settings(
    config: Mapping[str, Any] | None, *, allowed: frozenset[str] = CHAPTER_SETTINGS
) -> dict[str, str]:
    """PRIVATE_CONFIG plus a chapter's extra settings, each checked against the allowlist."""
    extra = {str(name): str(value) for name, value in (config or {}).items()}
    render_config(extra)  # reject bad names and values (line breaks) before judging them
    for name, value in extra.items():
        check_setting(name, value, allowed)
    settings = {**PRIVATE_CONFIG, **extra}
    render_config(settings)
    return settings


def container_command(password: str, config: Mapping[str, Any] | None) -> str:
    """The redis-server command line for a container: same settings, reachable via the published port.

    Inside its own network namespace the server must bind all interfaces; the host side is
    published on 127.0.0.1 only. Logs go to stdout, where Docker keeps them. DEBUG is enabled for
    every client, not "local": our connections arrive through the engine's port forwarding, so the
    server never sees them as local, and the chapters' DEBUG POPULATE would fall back to slow MSETs.
    Only the host's loopback reaches the port, with the password, as for a process server.
    """
    settings = private_settings(config)
    settings.update({"bind": "0.0.0.0", "protected-mode": "no", "requirepass": password,
                     "enable-debug-command": "yes"})
    settings.pop("logfile")
    return "redis-server " + " ".join(f"--{name} {value}" for name, value in settings.items())

