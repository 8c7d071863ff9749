"""The hub's desk: the one writer of desired state (docs/architecture.md#one-writer).

Operators' clients send signed `DeskRequest`s on `fleet.hub.desk`. For each, the desk:

1. authenticates: the `Fleetbus-Signature` header is the named operator's ed25519 signature
   over the body as sent, the operator is registered (bootstrap `admins`/`viewers` in the
   hub's settings, or its admission file `operators.json`) and not revoked, the request was issued within
   `FRESH` of now and its nonce was not seen before (a replayed request is refused);
2. authorizes with `fleetbus.core.roles`;
3. does it with the stores, which sign what they write (`fleetbus.runtime.signing.Signer`);
4. records an `AuditRecord` in AUDIT (allowed, refused or failed) and answers.

Requests are handled one at a time (one subscription), so the stores' compare-and-set never
races another writer here. Only the hub's own identity may write the desired-state buckets:
operators' permissions at the hub's server leave them out (`fleetbus.core.permissions`).
"""

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import JsonValue, ValidationError

from fleetbus.core import roles, rollout
from fleetbus.core import secrets as secret_refs
from fleetbus.errors import ConfigError, ConflictError, MissingError, RefusedError, TemporaryError
from fleetbus.nats.bus import Bus, Msg
from fleetbus.nats.errors import TRANSIENT
from fleetbus.nats.kv import Bucket, Mirror
from fleetbus.nats.provisioning import BucketSpec, ensure_bucket, ensure_stream
from fleetbus.nats.streams import local_stream
from fleetbus.nats.sysadmin import ServerControl
from fleetbus.runtime import apitoken, log, signing
from fleetbus.runtime.admission import AdmissionFiles, Operators, hub_files
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.sealing import MAX_SECRET, SealError
from fleetbus.runtime.settings import HubSettings
from fleetbus.runtime.signing import Signer, Verifier
from fleetbus.sdk.documents import STAMPS, Plan
from fleetbus.sdk.stores import OverrideStore, ProfileStore
from hub.rollouts import Rollouts
from schemas import subjects
from schemas.base import check_token, utcnow
from schemas.codec import JSON, encode_body
from schemas.desk import AuditRecord, DeskNonce, DeskReply, DeskRequest, OperatorRecord, Role
from schemas.headers import SIGNATURE, open_envelope
from schemas.override import OverrideScope
from schemas.presence import PresenceChange
from schemas.profile import Profile
from schemas.secret import SecretRecord

logger = log.get_logger(__name__)
OPERATORS_RETRY = 1.0  # s before a hub daemon tries again to make its server admit the operators

FRESH = timedelta(minutes=2)  # how far a request's issued_at may be from the hub's clock
NONCES_KEPT = 2 * FRESH + timedelta(seconds=10)  # past any request still fresh, clocks apart too
ANONYMOUS = "anonymous"
DAY = 24 * 3600


def audit_stream() -> Any:
    return local_stream(
        subjects.AUDIT_STREAM,
        "Every write request the hub's desk handled: who, what, why, when, and the outcome.",
        subjects=[subjects.hub_audit()],
        max_age_s=365 * DAY,
        max_bytes=1 * 2**30,
    )


class DeniedError(Exception):
    """A request refused: `why` goes to the caller and the audit trail."""

    def __init__(self, why: str, *, actor: str = "", role: str = "") -> None:
        super().__init__(why)
        self.why, self.actor, self.role = why, actor, role


Done = tuple[dict[str, JsonValue], str, int | None, str]  # result, target, revision, detail


