"""Packaging hygiene: one version, a licence file matching the declared licence, type markers,
nats-py as a range, and an image that installs the extras its tiers use."""

import tomllib
from importlib.metadata import metadata, requires, version
from pathlib import Path

import fleetbus

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_once():
    assert "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fleetbus.__version__"}
    assert version("fleetbus") == fleetbus.__version__


def test_the_licence_file_matches_the_declared_licence():
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert metadata("fleetbus")["License"] == "Apache-2.0"


def test_every_package_is_marked_typed():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for package in ("schemas", "fleetbus", "hub", "regional", "edge"):
        assert (ROOT / package / "py.typed").is_file(), package
        assert "py.typed" in data[package], package


def test_nats_py_is_a_range_that_sdk_users_can_share():
    nats = [r for r in requires("fleetbus") or [] if r.startswith("nats-py")]
    assert len(nats) == 1
    assert "<3" in nats[0]
    assert ">=2.16" in nats[0]
    assert "==" not in nats[0]


def test_the_image_installs_the_extras_its_tiers_need():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "pip install --no-cache-dir '.[k8s,mqtt]'" in dockerfile
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"k8s", "mqtt"} <= set(extras)
