"""No byte string makes a decoder raise anything but its own error.

Every reader of untrusted bytes (message bodies and KV values, envelopes with headers, device
payloads, facts files, authored documents) is fed a corpus of pathological inputs and
hypothesis-generated ones; each must return a value or raise the documented error, never
`RecursionError`, `TypeError`, `KeyError`... (a 3 KB body nested 5,000 deep once escaped every
`except DecodeError` and ended a daemon's task)."""

import contextlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.devices import DeviceRegistry
from edge.inventory import FactsError, read_facts
from fleetbus.errors import ConfigError
from fleetbus.sdk.documents import load_mapping
from schemas.catalog import MESSAGE_TYPES
from schemas.codec import JSON, MAX_DEPTH, MSGPACK, check_tree, decode_body, encode_body, load_json
from schemas.errors import DecodeError
from schemas.headers import CE_TYPE, CONTENT_TYPE, open_envelope


def nested_json(depth: int, open_: bytes = b'{"a":', close: bytes = b"}") -> bytes:
    return open_ * depth + b"1" + close * depth


def nested_msgpack(depth: int) -> bytes:
    body = msgpack.packb(1)
    for _ in range(depth):
        body = b"\x81\xa1a" + body  # a one-entry map {"a": ...}
    return body


CORPUS: dict[str, bytes] = {
    "json nested 5000 (3 KB... 30 KB)": nested_json(5000),
    "json lists nested 100000": b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "json nested just past MAX_DEPTH": nested_json(MAX_DEPTH + 1),
    "msgpack nested 3000": nested_msgpack(3000),
    "msgpack nested just past MAX_DEPTH": nested_msgpack(MAX_DEPTH + 1),
    "json 5000-digit integer": b'{"seq": ' + b"9" * 5000 + b"}",
    "json NaN": b'{"seq": NaN}',
    "json Infinity": b'{"interval_seconds": Infinity}',
    "json -Infinity in a free-form map": b'{"spec": {"config": {"x": -Infinity}}}',
    "msgpack NaN": msgpack.packb({"spec": {"config": {"x": math.nan}}}),
    "msgpack 2**64-1": msgpack.packb({"seq": 2**64 - 1}),
    "invalid UTF-8 in JSON": b'{"name": "\xff\xfe"}',
    "invalid UTF-8 in msgpack": b"\x81\xa4name\xa2\xff\xfe",
    "msgpack int key": msgpack.packb({1: 2}),
    "msgpack map as key": b"\x81\x81\xa1a\x01\x01",
    "msgpack ext type": b"\x81\xa1a\xd4\x01\x00",
    "msgpack timestamp ext": b"\x81\xa1a\xd6\xff\x00\x00\x00\x01",
    "msgpack array claiming 4G items": b"\xdd\xff\xff\xff\xff",
    "msgpack map claiming 4G entries": b"\xdf\xff\xff\xff\xff",
    "msgpack str claiming 4 GB": b"\xdb\xff\xff\xff\xff",
    "msgpack truncated": msgpack.packb({"a": "b" * 100})[:20],
    "1 MB string": json.dumps({"message": "x" * 1_000_000}).encode(),
    "20k-entry map (300 KB)": json.dumps({f"key-{i}": i for i in range(20_000)}).encode(),
    "duplicate keys": b'{"seq": 1, "seq": "two"}',
    "empty": b"",
    "blanks": b"   \n",
    "a list at the top": b"[1, 2]",
    "a string at the top": b'"hello"',
    "null": b"null",
    "wrong types at every level": json.dumps(
        {"name": 1, "selector": [], "spec": "x", "site": {}, "data": 3, "devices": {"a": 1}}
    ).encode(),
}


BIG_INTS = {
    "json 2**64 in a profile's config": b'{"name": "p", "spec": {"config": {"x": 18446744073709551616}}}',
    "json -2**63-1 in an event's data": b'{"data": {"x": -9223372036854775809}}',
    "json 4000-digit integer in a reading": b'{"t": ' + b"9" * 4000 + b"}",
}
SURROGATES = {
    "json lone surrogate in a reading": b'{"t": "\\ud800"}',
    "json lone surrogate in a key": b'{"data": {"\\uDFFF": 1}}',
}
NOT_MSGPACK = BIG_INTS | SURROGATES  # each fits Python and JSON, none msgpack (nor UTF-8)
CORPUS |= NOT_MSGPACK


