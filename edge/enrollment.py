"""Enrollment: the edge asks its regional to admit it before its heartbeats count there.

The regional ignores (and counts) heartbeats from edges it has not enrolled, so a typo in an
edge id or a stray publisher never appears in the fleet's presence. The answer is remembered
in the state dir: a restarted edge heartbeats at once, and enrolls again in the background
(its labels may have changed).
"""

import asyncio
import json
from pathlib import Path

from fleetbus.errors import DecodeError, PermanentError
from fleetbus.nats.bus import Bus
from fleetbus.nats.errors import TRANSIENT
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff
from schemas import subjects
from schemas.base import utcnow
from schemas.enrollment import Enrollment, EnrollmentReply

logger = log.get_logger(__name__)

MARKER = "enrolled.json"


def _remember(state_dir: Path, region: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / MARKER).write_text(json.dumps({"region": region, "enrolled_at": utcnow().isoformat()}))


def enrolled_before(state_dir: Path, region: str) -> bool:
    try:
        record = json.loads((state_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("region") == region


async def enroll(
    bus: Bus, *, region: str, edge: str, labels: dict[str, str], state_dir: Path
) -> EnrollmentReply:
    """Ask until the regional answers (the link may be down); raise `PermanentError` if it
    refuses, since retrying a refusal changes nothing."""
    request = Enrollment(region=region, edge=edge, labels=labels, hostname="", requested_at=utcnow())
    backoff = Backoff(0.2, cap=10.0)
    while True:
        try:
            reply = await bus.request(subjects.region_enroll(region), request, EnrollmentReply, timeout=2.0)
        except (*TRANSIENT, DecodeError) as exc:
            logger.info("regional not answering enrollment yet; retrying", region=region, error=repr(exc))
            await backoff.wait()
            continue
        if not reply.accepted:
            msg = f"regional {region!r} refused to enroll edge {edge!r}: {reply.reason}"
            raise PermanentError(msg)
        await asyncio.to_thread(_remember, state_dir, region)
        logger.info("enrolled", region=region)
        return reply
