"""`fleetbus schema export` writes a JSON Schema per type; the checked-in copy is current."""

import json
from pathlib import Path

from schemas.catalog import MESSAGE_TYPES
from schemas.export import json_schemas
from tests.helpers import ROOT, run_cli


def test_schema_export_writes_one_valid_schema_per_type(tmp_path: Path):
    result = run_cli("schema", "export", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "out").glob("*.json"))
    assert [f.stem for f in files] == sorted(cls.schema_id() for cls in MESSAGE_TYPES)
    for path in files:
        schema = json.loads(path.read_text())
        assert schema["title"] == path.stem
        assert schema["$schema"].endswith("2020-12/schema")
        assert schema["type"] == "object"


def test_checked_in_schemas_are_current():
    committed = {p.stem: json.loads(p.read_text()) for p in (ROOT / "docs" / "schemas").glob("*.json")}
    assert committed == json_schemas(), "docs/schemas is stale: run `make schemas` and commit"


def test_checked_in_openapi_document_is_current():
    from hub.openapi import render  # noqa: PLC0415 - hub is a layer above what this file tests

    committed = (ROOT / "docs" / "api" / "openapi.json").read_text()
    assert committed == render(), "docs/api/openapi.json is stale: run `make schemas` and commit"
