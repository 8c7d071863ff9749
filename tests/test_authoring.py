"""Strict where people write, tolerant where machines talk.

An authored profile, override patch or settings file with a key its model does not know is
refused, naming the path and the closest valid key, before anything is published. The same
models still decode wire messages and KV values with unknown fields (a newer sender's)."""

import json
from pathlib import Path

import pytest
import yaml

from fleetbus.errors import ConfigError
from fleetbus.runtime.settings import EdgeSettings, load_settings
from fleetbus.sdk.client import FleetClient
from fleetbus.sdk.documents import load_document
from schemas.authoring import unknown_keys, unknown_patch_keys
from schemas.codec import decode_body, encode_body
from schemas.profile import Profile
from tests.conftest import admin_creds, hub_args, running_fleet
from tests.fleetprobe import applied_hash
from tests.helpers import arun_cli, eventually


def test_unknown_keys_are_named_by_path_with_the_closest_valid_key():
    typos = {
        "name": "base",
        "priorty": 5,
        "selector": {"match_lables": {"env": "dev"}},
        "spec": {
            "confg": {},
            "components": [{"name": "a", "verison": "1", "config": {"free": {"form": 1}}}],
            "telemetry": {"devices/+/telemetry": {"intervall": 3}},
            "config": {"anything": {"goes": ["here"]}},
        },
    }
    assert unknown_keys(Profile, typos) == [
        "priorty: unknown key; did you mean `priority`?",
        "selector.match_lables: unknown key; did you mean `match_labels`?",
        "spec.confg: unknown key; did you mean `config`?",
        "spec.components[0].verison: unknown key; did you mean `version`?",
        "spec.telemetry.devices/+/telemetry.intervall: unknown key; did you mean `interval`?",
    ]
    far = unknown_keys(Profile, {"name": "x", "zzzz": 1})
    assert far == [
        "zzzz: unknown key; valid keys: " + ", ".join(f"`{k}`" for k in sorted(Profile.model_fields))
    ]
    # Free-form parts stay free: config maps, raw manifests, label values.
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m"}, "data": {"k": "v"}}
    free = {
        "name": "ok",
        "spec": {"components": [{"name": "raw", "manifests": [manifest]}], "config": {"x": 1}},
    }
    assert unknown_keys(Profile, free) == []


def test_override_patches_are_checked_against_the_desired_document():
    assert unknown_patch_keys({"config": {"ntp": "x"}, "components": {"agent": {"version": "2"}}}) == []
    assert unknown_patch_keys({"components": {"agent": None}}) == []  # removes the component
    assert unknown_patch_keys({"confg": {}, "components": {"agent": {"verison": "2"}}}) == [
        "confg: unknown key; did you mean `config`?",
        "components.agent.verison: unknown key; did you mean `version`?",
    ]


def test_wire_messages_keep_unknown_fields_for_forward_compatibility():
    profile = Profile.model_validate({"name": "base", "spec": {"config": {"a": 1}}})
    wire = json.loads(encode_body(profile, "application/json"))
    wire["added_by_a_newer_release"] = {"x": 1}
    wire["spec"]["also_new"] = True
    decoded = decode_body(Profile, json.dumps(wire).encode(), subject="$KV.profiles.base")
    assert decoded.name == "base"
    assert decoded.model_extra == {"added_by_a_newer_release": {"x": 1}}


def test_an_authored_file_with_a_typo_is_refused_before_validation(tmp_path: Path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump({"name": "base", "selector": {"match_lables": {"env": "dev"}}}))
    with pytest.raises(
        ConfigError, match=r"selector.match_lables: unknown key; did you mean `match_labels`\?"
    ):
        load_document(path, Profile)


def test_settings_typos_name_the_closest_setting(tmp_path: Path):
    config = tmp_path / "edge.toml"
    config.write_text('site = "r1-e1"\nregion = "r1"\nheartbeat_intervall = 3\n')
    with pytest.raises(
        ConfigError, match="heartbeat_intervall: unknown setting; did you mean `heartbeat_interval`"
    ):
        load_settings(EdgeSettings, config)


@pytest.mark.slow
async def test_the_cli_refuses_typos_publishes_nothing_and_says_what_a_profile_selects(tmp_path):
    async with (
        running_fleet(tmp_path, regions=1, edges=2) as fleet,
        await FleetClient.connect(
            fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan)
        ) as client,
    ):
        hub = hub_args(fleet.plan)
        for edge in ("r1-e1", "r1-e2"):
            await eventually(lambda e=edge: applied_hash(client, e), timeout=30, what=f"{edge} reporting")
        typo = tmp_path / "typo.yaml"
        typo.write_text("name: typo\nselector:\n  match_lables: {env: dev}\npriorty: 5\n")
        refused = await arun_cli("profile", "apply", "-f", str(typo), *hub)
        assert refused.returncode == 2, refused.stdout
        assert "selector.match_lables: unknown key; did you mean `match_labels`?" in refused.stderr
        assert "priorty: unknown key; did you mean `priority`?" in refused.stderr
        assert [p.name for p in await client.profiles.all()] == []  # nothing published

        patch = tmp_path / "patch.json"
        patch.write_text('{"confg": {"ntp": "x"}}')
        refused = await arun_cli("override", "set", "r1-e1", "-f", str(patch), "--reason", "typo", *hub)
        assert refused.returncode == 2
        assert "confg: unknown key; did you mean `config`?" in refused.stderr

        one = tmp_path / "one.yaml"
        one.write_text("name: one\nselector:\n  match_labels: {region: r1}\nspec:\n  config: {a: 1}\n")
        dry = await arun_cli("profile", "apply", "-f", str(one), "--dry-run", *hub)
        assert dry.returncode == 0, dry.stderr
        assert "profile 'one' would select 2 of 2 edges the hub knows now" in dry.stdout
        none = tmp_path / "none.yaml"
        none.write_text("name: none\nselector:\n  match_labels: {region: r9}\n")
        applied = await arun_cli("profile", "apply", "-f", str(none), *hub)
        assert applied.returncode == 0, applied.stderr
        assert "profile 'none' selects 0 of 2 edges the hub knows now" in applied.stdout
