"""Codecs: what a Python value becomes on the wire (json, orjson, msgpack; optional zlib). Never pickle.

One small interface, ``encode(obj) -> bytes`` / ``decode(bytes) -> obj`` / ``name``, shared by the
queue and the cache (and their asyncio twins): ``get_codec("orjson")``, ``get_codec("msgpack+zlib")``.

Compression is marked, not guessed: a compressed payload starts with ``0xC1``, a byte msgpack
declares "never used" and no JSON text (nor any UTF-8 text) can start with. Plain payloads carry no
marker, so a ``+zlib`` codec reads payloads written by its plain twin, and small values (below
``compress_over`` bytes) are stored as they are — zlib only pays off on large ones.

Mistake 11 of the article (SETEX of None or a bool raises DataError in redis-py) disappears here:
every codec turns None, True and False into bytes and back.

A trap measured on this machine (issue 6), worth knowing before batching: keeping 200,000 small
``orjson.dumps`` results alive costs ~4 µs each (dropping them: ~0.27 µs), and RSS grows by ~4 KiB per
kept 35-byte result, with one minor page fault each. GC is not the cause (bytes are untracked;
``gc.disable()`` changes nothing); orjson allocates a page-sized buffer per call and shrinks it, and
the freed tail is too small to serve the next call. Encoding 1,000 at a time and letting each
chunk go before the next keeps ~0.27 µs — that is why ``WorkQueue.put_many`` encodes per chunk.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgpack
import orjson

from redisopt.errors import EncodeError

MARKER = b"\xc1"  # msgpack's "never used" byte; not a valid first byte of UTF-8 text either
COMPRESS_OVER = 1024  # bytes: below this zlib costs more time than the bytes it saves
ZLIB_LEVEL = 1  # fastest level: most of the saving on repetitive JSON at a fraction of the time


@runtime_checkable
class Codec(Protocol):
    """Anything with a ``name`` and ``encode``/``decode`` can be passed where a codec name goes."""

    name: str

    def encode(self, obj: Any) -> bytes: ...

    def decode(self, data: bytes | str) -> Any: ...


def json_dumps(obj: Any) -> bytes:
    # allow_nan=False: NaN is not JSON; stdlib json would write it and orjson would read it back as None
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _msgpack_dumps(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _msgpack_loads(data: bytes | str) -> Any:
    if isinstance(data, str):
        raise TypeError("msgpack payloads are binary: read them with a client that does not decode replies")
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# name -> (dumps, loads, the Python types it encodes natively, for naming the culprit on failure)
_PLAIN: dict[str, tuple[Callable[[Any], bytes], Callable[[Any], Any], tuple[type, ...]]] = {
    "json": (json_dumps, json.loads, (dict, list, tuple, str, int, float, bool, type(None))),
    "orjson": (orjson.dumps, orjson.loads, (dict, list, tuple, str, int, float, bool, type(None))),
    "msgpack": (_msgpack_dumps, _msgpack_loads, (dict, list, tuple, str, int, float, bool, type(None), bytes)),
}
NAMES = tuple([*_PLAIN, *(f"{n}+zlib" for n in _PLAIN)])


def _culprit(obj: Any, native: tuple[type, ...], path: str = "") -> tuple[str, str]:
    """The first value (depth first) whose type the codec cannot encode: ``(type name, path)``."""
    if type(obj) is dict:
        for k, v in obj.items():
            if type(k) is not str:
                return type(k).__name__ + " (as a dict key)", path or "<top>"
            found = _culprit(v, native, f"{path}[{k!r}]")
            if found[0]:
                return found
        return "", ""
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            found = _culprit(v, native, f"{path}[{i}]")
            if found[0]:
                return found
        return "", ""
    if not isinstance(obj, native):
        return type(obj).__name__, path or "<top>"
    return "", ""


@dataclass(frozen=True)
class StandardCodec:
    """json, orjson or msgpack; with ``compress_over`` set, zlib for payloads of that size or more."""

    base: str
    compress_over: int | None = None
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if self.base not in _PLAIN:
            raise ValueError(f"unknown codec {self.base!r}; choose one of {', '.join(NAMES)}")
        if self.compress_over is not None and self.compress_over < 0:
            raise ValueError(f"compress_over must be >= 0 bytes, not {self.compress_over!r}")
        object.__setattr__(self, "name", self.base if self.compress_over is None else f"{self.base}+zlib")

    def encode(self, obj: Any) -> bytes:
        """``obj`` as bytes; a value the codec cannot represent raises EncodeError (a TypeError)."""
        dumps = _PLAIN[self.base][0]
        try:
            data = dumps(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._error(obj, exc) from exc
        if self.compress_over is not None and len(data) >= self.compress_over:
            return MARKER + zlib.compress(data, ZLIB_LEVEL)
        return data

    @property
    def fast_encode(self) -> Callable[[Any], bytes] | None:
        """The bare dumps when ``encode`` adds nothing to it (no zlib), else None: for hot loops
        (``WorkQueue.put_many``) that turn its errors into EncodeError themselves."""
        return _PLAIN[self.base][0] if self.compress_over is None else None

    def encode_many(self, items: Iterable[Any]) -> list[bytes]:
        """Encode a chunk in one comprehension (the fast path); on failure, name the bad item."""
        items = items if isinstance(items, list) else list(items)
        dumps = _PLAIN[self.base][0]
        if self.compress_over is None:
            try:
                return [dumps(x) for x in items]
            except (TypeError, ValueError, OverflowError):
                pass  # fall through: encode one by one to find which item failed
        return _one_by_one(self.encode, items)

    def decode(self, data: bytes | str) -> Any:
        if isinstance(data, bytes) and data[:1] == MARKER:
            data = zlib.decompress(data[1:])
        return _PLAIN[self.base][1](data)

    def _error(self, obj: Any, exc: Exception) -> EncodeError:
        type_name, path = _culprit(obj, _PLAIN[self.base][2])
        if not type_name:  # a native type with a bad value: a huge int, NaN for json, a lone surrogate
            type_name, path = type(obj).__name__, "<top>"
        return EncodeError(
            f"{self.name} cannot encode a value of type {type_name} at {path}: {exc}",
            codec=self.name, type_name=type_name, path=path,
        )


def encode_many(codec: Codec, items: list[Any]) -> list[bytes]:
    """``codec.encode_many(items)`` when it has one (the fast path), else one ``encode`` per item."""
    fast = getattr(codec, "encode_many", None)
    if fast is not None:
        return fast(items)
    return _one_by_one(codec.encode, items)


def _one_by_one(encode: Callable[[Any], bytes], items: list[Any]) -> list[bytes]:
    """Encode item by item, so an EncodeError can say which item (``index``) failed."""
    out = []
    for i, x in enumerate(items):
        try:
            out.append(encode(x))
        except EncodeError as exc:
            exc.index = i
            raise
    return out


def get_codec(codec: str | Codec = "orjson", *, compress_over: int | None = None) -> Codec:
    """A codec by name (``json``, ``orjson``, ``msgpack``, each also as ``<name>+zlib``), or ``codec`` itself.

    ``compress_over`` (bytes) turns zlib on at that size; ``"<name>+zlib"`` alone uses COMPRESS_OVER.
    """
    if not isinstance(codec, str):
        if isinstance(codec, Codec):
            return codec
        raise TypeError(f"codec must be a name or have name/encode/decode, not {type(codec).__name__}")
    base, plus, suffix = codec.lower().partition("+")
    if base not in _PLAIN or (plus and suffix != "zlib"):
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(NAMES)}")
    if plus and compress_over is None:
        compress_over = COMPRESS_OVER
    return StandardCodec(base, compress_over)
