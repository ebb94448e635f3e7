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
_FIXED = {"bind", "port", "requirepass", "dir", "daemonize", "protected-mode", "logfile"}


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


def private_settings(config: Mapping[str, Any] | None) -> dict[str, str]:
    """PRIVATE_CONFIG plus a chapter's extra settings, refusing any that would loosen it."""
    extra = {name: str(value) for name, value in (config or {}).items()}
    fixed = _FIXED.intersection(extra)
    if fixed:
        raise ConfigError(f"{', '.join(sorted(fixed))} cannot be changed on a private server")
    settings = {**PRIVATE_CONFIG, **extra}
    render_config(settings)  # reject bad names and values before anything starts
    return settings


def container_command(password: str, config: Mapping[str, Any] | None) -> str:
    """The redis-server command line for a container: same settings, reachable via the published port.

    Inside its own network namespace the server must bind all interfaces; the host side is
    published on 127.0.0.1 only. Logs go to stdout, where Docker keeps them.
    """
    settings = private_settings(config)
    settings.update({"bind": "0.0.0.0", "protected-mode": "no", "requirepass": password})
    settings.pop("logfile")
    return "redis-server " + " ".join(f"--{name} {value}" for name, value in settings.items())

