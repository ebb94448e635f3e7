"""The owner's side of a watchdog (``watchdog.py``): start one, and end it.

Process servers and container reapers are both kept by a watchdog; this module is the one place
that starts it, hands its pipe to nobody else (forked children close it), and ends it by EOF.
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

WATCHDOG = Path(__file__).with_name("watchdog.py")

# Owners' live watchdog pipes, closed in every forked child: a child holding the write end would
# keep the server up after the owner dies (no EOF). A forked child reaches the server only while
# the owner lives.
_LIVE: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()


def _close_pipes_in_child() -> None:
    for proc in list(_LIVE):
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()  # type: ignore[union-attr]
            except (OSError, ValueError):
                pass
    _LIVE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_pipes_in_child)


def spawn(workdir: str, command: Sequence[str], *, grace: float | None = None,
          env: Mapping[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int | None]:
    """Start a watchdog that runs ``command`` in ``workdir``; return it and the child's pid.

    The pid is None when the watchdog could not start the command (the caller reports why). The
    watchdog runs with ``-I -S`` (stdlib only: no site-packages to scan, ~15 ms sooner); the
    command it starts is a process of its own and is not affected by those flags.
    """
    options = ["--grace", str(grace)] if grace is not None else []
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(WATCHDOG), workdir, *options, "--", *command],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True, env=dict(env) if env is not None else None,
    )
    _LIVE.add(proc)
    first = proc.stdout.readline().strip()  # type: ignore[union-attr]
    return proc, int(first) if first.isdigit() else None


def end(proc: subprocess.Popen[bytes], wait: float) -> int:
    """EOF to the watchdog, which stops its child and removes its directory; return its exit code.

    A watchdog that does not finish within ``wait`` seconds gets SIGTERM, whose handler still does
    both. A non-zero code means it was killed (or failed) and cleaned up nothing.
    """
    try:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=10)
    finally:
        proc.stdout.close()  # type: ignore[union-attr]
        _LIVE.discard(proc)
    return proc.returncode
