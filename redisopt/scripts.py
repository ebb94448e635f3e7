"""Lua scripts registered once per class, bound to no client.

redis-py's ``client.register_script`` keeps the client it was called on. A class that stores the
Script (as redis-py's own Lock does) would then keep that client, its pool and — since a pool holds
its server alive — a private server running until the interpreter exits. ``unbound_script`` makes
the same ``Script`` (same SHA1, EVALSHA with a SCRIPT LOAD on NOSCRIPT, pipeline support) holding
only an encoder; every call passes ``client=``.
"""

from __future__ import annotations

from redis.commands.core import Script
from redis.connection import Encoder


class _EncoderOnly:
    """What a Script needs from a client at registration: the encoder that turns its text into bytes."""

    @staticmethod
    def get_encoder() -> Encoder:
        return Encoder("utf-8", "strict", False)


def unbound_script(lua: str) -> Script:
    """A Script for ``lua`` that references no client (call it with ``client=``)."""
    return Script(_EncoderOnly(), lua)  # type: ignore[arg-type]
