"""``python -m redisopt doctor``: which backend would serve the workbook, and why not the others."""

from __future__ import annotations

import argparse
import os
import sys

from redisopt.backends import BACKENDS, forced_backend, survey
from redisopt.errors import RedisoptError
from redisopt.servers import PRIVATE_URL_ENV
from redisopt.urls import redact


def doctor() -> int:
    """Probe every backend in order, start the chosen one, and print what it is."""
    forced = forced_backend()
    print(f"backend order: {' → '.join(BACKENDS)}" + (f" (forced: {forced})" if forced else ""))
    handed = os.environ.get(PRIVATE_URL_ENV, "").strip()
    if handed:
        print(f"{PRIVATE_URL_ENV} is set ({redact(handed)}): connect() here shares the private "
              "server of the process that set it; below is what this process would start itself")
    choices = survey(stop_at_first=False)
    chosen = next((c for c in choices if c.usable), None)
    for choice in choices:
        if choice is chosen:
            verdict = "USE "
        elif choice.usable:
            verdict = "also"
        else:
            verdict = "skip"
        print(f"  {verdict} {choice.backend:<9} {choice.reason}")
    if chosen is None or chosen.start is None:
        print("no backend can provide a server; see README → 'Getting a server'")
        return 1
    server = chosen.start(None)
    try:
        started = f", started in {server.started_in * 1e3:.0f} ms" if server.started_in else ""
        print(f"server: {server.describe()}{started}")
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m redisopt")
    parser.add_argument("command", choices=["doctor"], help="doctor: report how a server is provisioned")
    args = parser.parse_args(argv)
    try:
        if args.command == "doctor":
            return doctor()
    except RedisoptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
