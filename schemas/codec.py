"""Message bodies <-> bytes. msgpack by default, JSON accepted; `Content-Type` says which.

Decoding never lets a foreign exception escape: anything wrong with a body becomes a
`DecodeError` naming the subject, so a daemon can count it, log it and move on.
"""

import json
from typing import Any, TypeVar

import msgpack
from pydantic import ValidationError

from schemas.base import Message
from schemas.errors import DecodeError

MSGPACK = "application/msgpack"
JSON = "application/json"
CONTENT_TYPES = (MSGPACK, JSON)

M = TypeVar("M", bound=Message)


def _media_type(content_type: str | None, body: bytes = b"") -> str:
    """The media type a `Content-Type` names; without one (a KV value has no headers), what
    the body is: a JSON object starts with `{` (after blanks), a msgpack map never does."""
    if not content_type:
        return JSON if body.lstrip()[:1] == b"{" else MSGPACK
    return content_type.split(";", 1)[0].strip().lower()


def encode_body(message: Message, content_type: str = MSGPACK) -> bytes:
    data = message.model_dump(mode="json")
    media = _media_type(content_type)
    if media == MSGPACK:
        packed: bytes = msgpack.packb(data, use_bin_type=True)
        return packed
    if media == JSON:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    msg = f"unsupported content type {content_type!r}; use one of {', '.join(CONTENT_TYPES)}"
    raise ValueError(msg)


def _load(body: bytes, media: str) -> Any:
    if media == MSGPACK:
        return msgpack.unpackb(body, raw=False)
    if media == JSON:
        return json.loads(body)
    msg = f"unsupported content type {media!r}"
    raise ValueError(msg)


def _summarise(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "<body>"
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def decode_body(cls: type[M], body: bytes, *, subject: str, content_type: str | None = None) -> M:
    """Read `body` as a `cls`, or raise `DecodeError` naming `subject` and what was wrong."""
    media = _media_type(content_type, body)
    try:
        data = _load(body, media)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # msgpack raises ExtraData/FormatError/StackError (ValueError subclasses) and others;
        # json raises JSONDecodeError/UnicodeDecodeError (ValueError subclasses).
        raise DecodeError(subject, f"not valid {media}: {exc}") from exc
    if not isinstance(data, dict):
        raise DecodeError(subject, f"expected a map, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise DecodeError(subject, f"not a valid {cls.schema_id()}: {_summarise(exc)}") from exc
