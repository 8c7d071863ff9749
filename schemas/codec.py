"""Message bodies <-> bytes. msgpack by default, JSON accepted; `Content-Type` says which.

Decoding never lets a foreign exception escape: anything wrong with a body becomes a
`DecodeError` naming the subject, so a daemon can count it, log it and move on. That holds for
any byte string: a body nested thousands of levels deep (3 KB of JSON made `json.loads` raise
`RecursionError`), or deeper than fleetbus's own code walks (`MAX_DEPTH`), a NaN or infinite
number, or more values than `MAX_NODES` are each refused as
undecodable, before any model or merge sees them. The same checks serve every other reader of
untrusted bytes (device payloads, facts files, authored documents): `load_json`, `check_tree`.
"""

import json
import math
import re
from typing import Any, TypeVar

import msgpack
from pydantic import ValidationError

from schemas.base import Message
from schemas.errors import DecodeError

MSGPACK = "application/msgpack"
JSON = "application/json"
CONTENT_TYPES = (MSGPACK, JSON)

M = TypeVar("M", bound=Message)

# Deeper than any fleetbus message or document needs (a Kubernetes manifest inside a profile
# is ~15 levels), shallow enough for every recursive walk (merge patches, hashing, rendering).
MAX_DEPTH = 64
# Values (maps, lists, scalars) in one body: a 1 MB message holds at most ~500k; a YAML
# document of nested aliases ("billion laughs") would expand to far more.
MAX_NODES = 1_000_000


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
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    if media == JSON:
        return _json_loads(body)
    msg = f"unsupported content type {media!r}"
    raise ValueError(msg)


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def _json_loads(text: str | bytes) -> Any:
    """`json.loads`, refusing a lone UTF-16 surrogate (`"\\ud800"`): JSON may spell one and
    Python keeps it in a str, but no UTF-8 encoder takes it again (msgpack, json, a file), so a
    daemon sending on a reading it accepted would raise there, past every handler."""
    data = json.loads(text, parse_constant=_not_json)
    spelt = _SURROGATE_BYTES.search(text) if isinstance(text, bytes) else _SURROGATE.search(text)
    # Rare (an emoji spelt as an escaped pair is fine), so only then look at every string.
    if spelt and (problem := check_text(data)):
        raise ValueError(problem)
    return data


def check_text(data: Any) -> str | None:
    """Why a string in `data` (keys included) is not text UTF-8 can encode, or None: a lone
    UTF-16 surrogate, which JSON (`"\\ud800"`) and YAML escapes can spell."""
    try:
        json.dumps(data, ensure_ascii=False, default=str).encode()
    except UnicodeEncodeError:
        return "a string holds a lone UTF-16 surrogate, which is not text"
    return None


def _not_json(constant: str) -> Any:
    msg = f"{constant} is not a JSON number"
    raise ValueError(msg)


def check_tree(data: Any, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> str | None:
    """Why `data` (decoded JSON, msgpack or YAML) is not a tree fleetbus accepts, or None:
    nested deeper than `max_depth`, more than `max_nodes` values, a number that is not
    finite or an integer beyond 64 bits (a map key that is not a string is validation's to
    refuse). Level by level, so no input can exhaust the stack. On every decode: it adds
    19-32 % (0.7-6.5 us) to decoding a typical body (heartbeat to profile;
    `benchmarks/codec.py`'s samples, measured before the integer check, which adds ~0.05 us
    per integer: 0.3 us to a heartbeat-sized map, timeit)."""
    level, depth, nodes = [data], 1, 0
    while level:
        nodes += len(level)
        if nodes > max_nodes:
            return f"more than {max_nodes:,} values"
        below: list[Any] = []
        for node in level:
            kind = type(node)
            if kind in _LEAVES:
                continue
            if kind is int:
                if not INT_MIN <= node <= INT_MAX:
                    return f"an integer of {node.bit_length()} bits does not fit in 64 bits"
            elif isinstance(node, dict):  # keys: JSON's are strings, msgpack's (strict) str or bytes
                below.extend(node.values())
            elif isinstance(node, list | tuple):
                below.extend(node)
            elif isinstance(node, float) and not math.isfinite(node):
                return f"{node} is not a finite number"
        if below and depth >= max_depth:
            return f"nested deeper than {max_depth} levels"
        level, depth = below, depth + 1
    return None


# Not int: what a daemon accepted it may send on as msgpack (a reading in its inventory, a
# profile's config in its ApplyResult), and msgpack holds integers of 64 bits only.
_LEAVES = frozenset((str, bool, type(None), bytes))  # nothing to look into
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


def load_json(text: str | bytes, *, what: str) -> Any:
    """Parse untrusted JSON into a tree that passes `check_tree`, or raise `DecodeError`
    naming `what` (a subject, a file)."""
    try:
        data = _json_loads(text)
    except RecursionError as exc:
        raise DecodeError(what, "not valid JSON: nested too deeply to read") from exc
    except (ValueError, TypeError) as exc:
        raise DecodeError(what, f"not valid JSON: {exc}") from exc
    if problem := check_tree(data):
        raise DecodeError(what, f"refused: {problem}")
    return data


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
    except RecursionError as exc:  # json recurses per level of nesting
        raise DecodeError(subject, f"not valid {media}: nested too deeply to read") from exc
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # msgpack raises ExtraData/FormatError/StackError (ValueError subclasses) and others;
        # json raises JSONDecodeError/UnicodeDecodeError (ValueError subclasses).
        raise DecodeError(subject, f"not valid {media}: {exc}") from exc
    if not isinstance(data, dict):
        raise DecodeError(subject, f"expected a map, got {type(data).__name__}")
    if problem := check_tree(data):
        raise DecodeError(subject, f"refused: {problem}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise DecodeError(subject, f"not a valid {cls.schema_id()}: {_summarise(exc)}") from exc
