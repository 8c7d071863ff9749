"""JSON Schema for every message type, for consumers that are not written in Python."""

import json
from pathlib import Path
from typing import Any

from schemas.catalog import MESSAGE_TYPES
from schemas.headers import dataschema


def json_schemas() -> dict[str, dict[str, Any]]:
    """Schema id -> JSON Schema (draft 2020-12), with the wire conventions noted in it."""
    out: dict[str, dict[str, Any]] = {}
    for cls in MESSAGE_TYPES:
        schema = cls.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = dataschema(cls)
        schema["title"] = cls.schema_id()
        schema["description"] = (
            (cls.__doc__ or "").strip().splitlines()[0]
            + " Unknown fields must be accepted; headers: ce-type="
            + cls.schema_id()
            + ", Content-Type application/msgpack (default) or application/json."
        )
        out[cls.schema_id()] = schema
    return out


def write_json_schemas(directory: Path) -> list[Path]:
    """Write `<schema id>.json` per message type into `directory`; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for schema_id, schema in json_schemas().items():
        path = directory / f"{schema_id}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
