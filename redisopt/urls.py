"""User-supplied server addresses: REDIS_URL checked up front, and redacted wherever it is shown."""

from __future__ import annotations

import functools
import inspect
import re
import urllib.parse

from redisopt.connection import CONNECTION_CLASSES
from redisopt.errors import ConfigError


def parse_redis_url(url: str) -> urllib.parse.SplitResult:
    """Check a REDIS_URL up front, so a typo gets a message that names it rather than a stack."""
    form = "redis://[[user]:password@]host[:port][/db], rediss://… or unix:///path/to.sock"
    try:
        parsed = urllib.parse.urlsplit(url.strip())
        parsed.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError as exc:  # its text may quote part of the URL (a password typed as a port)
        why = "its port is not a number from 0 to 65535" if "port" in str(exc).lower() else "it does not parse"
        raise ConfigError(f"REDIS_URL {redact(url)!r} is malformed: {why}; expected {form}") from None
    if parsed.scheme not in CONNECTION_CLASSES:
        raise ConfigError(f"REDIS_URL {redact(url)!r} is not a Redis URL; expected {form}")
    if parsed.scheme != "unix" and not parsed.hostname:
        raise ConfigError(f"REDIS_URL {redact(url)!r} names no host; expected {form}")
    if parsed.scheme == "unix" and not parsed.path:
        raise ConfigError(f"REDIS_URL {redact(url)!r} names no socket path; expected {form}")
    db = parsed.path.strip("/")
    if parsed.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(f"REDIS_URL {redact(url)!r}: database {db!r} is not a number; expected {form}")
    unknown = sorted({name for name, _ in urllib.parse.parse_qsl(parsed.query)} - _query_names(parsed.scheme))
    if unknown:  # redis-py would pass them on as keyword arguments and fail with a TypeError
        raise ConfigError(
            f"REDIS_URL {redact(url)!r}: unknown option(s) {', '.join(unknown)}; a URL may carry "
            "redis-py's connection options, e.g. ?password=…&socket_timeout=5&ssl_cert_reqs=none"
        )
    return parsed


@functools.cache
def _query_names(scheme: str) -> frozenset[str]:
    """The ?name=value options a URL of this scheme may carry: what its connection class accepts."""
    names: set[str] = set()
    for cls in CONNECTION_CLASSES[scheme].__mro__:
        if "__init__" in vars(cls):
            names.update(p.name for p in inspect.signature(cls.__init__).parameters.values()
                         if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD)
    return frozenset(names - {"self", "tap", "host", "port", "path", "connection_class"})


# user:password@ — up to the last "@", so a password with an unescaped "@" or "/" is hidden whole.
_USERINFO_PASSWORD = re.compile(r"(?P<head>//[^:@/?#]*:)[^\s]*@")
# host:port where the "port" is not a number: often a password typed without its "@host".
_NOT_A_PORT = re.compile(r"(?P<head>//(?:\[[^\]@]*\]|[^:@/?#\[]*):)(?=[^@/?#]*[^\d@/?#])[^@/?#]*(?=[/?#]|$)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|pass|auth)=)[^&#\s]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with any password hidden (``:***@``, ``?password=***``), even when it is malformed."""
    url = _USERINFO_PASSWORD.sub(r"\g<head>***@", url)
    url = _NOT_A_PORT.sub(r"\g<head>***", url)
    return _QUERY_PASSWORD.sub(r"\g<head>***", url)
