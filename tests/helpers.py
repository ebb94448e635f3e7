"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter: backend choice is per process, so it needs one."""
    # REDISOPT_PRIVATE_URL too: this process's private server is not handed down to these.
    stripped = {"REDIS_URL", "REDISOPT_BACKEND", "DOCKER_HOST", "REDISOPT_PRIVATE_URL"}
    full_env = {k: v for k, v in os.environ.items() if k not in stripped}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait up to ``timeout`` seconds for process ``pid`` to disappear."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def wait_removed(path: str, timeout: float = 10.0) -> bool:
    """Wait up to ``timeout`` seconds for ``path`` to disappear."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and os.path.exists(path):
        time.sleep(0.05)
    return not os.path.exists(path)
