"""Enrollment: the edge asks its regional to admit it before its heartbeats count there.

A new edge first redeems its one-time token (`join`): it connects to its regional's client
port as the knock-only `join` user, sends the token with its public key and machine id, and
takes only an answer whose HMAC (keyed by the token) verifies, so nobody else can answer for
the regional. Once admitted, its server's leaf link (its own key) is let in, and it enrolls
over it as every edge does (`enroll`), under its own subjects.

The regional ignores (and counts) heartbeats from edges it has not enrolled, so a typo in an
edge id or a stray publisher never appears in the fleet's presence. The answer is remembered
in the state dir: a restarted edge heartbeats at once, and enrolls again in the background
(its labels may have changed).
"""

import asyncio
import json
from pathlib import Path

from fleetbus.errors import ConfigError, DecodeError, PermanentError
from fleetbus.nats.bus import Bus, connect
from fleetbus.nats.errors import TRANSIENT
from fleetbus.runtime import enrolltoken, log
from fleetbus.runtime.backoff import Backoff
from schemas import subjects
from schemas.base import utcnow
from schemas.enrollment import Enrollment, EnrollmentReply, JoinReply, JoinRequest

logger = log.get_logger(__name__)
# s an enrollment request waits for the regional: longer than its answer takes while a
# thousand edges start at once, so a slow answer is not asked for again (and again).
ENROLL_TIMEOUT = 5.0

MARKER = "enrolled.json"
JOINED = "joined.json"  # the token was redeemed: this edge's key is admitted
PENDING_POLL = 2.0  # seconds between asks while an operator has not approved the edge yet
JOIN_USER = "join"  # the regional's knock-only user (fleetbus.devfleet.identities.JOIN_USER)


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
            reply = await bus.request(
                subjects.edge_enroll(region, edge), request, EnrollmentReply, timeout=ENROLL_TIMEOUT
            )
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


def joined_before(state_dir: Path, token: str) -> bool:
    try:
        record = json.loads((state_dir / JOINED).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("token_id") == _token_id(token)


def _token_id(token: str) -> str:
    return enrolltoken.unverified_claims(token).token_id


def read_token(token: str | None, token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            return token_file.read_text().strip() or None
        except OSError as exc:
            msg = f"enroll_token_file {token_file}: {exc.strerror or exc}"
            raise ConfigError(msg) from exc
    return token.strip() if token else None


def machine_id(configured: str | None) -> str:
    if configured:
        return configured
    try:
        return Path("/etc/machine-id").read_text().strip()
    except OSError:
        return ""


async def join(
    token: str,
    *,
    region: str,
    edge: str,
    public_key: str,
    machine: str,
    url: str | None,
    state_dir: Path,
    ca: Path | None = None,
) -> None:
    """Redeem `token` at the regional until it admits this edge; `PermanentError` if it
    refuses (a refusal is final: it needs a new token). `ca` verifies the regional's
    certificate where its client port takes only TLS."""
    claims = enrolltoken.unverified_claims(token)
    if (claims.region, claims.edge) != (region, edge):
        msg = (
            f"the enrollment token is for edge {claims.edge!r} of region {claims.region!r}, "
            f"not {edge!r} of {region!r}"
        )
        raise ConfigError(msg)
    target = url or claims.url
    if not target:
        msg = "the enrollment token names no regional URL; set enroll_url to the regional's client port"
        raise ConfigError(msg)
    request = JoinRequest(
        region=region,
        edge=edge,
        token=token,
        public_key=public_key,
        machine_id=machine,
        requested_at=utcnow(),
    )

    def genuine(reply: JoinReply) -> bool:
        return reply.edge == edge and enrolltoken.proof_ok(token, reply.proof, *reply.proof_fields(request))

    bus = await connect(
        target,
        name=f"fleetbus-edge-{edge}-join",
        source=edge,
        user=JOIN_USER,
        password="",
        inbox_prefix=subjects.JOIN_INBOX,
        ca=ca,
    )
    backoff = Backoff(0.5, cap=10.0)
    try:
        while True:
            try:
                reply = await bus.request_first(
                    subjects.region_join(region, edge), request, JoinReply, genuine, timeout=3.0
                )
            except TRANSIENT as exc:
                reply, error = None, repr(exc)
            else:
                error = "no answer from the regional"
            if reply is None:
                logger.info("regional not answering the token yet; retrying", url=target, error=error)
                await backoff.wait()
                continue
            if reply.status == "refused":
                msg = f"regional {region!r} refused the enrollment token of edge {edge!r}: {reply.reason}"
                raise PermanentError(msg)
            if reply.status == "admitted":
                record = {"token_id": claims.token_id, "joined_at": utcnow().isoformat()}
                await asyncio.to_thread((state_dir / JOINED).write_text, json.dumps(record))
                logger.info("enrollment token redeemed: admitted", region=region)
                return
            logger.info("waiting for an operator: fleetbus edge approve", edge=edge, region=region)
            await asyncio.sleep(PENDING_POLL)  # poll interval while pending
    finally:
        await bus.close()
