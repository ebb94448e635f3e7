"""Codecs: round trips (hypothesis), marked compression, clear errors, no pickle."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import redisopt
from redisopt.codecs import MARKER, NAMES, get_codec

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SCALARS = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=30,
)
MSGPACK_VALUES = st.recursive(
    SCALARS | st.binary(),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=30,
)


def strict(value: Any) -> str:
    """repr tells 1 from 1.0 from True and keeps dict order: equality that cannot be fooled."""
    return repr(value)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=80, deadline=None)
@given(value=JSON_VALUES)
def test_round_trip(name: str, value: Any) -> None:
    codec = get_codec(name, compress_over=64 if name.endswith("+zlib") else None)
    data = codec.encode(value)
    assert isinstance(data, bytes)
    assert strict(codec.decode(data)) == strict(value)


@pytest.mark.parametrize("name", ["msgpack", "msgpack+zlib"])
@settings(max_examples=60, deadline=None)
@given(value=MSGPACK_VALUES)
def test_msgpack_round_trips_bytes(name: str, value: Any) -> None:
    codec = get_codec(name, compress_over=64 if name.endswith("+zlib") else None)
    assert strict(codec.decode(codec.encode(value))) == strict(value)


@pytest.mark.parametrize("base", ["json", "orjson", "msgpack"])
@settings(max_examples=60, deadline=None)
@given(value=JSON_VALUES)
def test_plain_payloads_never_start_with_the_marker(base: str, value: Any) -> None:
    """The marker is unambiguous: no plain payload starts with 0xC1, so ``+zlib`` reads plain ones."""
    data = get_codec(base).encode(value)
    assert data[:1] != MARKER
    assert strict(get_codec(base + "+zlib").decode(data)) == strict(value)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [None, True, False, 0, 1, "", []])
def test_none_and_bools_keep_their_type(name: str, value: Any) -> None:
    back = get_codec(name).decode(get_codec(name).encode(value))
    assert back == value and type(back) is type(value)


@pytest.mark.parametrize("base", ["json", "orjson", "msgpack"])
def test_compression_above_the_threshold_only(base: str) -> None:
    codec = get_codec(base + "+zlib")
    big = {"text": "redis " * 2_000}
    small = {"text": "redis"}
    assert codec.encode(big)[:1] == MARKER
    assert len(codec.encode(big)) < len(get_codec(base).encode(big)) / 10
    assert codec.encode(small) == get_codec(base).encode(small)  # below the threshold: plain
    assert codec.decode(codec.encode(big)) == big
    assert get_codec(base, compress_over=0).encode(small)[:1] == MARKER


def test_unknown_codec_lists_the_choices() -> None:
    for bad in ("pickle", "yaml", "orjson+lz4", ""):
        with pytest.raises(ValueError, match="json, orjson, msgpack"):
            get_codec(bad)
    with pytest.raises(ValueError, match="compress_over"):
        get_codec("json", compress_over=-1)


class Opaque:
    pass


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("value", "type_name", "path"),
    [
        (Opaque(), "Opaque", "<top>"),
        ({"a": [1, {"b": {1, 2}}]}, "set", "['a'][1]['b']"),
        ([1, 2, 3j], "complex", "[2]"),
    ],
)
def test_unserializable_is_a_type_error_naming_the_type(name: str, value: Any, type_name: str, path: str) -> None:
    with pytest.raises(TypeError, match=type_name) as info:
        get_codec(name).encode(value)
    err = info.value
    assert isinstance(err, redisopt.EncodeError) and isinstance(err, redisopt.RedisoptError)
    assert (err.type_name, err.path, err.codec) == (type_name, path, name)


def test_encode_many_names_the_failing_item() -> None:
    items = [{"n": i} for i in range(10)]
    items[7] = {"n": object()}
    with pytest.raises(TypeError, match="item 7") as info:
        get_codec("orjson").encode_many(items)
    assert info.value.index == 7


def test_nan_is_refused_by_json_and_becomes_null_under_orjson() -> None:
    """A codec difference the chapter states: stdlib json refuses NaN, orjson silently writes null."""
    with pytest.raises(TypeError, match="float"):
        get_codec("json").encode(math.nan)
    assert get_codec("orjson").decode(get_codec("orjson").encode(math.nan)) is None
    assert math.isnan(get_codec("msgpack").decode(get_codec("msgpack").encode(math.nan)))


def test_a_codec_object_passes_through_and_a_non_codec_is_refused() -> None:
    codec = get_codec("msgpack")
    assert get_codec(codec) is codec
    with pytest.raises(TypeError, match="int"):
        get_codec(42)  # type: ignore[arg-type]
