"""The regional's admission desk: redeem enrollment tokens, approve, revoke, list.

Decisions are `fleetbus.core.admission`'s; this module verifies token signatures, keeps the
registry in the admission files its server includes (`fleetbus.runtime.admission`), makes the
server reload them and closes a revoked edge's link (`fleetbus.nats.sysadmin`), and records
each decision as an `audit` event in the region's EVENTS stream.
"""

import asyncio
import contextlib
import uuid
from pathlib import Path

from fleetbus.core import admission as core
from fleetbus.core.admission import Registry
from fleetbus.errors import FleetbusError, TemporaryError
from fleetbus.nats.bus import Bus, Msg
from fleetbus.nats.sysadmin import ServerControl
from fleetbus.runtime import enrolltoken, log
from fleetbus.runtime.admission import regional_files
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.settings import RegionalSettings
from schemas import subjects
from schemas.base import utcnow
from schemas.enrollment import AdmissionCommand, AdmissionReply, AdmittedEdge, JoinReply, JoinRequest
from schemas.event import Event, EventKind, Severity

logger = log.get_logger(__name__)


def listing(registry: Registry) -> list[AdmittedEdge]:
    return [
        AdmittedEdge(
            edge=edge, status=status, machine_id=entry.machine_id, public_key=entry.nkey, since=entry.at
        )
        for status, entries in (
            ("admitted", registry.admitted),
            ("pending", registry.pending),
            ("revoked", registry.revoked),
        )
        for edge, entry in sorted(entries.items())
    ]