class Desk:
    def __init__(
        self,
        bus: Bus,
        settings: HubSettings,
        metrics: DaemonMetrics,
        signer: Signer | None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.bus, self.metrics, self.signer, self.clock = bus, metrics, signer, clock
        self.insecure = settings.desk_insecure
        self.bootstrap = {
            **{
                key: OperatorRecord(
                    name=name, public_key=key, role=Role.VIEWER, added_by="settings", added_at=NEVER
                )
                for name, key in settings.viewers.items()
            },
            **{
                key: OperatorRecord(
                    name=name, public_key=key, role=Role.ADMIN, added_by="settings", added_at=NEVER
                )
                for name, key in settings.admins.items()
            },
        }
        js = bus.js
        # The hub takes from its own buckets only what it signed (with its key now, or one a
        # rotation retires): a record injected there is skipped, never signed again.
        guard = Verifier([signer.key_id, *settings.trusted_keys], track=False) if signer else None
        self.profiles = ProfileStore(js, signer=signer, guard=guard)
        self.overrides = OverrideStore(js, signer=signer, guard=guard)
        self.secrets = Bucket(js, subjects.SECRETS_BUCKET, SecretRecord, signer=signer, guard=guard)
        self.settings = settings
        self.files = hub_files(settings.admission_dir) if settings.admission_dir else None
        self.control: ServerControl | None = None
        self.rollouts: Rollouts | None = None  # the hub daemon's rollout controller
        self.presence = Bucket(js, subjects.PRESENCE_BUCKET, PresenceChange)
        self.operators = Bucket(js, subjects.OPERATORS_BUCKET, OperatorRecord)
        self.nonces = Bucket(js, subjects.NONCES_BUCKET, DeskNonce)
        self.handlers: dict[str, Callable[[DeskRequest, OperatorRecord], Awaitable[Done]]] = {
            "whoami": self._whoami,
            "trust": self._trust,
            "profile.apply": self._profile_apply,
            "profile.rollback": self._profile_rollback,
            "profile.delete": self._profile_delete,
            "rollout.status": self._rollout_status,
            "rollout.pause": self._rollout_operate,
            "rollout.resume": self._rollout_operate,
            "rollout.abort": self._rollout_operate,
            "rollout.promote": self._rollout_operate,
            "override.set": self._override_set,
            "override.remove": self._override_remove,
            "operator.add": self._operator_add,
            "operator.revoke": self._operator_revoke,
            "operator.ls": self._operator_ls,
            "token.create": self._token_create,
            "keys.resign": self._keys_resign,
            "secret.set": self._secret_set,
            "secret.rm": self._secret_rm,
            "secret.ls": self._secret_ls,
        }

    async def provision(self) -> None:
        audit = audit_stream()
        audit.num_replicas = self.settings.replicas
        await ensure_stream(self.bus.js, audit)
        nonces = BucketSpec(
            subjects.NONCES_BUCKET,
            replicas=self.settings.replicas,
            ttl=NONCES_KEPT.total_seconds(),
            description="Nonces of the desk requests seen lately: a replay is refused by every hub daemon.",
        )
        await ensure_bucket(self.bus.js, nonces)
        if self.files is not None:
            kept = await asyncio.to_thread(self.files.registry)  # a clear error now if it is unreadable
            if kept.operators and not await self.operators.keys():
                # Operators added before they were kept in the bucket: the bucket takes them.
                for name, record in kept.operators.items():
                    await self.operators.put(name, record)
        if self.settings.system_creds is not None and self.control is None:
            self.control = await ServerControl.connect(
                self.settings.nats_url,
                self.settings.system_creds,
                name="fleetbus-hub-system",
                source=self.settings.site,
                ca=self.settings.nats_ca,
            )
            await self.control.start()
        if self.signer is None:
            logger.warning(
                "UNSIGNED desired state: the hub has no signing key; verifying edges refuse what it writes"
            )
        if self.insecure:
            logger.warning("INSECURE desk: unsigned requests are taken as an admin's (debugging only)")

    async def follow_operators(self) -> None:
        """In every hub daemon: make its own server admit the operators the `operators`
        bucket holds (a clustered hub's desk writes them there; each node has its own files),
        and close revoked ones' connections to it."""
        files, control = self.files, self.control
        if files is None or control is None:
            return
        mirror = Mirror(self.operators)
        changed = asyncio.Event()
        mirror.listen(lambda _c: changed.set())
        following = asyncio.create_task(mirror.run(), name="operators-mirror")
        try:
            while True:
                await changed.wait()
                changed.clear()
                try:
                    await _render_operators(files, control, Operators(operators=dict(mirror.values)))
                except (TemporaryError, *TRANSIENT) as exc:
                    # Its own server is down (this daemon goes on through another node): the
                    # files are written; its server reads them when it starts. Try again.
                    logger.warning("operators not admitted here yet; retrying", error=repr(exc))
                    await asyncio.sleep(OPERATORS_RETRY)  # a retry interval
                    changed.set()
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following

    async def serve(self) -> None:
        """Answer requests until cancelled: only the daemon holding the hub's lease does
        (docs/clustering.md#leases), so one desk at a time writes."""
        sub = await self.bus.nc.subscribe(subjects.HUB_DESK, queue="desk", cb=self.on_request)
        try:
            await asyncio.Event().wait()  # until the lease is lost or the daemon stops
        finally:
            with contextlib.suppress(*TRANSIENT):
                await sub.unsubscribe()

    async def close(self) -> None:
        if self.control is not None:
            await self.control.close()

    # Authentication

    async def _registry(self) -> Operators:
        """The operators added at run time: the `operators` bucket, the truth for every node."""
        if self.files is None:
            return Operators()
        return Operators(operators={record.name: record for record in await self.operators.values()})

    async def _operator(self, key: str) -> OperatorRecord | None:
        if key in self.bootstrap:
            return self.bootstrap[key]
        for record in (await self._registry()).operators.values():
            if record.public_key == key and record.revoked_at is None:
                return record
        return None

    async def authenticate(
        self, request: DeskRequest, headers: dict[str, str], body: bytes
    ) -> OperatorRecord:
        now = self.clock()
        signature = headers.get(SIGNATURE)
        if signature is None and not request.operator:
            if self.insecure:
                return OperatorRecord(
                    name=ANONYMOUS, public_key="", role=Role.ADMIN, added_by="desk_insecure", added_at=now
                )
            msg = "unsigned request: connect with an operator's credentials (--creds)"
            raise DeniedError(msg)
        if not signature or not signing.verify(request.operator, body, signature):
            msg = "the request's signature does not verify"
            raise DeniedError(msg)
        if abs(now - request.issued_at) > FRESH:
            raise DeniedError(
                f"the request was issued at {request.issued_at.isoformat()}, more than {FRESH} from the "
                "hub's clock: check both clocks"
            )
        await self._first_seen(request, now)
        record = await self._operator(request.operator)
        if record is None:
            raise DeniedError(f"{request.operator} is not an operator the hub knows (or it was revoked)")
        return record

    async def _first_seen(self, request: DeskRequest, now: datetime) -> None:
        """Record the request's nonce, or refuse the request if it was seen: in the replicated
        `nonces` bucket, created only if absent, so every daemon of a clustered hub (the one
        holding the lease after a failover too) refuses a replay. Kept `NONCES_KEPT`, longer
        than a request stays fresh."""
        key = hashlib.sha256(request.nonce.encode()).hexdigest()
        try:
            await self.nonces.update(key, DeskNonce(operator=request.operator, seen_at=now), last=0)
        except ConflictError:
            msg = "a replayed request (its nonce was seen before)"
            raise DeniedError(msg) from None

    # The request loop

    async def on_request(self, msg: Msg) -> None:
        try:
            reply = await self.handle(msg.data, dict(msg.headers or {}))
        except Exception as exc:  # a desk that stops answering stops every write
            logger.exception("desk request failed", error=repr(exc))
            reply = DeskReply(ok=False, error_kind="failed", error=f"the hub failed: {exc!r}")
        await self.bus.respond(msg, reply)

    async def handle(self, body: bytes, headers: dict[str, str]) -> DeskReply:
        try:
            request = open_envelope(DeskRequest, body, headers, subject=subjects.HUB_DESK)
        except Exception as exc:
            self.metrics.desk_requests.labels(op="?", outcome="malformed").inc()
            return DeskReply(ok=False, error_kind="config", error=f"not a desk request: {exc}")
        op = request.op if request.op in roles.OPS else "unknown"  # a metric label: bounded
        actor, role = "", ""
        try:
            who = await self.authenticate(request, headers, body)
            actor, role = who.name, who.role.value
            await self._authorize(request, who)
            result, target, revision, detail = await self.handlers[op](request, who)
        except DeniedError as exc:
            await self._audit(request, actor or f"unverified ({exc.why})", role, "refused", exc.why)
            self.metrics.desk_requests.labels(op=op, outcome="refused").inc()
            return DeskReply(ok=False, error_kind="forbidden", error=exc.why, actor=actor)
        except (ConfigError, MissingError, ConflictError, RefusedError) as exc:
            kind = {ConflictError: "conflict", MissingError: "missing", RefusedError: "refused"}.get(
                type(exc), "config"
            )
            await self._audit(request, actor, role, "failed", str(exc))
            self.metrics.desk_requests.labels(op=op, outcome="failed").inc()
            return DeskReply(ok=False, error_kind=kind, error=str(exc), actor=actor)
        except Exception as exc:  # a request nothing above expected: still audited, still answered
            logger.exception("desk request failed", op=op, actor=actor)
            await self._audit(request, actor, role, "failed", f"the hub failed: {type(exc).__name__}")
            self.metrics.desk_requests.labels(op=op, outcome="failed").inc()
            return DeskReply(
                ok=False, error_kind="failed", error=f"the hub failed: {type(exc).__name__}", actor=actor
            )
        await self._audit(request, actor, role, "ok", detail, target=target, revision=revision)
        self.metrics.desk_requests.labels(op=op, outcome="ok").inc()
        return DeskReply(ok=True, actor=actor, result=result)

    async def _authorize(self, request: DeskRequest, who: OperatorRecord) -> None:
        scope = target_region = None
        if request.op in roles.OVERRIDE_WRITES:
            scope, name = _scope(request.args), _text(request.args, "name")
            try:
                check_token(name)
            except ValueError as exc:
                raise ConfigError(f"override target: {exc}") from None
            if scope == "edge":
                # The regions the hub hears this edge from; not exactly one: no region it
                # may be scoped to (a region claiming another's edge id makes it ambiguous).
                regions = {key.split(".")[0] for key in await self.presence.live_keys(f"*.{name}")}
                target_region = regions.pop() if len(regions) == 1 else None
        why = roles.forbidden(who.role, who.regions, request.op, scope=scope, target_region=target_region)
        if why:
            raise DeniedError(why, actor=who.name, role=who.role.value)

    async def _audit(
        self,
        request: DeskRequest,
        actor: str,
        role: str,
        outcome: str,
        detail: str,
        *,
        target: str = "",
        revision: int | None = None,
    ) -> None:
        if request.op in roles.READS and outcome == "ok":
            return  # reads leave no trail
        record = AuditRecord(
            at=self.clock(),
            actor=actor,
            role=role,
            op=request.op,
            target=target or _target(request),
            revision=revision,
            outcome=outcome,
            detail=detail[:4000],
            reason=request.reason,
        )
        op = request.op if request.op in roles.OPS else "unknown"
        await self.bus.js.publish(
            subjects.hub_audit(op), encode_body(record, JSON), stream=subjects.AUDIT_STREAM
        )

    # Operations

    async def _whoami(self, _request: DeskRequest, who: OperatorRecord) -> Done:
        return {"name": who.name, "role": who.role.value, "regions": list(who.regions)}, "", None, ""

    async def _trust(self, _request: DeskRequest, _who: OperatorRecord) -> Done:
        return {"keys": [self.signer.key_id] if self.signer else []}, "", None, ""

    async def _profile_apply(self, request: DeskRequest, who: OperatorRecord) -> Done:
        try:
            profile = Profile.model_validate(request.args.get("profile"))
            secret_refs.check_refs(profile.spec.model_dump(mode="json"), where="spec")
        except ValidationError as exc:
            raise ConfigError(f"not a profile: {exc.errors()[0]['msg']}") from None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        expect = request.args.get("expect_revision")
        wanted = expect if isinstance(expect, int) and not isinstance(expect, bool) else None
        plan = await self._store(profile, who, wanted)
        return _plan(plan), f"profile {profile.name}", plan.new.revision if plan.changed else None, plan.diff

    async def _store(
        self, profile: Profile, who: OperatorRecord, expect: int | None, *, immediate: bool = False
    ) -> Plan:
        """Store `profile` as its next revision; one carrying `rollout` gets its rollout's
        state first (`immediate`: complete at once), so no regional sees it without one."""
        plan = await self.profiles.plan(profile, actor=who.name)
        current = plan.current.revision or 0 if plan.current else 0
        if expect is not None and expect != current:
            msg = (
                f"profile {profile.name!r} is at revision {current}, not {expect}: "
                "someone changed it; review `fleetbus profile diff` and apply again"
            )
            raise ConflictError(msg)
        if self.rollouts is not None:
            return await self.rollouts.store(profile, actor=who.name, expect=current, immediate=immediate)
        if plan.changed and plan.new.rollout is not None:
            msg = "this hub runs no rollout controller; apply the profile without `rollout`"
            raise ConfigError(msg)
        return await self.profiles.apply(profile, actor=who.name, expect_revision=current)

    async def _profile_rollback(self, request: DeskRequest, who: OperatorRecord) -> Done:
        name, to = _text(request.args, "name"), request.args.get("to")
        if not isinstance(to, int) or isinstance(to, bool):
            msg = "rollback needs `to`, a revision number"
            raise ConfigError(msg)
        old = await self.profiles.get(name, to)
        plan = await self._store(old.model_copy(update=dict.fromkeys(STAMPS)), who, None, immediate=True)
        return _plan(plan), f"profile {name}", plan.new.revision if plan.changed else None, plan.diff

    async def _profile_delete(self, request: DeskRequest, _who: OperatorRecord) -> Done:
        name = _text(request.args, "name")
        profile = await self.profiles.delete(name)
        return (
            {"profile": profile.model_dump(mode="json")},
            f"profile {name}",
            None,
            f"deleted at revision {profile.revision}",
        )

    def _controller(self) -> Rollouts:
        if self.rollouts is None:
            msg = "this hub runs no rollout controller"
            raise ConfigError(msg)
        return self.rollouts

    async def _rollout_status(self, request: DeskRequest, _who: OperatorRecord) -> Done:
        """The newest rollout of a profile (or of `revision`), with each wave's progress as
        the hub sees the edges now."""
        name, revision = _text(request.args, "name"), request.args.get("revision")
        controller = self._controller()
        state = await controller.latest(name, revision if isinstance(revision, int) else None)
        result: dict[str, JsonValue] = {
            "state": state.model_dump(mode="json"),
            "progress": [
                p.as_json() for p in rollout.progress(state, controller.observed(state), self.clock())
            ],
            "exit_code": rollout.exit_code(state),
            "at": self.clock().isoformat(),
        }
        return result, f"rollout {state.key}", state.revision, ""

    async def _rollout_operate(self, request: DeskRequest, who: OperatorRecord) -> Done:
        op = request.op.removeprefix("rollout.")
        state = await self._controller().operate(_text(request.args, "name"), op, actor=who.name)
        return {"state": state.model_dump(mode="json")}, f"rollout {state.key}", state.revision, op

    async def _override_set(self, request: DeskRequest, who: OperatorRecord) -> Done:
        scope, name = OverrideScope(_scope(request.args)), _text(request.args, "name")
        patch = request.args.get("patch")
        if not isinstance(patch, dict):
            msg = "override.set needs `patch`, an object"
            raise ConfigError(msg)
        try:
            secret_refs.check_refs(patch, where="patch")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        expires = request.args.get("expires_at")
        try:
            expires_at = datetime.fromisoformat(expires) if isinstance(expires, str) else None
        except ValueError:
            msg = f"expires_at {expires!r} is not an ISO time"
            raise ConfigError(msg) from None
        if expires_at is not None and expires_at.tzinfo is None:
            msg = f"expires_at {expires!r} names no time zone"
            raise ConfigError(msg)
        stored = await self.overrides.set(
            scope,
            name,
            patch,
            owner=who.name,
            reason=request.reason,
            expires_at=expires_at,
            now=self.clock(),
        )
        return (
            {"key": stored.key, "override": stored.override.model_dump(mode="json")},
            stored.key,
            None,
            str(patch),
        )

    async def _override_remove(self, request: DeskRequest, _who: OperatorRecord) -> Done:
        scope, name = OverrideScope(_scope(request.args)), _text(request.args, "name")
        await self.overrides.remove(scope, name)
        return {}, subjects.override_key(scope.value, name), None, "removed"

    async def _operator_add(self, request: DeskRequest, who: OperatorRecord) -> Done:
        try:
            record = OperatorRecord(
                name=_text(request.args, "name"),
                public_key=signing.check_keys([_text(request.args, "public_key")], field="public_key")[0],
                role=Role(_text(request.args, "role")),
                regions=request.args.get("regions") or [],
                added_by=who.name,
                added_at=self.clock(),
            )
        except (ValidationError, ValueError) as exc:
            msg = f"cannot add that operator: {exc}"
            raise ConfigError(msg) from None
        registry = await self._registry()
        current = registry.operators.get(record.name)
        if (current is not None and current.revoked_at is None) or record.name in self._bootstrap_names:
            msg = f"there is already an operator {record.name!r}; revoke it first"
            raise ConflictError(msg)
        if await self._operator(record.public_key) is not None:
            msg = "that key is already another operator's"
            raise ConflictError(msg)
        await self._admit(Operators(operators={**registry.operators, record.name: record}), registry)
        return record.model_dump(mode="json"), f"operator {record.name}", None, f"role {record.role.value}"

    @property
    def _bootstrap_names(self) -> set[str]:
        return {record.name for record in self.bootstrap.values()}

    async def _admit(self, registry: Operators, before: Operators) -> None:
        """Make the hub's server admit exactly `registry`'s operators (with the bootstrap
        ones); put `before` back if it cannot reload (a retry then finds the same state)."""
        if self.files is None or self.control is None:
            msg = (
                "this hub keeps no operators of its own (no admission_dir and system_creds): "
                "list operators in its admins and viewers settings instead"
            )
            raise ConfigError(msg)
        await asyncio.to_thread(self.files.write, registry)
        try:
            await self.control.reload()
        except TemporaryError as exc:
            # This daemon's own node is down (it goes on through another): that server reads
            # the files when it starts; the other nodes render the bucket below.
            logger.warning(
                "own hub node not reloaded; it reads the operators when it starts", error=repr(exc)
            )
        except Exception:
            await asyncio.to_thread(self.files.write, before)
            raise
        # The truth for every node: each hub daemon renders it for its own server.
        for name, record in registry.operators.items():
            if before.operators.get(name) != record:
                await self.operators.put(name, record)

    async def _operator_revoke(self, request: DeskRequest, _who: OperatorRecord) -> Done:
        name = _text(request.args, "name")
        if name in self._bootstrap_names:
            msg = f"operator {name!r} is set in the hub's settings (admins, viewers): remove it there"
            raise ConfigError(msg)
        registry = await self._registry()
        current = registry.operators.get(name)
        if current is None or current.revoked_at is not None:
            msg = f"no operator named {name!r}; `fleetbus operator ls` lists them"
            raise MissingError(msg)
        record = current.model_copy(update={"revoked_at": self.clock()})
        await self._admit(Operators(operators={**registry.operators, name: record}), registry)
        closed = await self.control.drop_clients(record.public_key) if self.control else []
        detail = f"revoked; {len(closed)} connection(s) closed"
        return record.model_dump(mode="json"), f"operator {name}", None, detail

    async def _keys_resign(self, _request: DeskRequest, who: OperatorRecord) -> Done:
        """Every current profile and override stored again, signed with the hub's key now:
        the step of a key rotation after the hub switched keys (docs/security.md)."""
        if self.signer is None:
            msg = "this hub has no signing_key to sign with"
            raise ConfigError(msg)
        profiles = [p.name for p in await self.profiles.all()]
        for name in profiles:
            if self.rollouts is not None:
                await self.rollouts.resign(name, actor=who.name)
            else:
                await self.profiles.resign(name, actor=who.name)
        overrides = [o.key for o in await self.overrides.all()]
        for key in overrides:
            await self.overrides.resign(key)
        detail = f"{len(profiles)} profile(s) and {len(overrides)} override(s) signed by {self.signer.key_id}"
        result: dict[str, JsonValue] = {
            "key": self.signer.key_id,
            "profiles": len(profiles),
            "overrides": len(overrides),
        }
        return result, "desired state", None, detail

    async def _token_create(self, request: DeskRequest, who: OperatorRecord) -> Done:
        if self.signer is None:
            msg = "this hub has no signing_key, so its dashboard takes no tokens (and asks for none)"
            raise ConfigError(msg)
        seconds = request.args.get("expires_seconds")
        if not isinstance(seconds, int) or not 0 < seconds <= 366 * DAY:
            msg = "token.create needs `expires_seconds`, a whole number of seconds up to a year"
            raise ConfigError(msg)
        try:
            role = Role(_text(request.args, "role"))
        except ValueError:
            msg = f"no role {request.args.get('role')!r}: admin, operator or viewer"
            raise ConfigError(msg) from None
        regions = request.args.get("regions") or []
        if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
            msg = "token.create's `regions` is a list of region ids"
            raise ConfigError(msg)
        try:
            scoped = [check_token(str(r)) for r in regions]
        except ValueError as exc:
            raise ConfigError(f"region: {exc}") from None
        expires = self.clock() + timedelta(seconds=seconds)
        token, claims = apitoken.mint(
            self.signer, role=role, expires=expires, issued_by=who.name, regions=scoped
        )
        where = f" of regions {', '.join(claims.regions)}" if claims.regions else ""
        # Never the token itself.
        detail = f"{role.value} token{where} {claims.token_id}, valid until {expires.isoformat()}"
        return {"token": token, **claims.model_dump(mode="json")}, f"token {claims.token_id}", None, detail

    async def _secret_set(self, request: DeskRequest, who: OperatorRecord) -> Done:
        """Store a secret the operator's client sealed to this hub's key: it must open with
        it (so a value sealed to a retired key is refused now, not at the edges), and is
        kept sealed; nothing here or in the audit trail holds its plaintext."""
        if self.signer is None:
            msg = "this hub has no signing key, so it keeps no secrets (it runs --insecure)"
            raise ConfigError(msg)
        name = _text(request.args, "name")
        try:
            check_token(name)
        except ValueError as exc:
            raise ConfigError(f"secret name: {exc}") from None
        sealed, sealed_to = _text(request.args, "sealed"), _text(request.args, "sealed_to")
        if sealed_to != self.signer.key_id:
            msg = (
                f"the value is sealed to {sealed_to[:12]}…, but this hub's key is "
                f"{self.signer.key_id[:12]}…: seal it again (`fleetbus secret set` does)"
            )
            raise ConfigError(msg)
        try:
            size = len(self.signer.open(sealed))
        except SealError as exc:
            raise ConfigError(f"the sealed value does not open with this hub's key: {exc}") from None
        if size > MAX_SECRET:
            msg = f"a secret holds at most {MAX_SECRET} bytes, not {size}"
            raise ConfigError(msg)
        # Versions only grow, across a `secret rm` too (its delete is signed one above the
        # last version): an edge holding version n of an old value must see a new number.
        entries, _ = await self.secrets.snapshot(name)
        last = entries[0] if entries else None
        version = (last.signed_revision or 0) + 1 if last else 1
        record = SecretRecord(
            name=name,
            version=version,
            sealed=sealed,
            sealed_to=sealed_to,
            updated_by=who.name,
            updated_at=self.clock(),
        )
        await self.secrets.update(name, record, last=last.revision if last else 0, revision=version)
        detail = f"version {record.version} (the value is sealed; it is recorded nowhere)"
        return {"name": name, "version": record.version}, f"secret {name}", record.version, detail

    async def _secret_rm(self, request: DeskRequest, _who: OperatorRecord) -> Done:
        name = _text(request.args, "name")
        current = await self.secrets.get(name)
        if current is None or current.value is None:
            raise MissingError(f"there is no secret {name!r} (`fleetbus secret ls` lists them)")
        await self.secrets.delete(name, revision=current.value.version + 1)
        return {}, f"secret {name}", None, f"removed at version {current.value.version}"

    async def _secret_ls(self, _request: DeskRequest, _who: OperatorRecord) -> Done:
        records = sorted(await self.secrets.values(), key=lambda r: r.name)
        rows: list[JsonValue] = [r.model_dump(mode="json", exclude={"sealed"}) for r in records]
        return {"secrets": rows}, "", None, ""

    async def _operator_ls(self, _request: DeskRequest, _who: OperatorRecord) -> Done:
        records = [*self.bootstrap.values(), *(await self._registry()).operators.values()]
        return {"operators": [r.model_dump(mode="json") for r in records]}, "", None, ""


NEVER = datetime.fromisoformat("2000-01-01T00:00:00+00:00")


def _text(args: dict[str, JsonValue], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"the request needs `{name}`, a string")
    return value


def _scope(args: dict[str, JsonValue]) -> str:
    scope = _text(args, "scope")
    if scope not in {s.value for s in OverrideScope}:
        raise ConfigError(f"scope {scope!r} is neither edge nor group")
    return scope


def _target(request: DeskRequest) -> str:
    args = request.args
    if request.op.startswith("override.") and isinstance(args.get("scope"), str):
        return f"{args['scope']}.{args.get('name')}"
    if isinstance(name := args.get("name"), str):
        return f"{request.op.split('.')[0]} {name}"
    if isinstance(profile := args.get("profile"), dict) and isinstance(profile.get("name"), str):
        return f"profile {profile['name']}"
    return ""


def _plan(plan: Plan) -> dict[str, JsonValue]:
    return {
        "current": plan.current.model_dump(mode="json") if plan.current else None,
        "new": plan.new.model_dump(mode="json"),
        "diff": plan.diff,
    }


async def _render_operators(
    files: AdmissionFiles[Operators], control: ServerControl, registry: Operators
) -> None:
    """Make this daemon's own server admit `registry`'s operators (if its files say otherwise)
    and close revoked operators' connections to it."""
    if registry == await asyncio.to_thread(files.registry):
        return
    await asyncio.to_thread(files.write, registry)
    await control.reload()
    for record in registry.operators.values():
        if record.revoked_at is not None:
            await control.drop_clients(record.public_key)
    admitted = sorted(name for name, record in registry.operators.items() if record.revoked_at is None)
    logger.info("operators admitted here", operators=admitted)
