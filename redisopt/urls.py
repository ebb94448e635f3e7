"""User-supplied server addresses: REDIS_URL checked up front, and redacted wherever it is shown."""

from __future__ import annotations

import urllib.parse

from redisopt.connection import CONNECTION_CLASSES
from redisopt.errors import ConfigError


def parse_redis_url(url: str) -> urllib.parse.SplitResult:
    """Check a REDIS_URL up front, so a typo gets a message that names it rather than a stack."""
    form = "redis://[[user]:password@]host[:port][/db], rediss://… or unix:///path/to.sock"
    try:
        parsed = urllib.parse.urlsplit(url.strip())
        parsed.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL {url!r} is malformed ({exc}); expected {form}") from None
    if parsed.scheme not in CONNECTION_CLASSES:
        raise ConfigError(f"REDIS_URL {url!r} is not a Redis URL; expected {form}")
    if parsed.scheme != "unix" and not parsed.hostname:
        raise ConfigError(f"REDIS_URL {url!r} names no host; expected {form}")
    if parsed.scheme == "unix" and not parsed.path:
        raise ConfigError(f"REDIS_URL {url!r} names no socket path; expected {form}")
    db = parsed.path.strip("/")
    if parsed.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(f"REDIS_URL {url!r}: database {db!r} is not a number; expected {form}")
    return parsed



def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url

