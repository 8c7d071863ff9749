"""Subjects are built in one place, pin each edge to its own scope, and never overlap."""

import re
from pathlib import Path

import pytest

from schemas import subjects
from tests.helpers import ROOT


def test_every_edge_subject_is_inside_its_scope():
    scope = subjects.edge_scope("r1", "r1-e1").removesuffix(">")
    for subject in (
        subjects.edge_heartbeat("r1", "r1-e1"),
        subjects.edge_event("r1", "r1-e1", "apply_result"),
        subjects.edge_command("r1", "r1-e1", "ping"),
        subjects.edge_events("r1", "r1-e1"),
    ):
        assert subject.startswith(scope), subject
    assert subjects.regional_heartbeat("r1").startswith(subjects.region_scope("r1").removesuffix(">"))
    # The one exception: an edge's inventory subject is its key in the hub's bucket, and
    # still names the edge (so it is still the edge's own).
    assert subjects.edge_inventory("r1", "r1-e1") == "$KV.inventory.r1.r1-e1"


def test_two_edges_never_share_a_local_stream_subject():
    # The double-store trap: two domains binding a stream to one subject both store it.
    a = subjects.edge_events("r1", "e1").removesuffix(">")
    b = subjects.edge_events("r1", "e2").removesuffix(">")
    assert not a.startswith(b)
    assert not b.startswith(a)
    assert subjects.edge_inventory("r1", "e1") != subjects.edge_inventory("r2", "e1")


@pytest.mark.parametrize("bad", ["", "R1", "r1.e1", "r1*", ">", "a b", "-x"])
def test_ids_that_would_break_a_subject_are_refused(bad):
    with pytest.raises(ValueError, match="not a valid id"):
        subjects.edge_heartbeat("r1", bad)


def test_daemons_build_no_subject_strings_of_their_own():
    """Every `fleet.` subject literal lives in schemas/subjects.py."""
    offenders = []
    for package in ("fleetbus", "hub", "regional", "edge"):
        for path in (ROOT / package).rglob("*.py"):
            for number, line in enumerate(Path(path).read_text().splitlines(), 1):
                if re.search(r"""["']fleet\.[a-z*>]""", line) and "fleet.json" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
