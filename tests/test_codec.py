"""The wire contract: every type round-trips, readers tolerate the future, garbage is typed."""

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.catalog import MESSAGE_TYPES
from schemas.codec import JSON, MSGPACK, decode_body, encode_body
from schemas.errors import DecodeError
from schemas.headers import CE_ID, CE_TYPE, CONTENT_TYPE, NATS_MSG_ID, envelope, open_envelope
from schemas.heartbeat import Heartbeat
from tests.strategies import BY_TYPE


def test_every_message_type_has_a_strategy_and_a_versioned_schema_id():
    assert set(BY_TYPE) == set(MESSAGE_TYPES)
    ids = [cls.schema_id() for cls in MESSAGE_TYPES]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("fleet.") and i.rsplit(".", 1)[1] == "v1" for i in ids)


@pytest.mark.parametrize("content_type", [MSGPACK, JSON])
@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_round_trip(cls, content_type):
    @settings(max_examples=60, deadline=None)
    @given(BY_TYPE[cls])
    def check(message):
        body = encode_body(message, content_type)
        decoded = decode_body(cls, body, subject="fleet.test", content_type=content_type)
        assert decoded == message
        assert decoded.model_dump(mode="json") == message.model_dump(mode="json")

    check()


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(MESSAGE_TYPES).flatmap(BY_TYPE.__getitem__), st.sampled_from([MSGPACK, JSON]))
def test_envelope_round_trip_and_headers(message, content_type):
    body, headers = envelope(message, source="/fleet/test", content_type=content_type)
    assert headers[CE_TYPE] == message.schema_id()
    assert headers[NATS_MSG_ID] == headers[CE_ID]
    assert headers[CONTENT_TYPE] == content_type
    assert open_envelope(type(message), body, headers, subject="fleet.x") == message


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(MESSAGE_TYPES).flatmap(BY_TYPE.__getitem__))
def test_unknown_fields_are_accepted_and_kept(sample):
    cls = type(sample)
    data = sample.model_dump(mode="json") | {"added_in_v1_7": {"nested": [1, 2]}}
    for content_type, body in ((MSGPACK, msgpack.packb(data)), (JSON, json.dumps(data).encode())):
        decoded = decode_body(cls, body, subject="fleet.future", content_type=content_type)
        assert decoded.model_dump(mode="json")["added_in_v1_7"] == {"nested": [1, 2]}
        # A relay re-encodes what it received, unknown field included.
        assert decode_body(cls, encode_body(decoded), subject="s").model_dump(mode="json") == data


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=64), content_type=st.sampled_from([MSGPACK, JSON, None]))
def test_garbage_body_raises_a_decode_error_naming_the_subject(body, content_type):
    subject = "fleet.edge.r1.e1.hb"
    with pytest.raises(DecodeError) as caught:
        decode_body(Heartbeat, body, subject=subject, content_type=content_type)
    assert caught.value.subject == subject
    assert subject in str(caught.value)


def test_wrong_shape_names_the_field():
    body = msgpack.packb({"tier": "edge", "site": "e1", "region": "r1", "seq": -1})
    with pytest.raises(DecodeError, match=r"seq: Input should be greater than or equal to 0"):
        decode_body(Heartbeat, body, subject="fleet.x")


@settings(max_examples=5, deadline=None)
@given(BY_TYPE[Heartbeat])
def test_unknown_content_type_and_foreign_ce_type_are_refused(message):
    body, headers = envelope(message, source="/t")
    with pytest.raises(DecodeError, match="unsupported content type"):
        open_envelope(Heartbeat, body, {**headers, CONTENT_TYPE: "text/xml"}, subject="s")
    with pytest.raises(DecodeError, match=r"ce-type is 'fleet.heartbeat.v2'"):
        open_envelope(Heartbeat, body, {**headers, CE_TYPE: "fleet.heartbeat.v2"}, subject="s")


@settings(max_examples=5, deadline=None)
@given(BY_TYPE[Heartbeat])
def test_content_type_parameters_are_ignored(message):
    body = encode_body(message, JSON)
    assert (
        decode_body(Heartbeat, body, subject="s", content_type="application/json; charset=utf-8") == message
    )


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.SCHEMA)
@settings(max_examples=20)
@given(data=st.data())
def test_without_content_type_the_body_says_what_it_is(cls, data):
    """KV values carry no headers: JSON (as the hub stores profiles) and msgpack (events
    sourced into `applied`) must both decode without one."""
    message = data.draw(BY_TYPE[cls])
    for content_type in (MSGPACK, JSON):
        body = encode_body(message, content_type)
        assert decode_body(cls, body, subject="s") == message
    assert decode_body(cls, b"\n  " + encode_body(message, JSON), subject="s") == message
