"""Private servers in Docker containers, through testcontainers."""

from __future__ import annotations

import os
import secrets
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

from redisopt.serverconf import container_command
from redisopt.servers import Server

CONTAINER_IMAGE = "redis:7.4.2"  # pinned; REDISOPT_IMAGE overrides


class ContainerServer(Server):
    """A private server in a Docker container, through testcontainers (Ryuk reaps it on a crash)."""

    backend = "container"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        from testcontainers.community.redis import RedisContainer

        super().__init__("127.0.0.1", 0, secrets.token_urlsafe(24))
        command = container_command(self.password, config)
        image = os.environ.get("REDISOPT_IMAGE", CONTAINER_IMAGE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            container = RedisContainer(image, password=self.password)
            container.with_command(command)
            # Publish on the host's loopback only (docker-py takes an (ip, port) pair here).
            container.ports["6379"] = ("127.0.0.1", None)  # type: ignore[assignment]
            container.start()
        self._container = container
        self.host = container.get_container_host_ip()
        self.port = int(container.get_exposed_port(6379))
        self._finalizer = weakref.finalize(self, container.stop)
        self.identify()

    def stop(self) -> None:
        self._finalizer()