class AdmissionDesk:
    def __init__(self, bus: Bus, settings: RegionalSettings, directory: Path, metrics: DaemonMetrics) -> None:
        self.bus, self.settings, self.metrics = bus, settings, metrics
        self.region = settings.region
        self.files = regional_files(directory, self.region)
        self.issuers = frozenset(settings.enroll_issuers)
        self.lock = asyncio.Lock()  # one change of the registry at a time
        self.control: ServerControl | None = None

    async def start(self) -> None:
        registry = self.files.registry()  # a clear error now if it is unreadable
        if self.settings.system_creds is None:
            logger.warning("no system_creds: revoked edges stay linked until their server reconnects")
        else:
            self.control = await ServerControl.connect(
                self.settings.nats_url,
                self.settings.system_creds,
                name=f"fleetbus-regional-{self.region}-system",
                source=self.region,
                ca=self.settings.nats_ca,
            )
            await self.control.start()
        # The server admits what the registry says, whatever happened before a crash.
        async with self.lock:
            await self._apply(registry, registry)
        await self.bus.subscribe(subjects.region_join(self.region), JoinRequest, self.on_join)
        await self.bus.subscribe(subjects.region_admission(self.region), AdmissionCommand, self.on_command)

    async def close(self) -> None:
        if self.control is not None:
            await self.control.close()

    async def _apply(self, registry: Registry, before: Registry) -> None:
        """Make the server admit exactly `registry`'s admitted keys; if its server cannot be
        made to reload, put `before` back (the caller's retry then finds the same state)."""
        try:
            await asyncio.to_thread(self.files.write, registry)
            if self.control is not None:
                await self.control.reload()
        except (TemporaryError, OSError) as exc:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.files.write, before)
            msg = f"the regional's server did not take the change: {exc}"
            raise TemporaryError(msg) from exc

    async def _drop(self, nkey: str) -> list[int]:
        return await self.control.drop(nkey) if self.control is not None else []

    async def _audit(self, what: str, edge: str, **data: str) -> None:
        event = Event(
            id=uuid.uuid4().hex,
            kind=EventKind.AUDIT,
            region=self.region,
            edge=edge,
            severity=Severity.INFO,
            message=f"regional {self.region}: edge {edge} {what}",
            data={"action": what, "by": f"regional {self.region}", **data},
            observed_at=utcnow(),
        )
        try:
            # Stored in the region's EVENTS as the edge's own (the thin-edge path), so the
            # hub's event view shows it with the edge's other events.
            subject = subjects.outbox_event(self.region, edge, EventKind.AUDIT)
            await self.bus.js_publish(subject, event, message_id=event.id)
        except Exception as exc:  # the decision stands; its record is best effort
            logger.warning("audit event not stored", edge=edge, action=what, error=repr(exc))

    async def on_join(self, request: JoinRequest, msg: Msg) -> None:
        subject_edge = msg.subject.rsplit(".", 1)[-1]

        def answer(status: str, reason: str = "") -> JoinReply:
            reply = JoinReply(region=self.region, edge=request.edge, status=status, reason=reason)
            reply.proof = enrolltoken.reply_proof(request.token, *reply.proof_fields(request))
            return reply

        if msg.reply is None or not msg.reply.startswith(f"{subjects.JOIN_INBOX}."):
            logger.warning("token redemption ignored: not asked from a join inbox", reply=msg.reply)
            return
        try:
            status, reason = await self._redeem(request, subject_edge)
        except (TemporaryError, OSError) as exc:  # no answer: the edge asks again
            logger.warning("token redemption not applied; the edge will ask again", error=str(exc))
            return
        reply = answer(status, reason)
        self.metrics.enrollments.labels(outcome=f"join_{reply.status}").inc()
        logger.info("token redemption answered", edge=request.edge, status=reply.status, reason=reply.reason)
        await self.bus.respond(msg, reply)

    async def _redeem(self, request: JoinRequest, subject_edge: str) -> tuple[str, str]:
        if subject_edge != request.edge:
            return "refused", f"asked on the join subject of {subject_edge!r} for edge {request.edge!r}"
        try:
            claims = enrolltoken.verify(request.token, self.issuers)
            enrolltoken.user_key(request.public_key)
        except (enrolltoken.TokenError, ValueError) as exc:
            return "refused", str(exc)
        async with self.lock:
            base = await asyncio.to_thread(self.files.base)
            if request.public_key in {u.nkey for u in base}:
                return "refused", "that key is one of the regional's own identities"
            before = await asyncio.to_thread(self.files.registry)
            after, decided = core.redeem(
                before,
                claims,
                region=self.region,
                edge=request.edge,
                nkey=request.public_key,
                machine_id=request.machine_id,
                policy=self.settings.enroll_policy,
                max_edges=self.settings.max_edges,
                now=utcnow(),
            )
            if after != before:
                await self._apply(after, before)
                old = before.admitted.get(request.edge)
                if old is not None and old.nkey != request.public_key:
                    # Re-enrolled with a new key: the old key's link goes (it is refused anyway
                    # from its next connection; a failed kick is no reason to withhold the answer).
                    try:
                        await self._drop(old.nkey)
                    except TemporaryError as exc:
                        logger.warning("the old key's link was not closed", edge=request.edge, error=str(exc))
                await self._audit(f"redeemed a token: {decided.status}", request.edge, token=claims.token_id)
        return decided.status, decided.reason

    async def on_command(self, command: AdmissionCommand, msg: Msg) -> None:
        try:
            reply = await self._command(command)
        except (core.AdmissionError, FleetbusError, OSError) as exc:
            reply = AdmissionReply(region=self.region, ok=False, reason=str(exc))
        await self.bus.respond(msg, reply)

    async def _command(self, command: AdmissionCommand) -> AdmissionReply:
        if command.action == "list":
            registry = await asyncio.to_thread(self.files.registry)
            return AdmissionReply(
                region=self.region,
                ok=True,
                edges=listing(registry),
                enroll_url=self.settings.enroll_url or "",
            )
        if not command.edge:
            raise core.AdmissionError(f"{command.action} needs an edge")
        edge = command.edge
        if command.action == "issued":
            expires = command.expires.isoformat() if command.expires else ""
            await self._audit(
                "token issued", edge, operator=command.sent_by, token=command.token_id, expires=expires
            )
            return AdmissionReply(region=self.region, ok=True)
        async with self.lock:
            registry = await asyncio.to_thread(self.files.registry)
            if command.action == "approve":
                await self._apply(core.approve(registry, edge), registry)
                await self._audit("approved", edge, operator=command.sent_by)
                return AdmissionReply(region=self.region, ok=True)
            if registry.status(edge) == "revoked":
                updated, entry = registry, registry.revoked[edge]  # asked again: apply it again
            else:
                updated, entry = core.revoke(registry, edge, utcnow())
            await self._apply(updated, registry)
        kicked = await self._drop(entry.nkey)
        await self._audit("revoked", edge, operator=command.sent_by)
        reason = (
            f"{len(kicked)} link(s) closed"
            if self.control
            else "no system_creds: its link stays until it drops"
        )
        return AdmissionReply(region=self.region, ok=True, reason=reason)


__all__ = ["AdmissionDesk"]
