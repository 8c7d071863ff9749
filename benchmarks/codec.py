"""Codec cost: fleetbus encode+decode of each message type vs plain msgpack of the same dict.

    .venv/bin/python benchmarks/codec.py [--seconds 0.5]

fleetbus's path is `schemas.codec.encode_body` (pydantic model -> JSON-mode dict -> msgpack)
and `decode_body` (msgpack -> dict -> validated model); the baseline packs and unpacks the
dict that `model_dump(mode="json")` gives for the same message, with no model on either side.
Also the full envelope (CloudEvents headers + body, `schemas.headers`). Per message, µs, and
the ratio. Not a test: numbers, appended to benchmarks/RESULTS.md.
"""

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import append_results, table
from edge.inventory import host_facts
from schemas.base import Message
from schemas.codec import decode_body, encode_body
from schemas.enrollment import Enrollment
from schemas.event import ApplyResult, ApplyStatus, Event, EventKind, Severity
from schemas.headers import envelope, open_envelope
from schemas.heartbeat import Heartbeat, Tier
from schemas.inventory import AppliedState, InventorySnapshot, LinkState, StreamBacklog
from schemas.override import Override, OverrideScope, OverrideTarget
from schemas.presence import PresenceChange, PresenceState
from schemas.profile import Component, LabelSelector, Profile, ProfileSpec

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LABELS = {"region": "eu", "env": "prod", "store-format": "large", "group": "pilot"}
REVISIONS = {"base": 12, "pos": 4, "pilot": 2}


def samples() -> list[Message]:
    """One realistic message of each type (sizes as a store's edge would send)."""
    applied = AppliedState(
        desired_hash="sha256:" + "ab" * 32, profile_revisions=REVISIONS, applied_at=NOW, driver="local"
    )
    return [
        Heartbeat(
            tier=Tier.EDGE,
            site="eu-store-0042",
            region="eu",
            seq=1234,
            sent_at=NOW,
            interval_seconds=5,
            uptime_seconds=86400.5,
        ),
        InventorySnapshot(
            region="eu",
            edge="eu-store-0042",
            seq=99,
            observed_at=NOW,
            labels=LABELS,
            host=host_facts(Path("/")),
            applied=applied,
            link=LinkState(upstream_connected=True, since=NOW - timedelta(hours=3)),
            backlog=[
                StreamBacklog(
                    stream=s,
                    pending=0,
                    oldest_age_seconds=0.0,
                    evicted=0,
                    evicted_unforwarded=0,
                    forwarded_seq=812,
                )
                for s in ("EVENTS", "INVENTORY")
            ],
            facts={"pos_lanes": 12, "fridge_count": 4, "site_manager": "A. Example"},
        ),
        Event(
            id="eu-store-0042-" + "f" * 32,
            kind=EventKind.APPLY_RESULT,
            region="eu",
            edge="eu-store-0042",
            observed_at=NOW,
            severity=Severity.INFO,
            message="applied sha256:abababababab",
            apply_result=ApplyResult(
                desired_hash="sha256:" + "ab" * 32,
                profile_revisions=REVISIONS,
                status=ApplyStatus.APPLIED,
                driver="local",
                duration_seconds=0.004,
                labels=LABELS,
                groups=["eu", "pilot"],
            ),
        ),
        Profile(
            name="pos",
            priority=10,
            revision=4,
            selector=LabelSelector(match_labels={"env": "prod"}),
            spec=ProfileSpec(
                components=[
                    Component(name=f"svc{i}", image=f"registry.example/svc{i}", version=f"1.{i}.0")
                    for i in range(5)
                ],
                config={
                    "log_level": "info",
                    "lanes": 12,
                    "features": {"offline_sales": True, "loyalty": False},
                },
            ),
        ),
        Override(
            target=OverrideTarget(scope=OverrideScope.EDGE, name="eu-store-0042"),
            patch={"config": {"log_level": "debug"}},
            owner="ops",
            reason="incident 42",
            created_at=NOW,
            expires_at=NOW + timedelta(hours=2),
        ),
        Enrollment(region="eu", edge="eu-store-0042", labels=LABELS, hostname="store-0042", requested_at=NOW),
        PresenceChange(
            region="eu",
            edge="eu-store-0042",
            state=PresenceState.ONLINE,
            previous=PresenceState.STALE,
            changed_at=NOW,
            last_seen=NOW,
        ),
    ]


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """µs per call of `fn`, best of 3 timed runs of about `seconds` each."""
    n, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds / 10:
        fn()
        n += 1
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(n * 10):
            fn()
        best = min(best, (time.perf_counter() - began) / (n * 10))
    return best * 1e6


def measure(message: Message, seconds: float) -> list[str]:
    cls = type(message)
    data = message.model_dump(mode="json")
    body = encode_body(message)
    raw = per_call(lambda: msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False), seconds)
    ours = per_call(lambda: decode_body(cls, encode_body(message), subject="s"), seconds)
    full = per_call(lambda: open_envelope(cls, *envelope(message, source="/bench"), subject="s"), seconds)
    return [
        cls.SCHEMA,
        str(len(body)),
        f"{raw:.1f}",
        f"{ours:.1f}",
        f"x{ours / raw:.1f}",
        f"{full:.1f}",
        f"x{full / raw:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = parser.parse_args()
    rows = [measure(message, args.seconds) for message in samples()]
    lines = ["Encode+decode per message (µs), fleetbus codec vs plain msgpack of the same dict:", ""]
    lines += table(["type", "bytes", "msgpack", "codec", "ratio", "codec+envelope", "ratio"], rows)
    append_results("Codec", lines)


if __name__ == "__main__":
    main()
