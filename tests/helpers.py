"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
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