def assert_only_decode_errors(body: bytes) -> None:
    for cls in MESSAGE_TYPES:
        for content_type in (None, JSON, MSGPACK, "text/plain", "application/json; charset=utf-8"):
            with contextlib.suppress(DecodeError):
                decode_body(cls, body, subject="fuzz", content_type=content_type)
        headers = {CE_TYPE: cls.schema_id(), CONTENT_TYPE: JSON}
        with contextlib.suppress(DecodeError):
            open_envelope(cls, body, headers, subject="fuzz")


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_message_decoder_turns_the_corpus_into_values_or_decode_errors(name):
    assert_only_decode_errors(CORPUS[name])


def test_what_is_too_deep_to_walk_is_refused_and_what_is_legal_is_kept():
    for body in (nested_json(5000), nested_json(MAX_DEPTH + 1), nested_msgpack(MAX_DEPTH + 1)):
        with pytest.raises(DecodeError, match="nested"):
            decode_body(MESSAGE_TYPES[0], body, subject="fuzz")
    assert load_json(nested_json(MAX_DEPTH - 1), what="ok") is not None
    for bad, reason in (("NaN", "not a JSON number"), ('{"a": Infinity}', "not a JSON number")):
        with pytest.raises(DecodeError, match=reason):
            load_json(bad, what="x")
    assert check_tree({"a": [math.inf]}) == "inf is not a finite number"
    assert check_tree([0] * 11, max_nodes=10) == "more than 10 values"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers() | st.binary(max_size=8), children, max_size=4)
    ),
    max_leaves=40,
)


def encodings(value: Any) -> list[bytes]:
    out = []
    with contextlib.suppress(TypeError, ValueError, OverflowError):
        out.append(msgpack.packb(value, use_bin_type=True))
    with contextlib.suppress(TypeError, ValueError):
        out.append(json.dumps(value).encode())
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256) | json_values.map(encodings).filter(bool).flatmap(st.sampled_from))
@example(nested_json(2000))
def test_any_bytes_decode_to_a_value_or_a_decode_error(body):
    assert_only_decode_errors(body)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_decoding_what_any_producer_encodes_never_raises_anything_else(value):
    for body in encodings({"spec": value, "data": value, "name": value}):
        assert_only_decode_errors(body)


T0 = datetime(2026, 11, 24, tzinfo=UTC)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512) | st.sampled_from(sorted(CORPUS.values())))
def test_device_payloads_are_taken_or_rejected_never_raised(payload):
    registry = DeviceRegistry(offline_after=30, max_payload=2 * 2**20, clock=lambda: T0)
    for channel in ("telemetry", "status", "cmd"):
        assert registry.take("sensor-1", channel, payload) in (True, False)


def test_device_ids_beyond_the_cap_are_rejected_and_counted():
    registry = DeviceRegistry(offline_after=30, max_payload=1024, max_devices=3, clock=lambda: T0)
    assert [registry.take(f"s{i}", "telemetry", b'{"t": 1}') for i in range(5)] == [True] * 3 + [False] * 2
    assert registry.take("s0", "telemetry", b'{"t": 2}')  # a known device still reports
    assert len(registry.records()) == 3


def test_the_registry_holds_at_most_its_budget_of_last_values():
    registry = DeviceRegistry(offline_after=30, max_payload=2**16, max_values_bytes=100_000, clock=lambda: T0)
    reading = json.dumps({"blob": "x" * 30_000}).encode()
    assert [registry.take(f"s{i}", "telemetry", reading) for i in range(5)] == [True] * 3 + [False] * 2
    assert registry.take("s0", "telemetry", reading)  # replacing its own values: no growth
    assert not registry.take("s0", "status", reading)  # adding to them: over the budget
    assert registry.take("s3", "telemetry", b'{"t": 1}')  # small values still fit
    assert registry.values_bytes <= 100_000
    assert [r.id for r in registry.records()] == ["s0", "s1", "s2", "s3"]


