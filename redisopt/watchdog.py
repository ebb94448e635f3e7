"""Keeper of one private server process: stops it and removes its directory when the owner dies.

Run as a plain script (stdlib only, ``python -I watchdog.py DIR -- SERVER ARGS…``). It starts the
server as its own child, writes the child's pid on stdout, then waits for end-of-file on stdin.
The owning Python process holds the other end of that pipe, so EOF arrives when the owner calls
stop() *or* when it dies for any reason, SIGKILL included: the server never outlives a crashed
notebook kernel, and its temp directory does not pile up in /tmp. If the server exits on its own,
the watchdog cleans up and exits too.

Three more ways an owner or a watchdog can vanish, and what holds then:
- The owner dies while a forked child of it lives: the child inherited the pipe's write end, so no
  EOF comes. The owner closes that end in its children (``os.register_at_fork``), and the watchdog
  also notices that its parent is gone (its parent pid changes) within a quarter second.
- The watchdog itself is SIGKILLed: on Linux the server was started with PR_SET_PDEATHSIG, so the
  kernel kills it with the watchdog; the owner removes the temp dir when it stops the server or
  exits. On macOS (no such call) the owner's stop() or exit shuts the server down instead; only
  if the owner is then SIGKILLed too does the server outlive both, and its directory holds no
  password by then (the owner deletes server.conf once the server answers).
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook that makes the server die with this watchdog (Linux only), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    watchdog = os.getpid()

    def hook() -> None:  # runs in the forked child before exec: no imports, no allocation to speak of
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != watchdog:  # the watchdog died before the call took effect
            os._exit(1)

    return hook


def main(argv: list[str]) -> int:
    # --grace: how long the child may take to end after SIGTERM (a server: 5 s; the container
    # reaper, which must reach the Docker engine first, more).
    grace = 5.0
    if len(argv) > 2 and argv[1] == "--grace":
        grace, argv = float(argv[2]), [argv[0], *argv[3:]]
    if len(argv) < 3 or argv[1] != "--":
        print("usage: watchdog.py DIR [--grace SECONDS] -- SERVER [ARGS...]", file=sys.stderr)
        return 2
    workdir, command = argv[0], argv[2:]
    owner = os.getppid()
    # Interrupting a notebook kernel signals its process group; we run in our own session, and
    # ignore SIGINT besides, so only the owner's EOF (or SIGTERM) ends the server.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log = open(os.path.join(workdir, "server.out"), "ab")
    try:
        proc = subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                preexec_fn=_die_with_parent())
    except OSError as exc:
        log.write(f"cannot start {command[0]}: {exc}\n".encode())
        return 1
    try:
        sys.stdout.write(f"{proc.pid}\n")
        sys.stdout.flush()
        stdin = sys.stdin.fileno()
        while proc.poll() is None:
            ready, _, _ = select.select([stdin], [], [], 0.25)
            if ready and not os.read(stdin, 4096):
                break  # EOF: the owner stopped us or is gone
            if os.getppid() != owner:
                break  # the owner is gone, though a process it forked still holds the pipe
        else:
            _report_tail(workdir)  # the server died by itself: tell the owner why
    finally:
        _stop(proc, grace)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _report_tail(workdir: str) -> None:
    try:
        with open(os.path.join(workdir, "server.out"), "rb") as fh:
            lines = [line for line in fh.read().decode("utf-8", "replace").splitlines() if line.strip()]
        sys.stdout.write(" | ".join(lines[-5:]) + "\n")
        sys.stdout.flush()
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