def test_the_inventory_carries_the_most_devices_a_registry_holds_within_a_servers_max_payload():
    """10,000 devices inventing ids, or 20 sending 64 KiB statuses, must not make the edge's
    inventory larger than a server accepts (1 MB): it would stop reaching the hub at all."""
    registry = DeviceRegistry(offline_after=30, max_payload=2**16, max_devices=10_000, clock=lambda: T0)
    status = json.dumps({f"k{i}": "x" * 1900 for i in range(32)}).encode()  # ~61 KiB
    for i in range(20):
        assert registry.take(f"big-{i:02}", "status", status)
    for i in range(10_000 - 20):
        assert registry.take(f"s{i:05}", "telemetry", b'{"t": 21.5, "h": 40}')
    records = registry.records()
    snapshot = [r.model_dump(mode="json") for r in records]
    assert len(msgpack.packb(snapshot)) < 600_000
    assert records[0].id == "big-00"
    assert records[0].last_status is not None  # the first ones keep their values,
    assert records[19].last_status is None  # later ones come without those that do not fit,
    assert len(records) < 10_000  # and past the budget, not at all


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_facts_files_and_authored_documents_read_or_refuse_with_their_own_errors(name, tmp_path: Path):
    path = tmp_path / "input"
    path.write_bytes(CORPUS[name])
    with contextlib.suppress(FactsError):
        read_facts(path)
    with contextlib.suppress(ConfigError):
        load_mapping(path)


def test_a_facts_file_too_large_for_an_inventory_is_refused(tmp_path: Path):
    path = tmp_path / "facts.json"
    path.write_text(json.dumps({"rack": "b7", "notes": "x" * 70_000}))
    with pytest.raises(FactsError, match="keep it under"):
        read_facts(path)
    path.write_text(json.dumps({"rack": "b7"}))
    assert read_facts(path) == {"rack": "b7"}


def test_yaml_aliases_that_expand_to_billions_are_refused(tmp_path: Path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="more than"):
        load_mapping(path)
    lone = tmp_path / "lone.yaml"
    lone.write_text('name: "\\ud800"\n')
    with pytest.raises(ConfigError, match="surrogate"):
        load_mapping(lone)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested"):
        load_mapping(deep)


@pytest.mark.parametrize("name", sorted(NOT_MSGPACK))
def test_what_a_decoder_accepts_can_be_sent_on_as_msgpack(name):
    """A daemon re-encodes what it accepted (a profile into its ApplyResult, a reading into its
    inventory and telemetry events): an integer msgpack cannot hold, or a string UTF-8 cannot,
    would raise OverflowError or UnicodeEncodeError there, past every handler, so the decoder
    refuses them."""
    body = NOT_MSGPACK[name]
    for cls in MESSAGE_TYPES:
        with contextlib.suppress(DecodeError):
            encode_body(decode_body(cls, body, subject="fuzz"), MSGPACK)
    with pytest.raises(DecodeError, match=r"64 bits|surrogate"):
        load_json(body, what="x")
    registry = DeviceRegistry(offline_after=30, max_payload=2**20, clock=lambda: T0)
    assert not registry.take("sensor-1", "telemetry", body)
    assert not registry.take("sensor-1", "status", body)


@settings(max_examples=100, deadline=None)
@given(json_values)
@example(2**64)
@example("\ud800")
@example([-(2**63) - 1])
def test_every_value_a_decoder_accepts_encodes_again(value):
    for body in encodings({"spec": value, "data": value, "t": value}):
        for cls in MESSAGE_TYPES:
            with contextlib.suppress(DecodeError):
                message = decode_body(cls, body, subject="fuzz")
                encode_body(message, MSGPACK)
                encode_body(message, JSON)
        with contextlib.suppress(DecodeError):
            msgpack.packb(load_json(body, what="x"), use_bin_type=True)
