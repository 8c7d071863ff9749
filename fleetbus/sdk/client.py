"""The Python API for people and tools that drive a fleet from outside: `FleetClient`.

    async with await FleetClient.connect("nats://127.0.0.1:4222") as fleet:   # or $FLEETBUS_HUB_URL
        plan = await fleet.profiles.apply(Profile(name="base", ...), reason="why")
        print(plan.new.revision, plan.diff)
        for row in await fleet.compliance():
            print(row.edge, row.state)

`fleet.profiles` and `fleet.overrides` read the hub's buckets and write through the hub's
desk, signed with the operator's key (`fleetbus.sdk.desk`); `explain()` and `compliance()`
compute with the same pure function the edges use.

Dashboards read the fleet as streams that first yield the current state, then each change:

    async for snap in fleet.watch_inventory(region="r1"):    # InventorySnapshot
    async for row in fleet.watch_presence():                 # EdgePresence
    async for event in fleet.watch_events(kinds=["apply_result"]):   # Event

Each is an async generator: leave the loop (or `aclose()` it) to stop its consumer.

Nothing waits forever: `connect()` raises `HubUnreachableError` within `timeout` seconds
(default $FLEETBUS_TIMEOUT, else 5), every JetStream request has the same deadline, and a
hub lost for that long closes the connection; leaving `async with` then raises
`HubUnreachableError` instead of returning what was half read.
"""

import asyncio
import math
import os
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import JsonValue

from fleetbus.core.compliance import EdgeCompliance, assess
from fleetbus.core.desired import DesiredState, compute, edge_groups
from fleetbus.core.rollout import Earlier, under_rollouts
from fleetbus.core.views import EdgePresence, EdgeStatus, edge_presence, fleet_status
from fleetbus.errors import (
    ConfigError,
    EdgeUnreachableError,
    HubUnreachableError,
    MissingError,
    RefusedError,
    ServerUnreachableError,
)
from fleetbus.nats import forget
from fleetbus.nats.bus import Bus, JetStream, connect_within, unreachable_reason
from fleetbus.nats.errors import NO_ANSWER, UNANSWERED, jetstream_silent
from fleetbus.nats.forget import ForgetResult
from fleetbus.nats.kv import Bucket, Entry
from fleetbus.nats.streams import account_summary, follow_stream, read_stream
from fleetbus.runtime import log
from fleetbus.runtime.identity import seed_of
from fleetbus.sdk.desk import DeskClient, Overrides, Profiles, Rollouts, Secrets
from fleetbus.sdk.stores import OverrideStore, ProfileStore
from schemas import subjects
from schemas.base import Message, check_token, utcnow
from schemas.desk import AuditRecord
from schemas.device import DeviceCommand, DeviceCommandReply, DeviceCredentials
from schemas.enrollment import AdmissionCommand, AdmissionReply
from schemas.event import Event
from schemas.inventory import InventorySnapshot
from schemas.presence import PresenceChange, PresenceState
from schemas.profile import Profile
from schemas.rollout import RolloutState
from schemas.secret import SecretRecord
from schemas.subjects import HUB_DOMAIN

logger = log.get_logger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=Message)

HUB_URL_ENV = "FLEETBUS_HUB_URL"
CREDS_ENV = "FLEETBUS_CREDS"
CA_ENV = "FLEETBUS_CA"
TIMEOUT_ENV = "FLEETBUS_TIMEOUT"
DEFAULT_TIMEOUT = 5.0


def resolve_timeout(timeout: float | None = None) -> float:
    """`timeout`, else $FLEETBUS_TIMEOUT, else 5 seconds."""
    text = str(timeout) if timeout is not None else os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        source = "timeout" if timeout is not None else TIMEOUT_ENV
        msg = f"{source} must be a number of seconds > 0, got {text!r}"
        raise ConfigError(msg)
    return value


def resolve_creds(creds: Path | str | None = None) -> Path | None:
    """`creds`, else $FLEETBUS_CREDS, else None (connect without an identity)."""
    return _path_or_env(creds, CREDS_ENV)


def resolve_ca(ca: Path | str | None = None) -> Path | None:
    """`ca`, else $FLEETBUS_CA, else None (a hub whose client port takes only TLS refuses)."""
    return _path_or_env(ca, CA_ENV)


def _path_or_env(value: Path | str | None, env: str) -> Path | None:
    if value:
        return Path(value)
    found = os.environ.get(env)
    return Path(found) if found else None


def resolve_hub_url(hub: str | None = None) -> str:
    """`hub`, else $FLEETBUS_HUB_URL, else `ConfigError` saying how to give one."""
    if hub:
        return hub
    if env := os.environ.get(HUB_URL_ENV):
        return env
    msg = f"no hub given: pass its URL (nats://HOST:PORT) or set {HUB_URL_ENV}"
    raise ConfigError(msg)


@dataclass(frozen=True)
class HubInfo:
    url: str
    domain: str | None
    streams: int
    storage_bytes: int
    buckets: tuple[str, ...]


class FleetClient:
    """A connection to the hub's nats-server, speaking fleetbus."""

    def __init__(
        self, bus: Bus, url: str, *, timeout: float = DEFAULT_TIMEOUT, operator_seed: str | None = None
    ) -> None:
        self.bus = bus
        self.url = url
        self.timeout = timeout
        js = bus.jetstream(HUB_DOMAIN, timeout=timeout)
        self.desk = DeskClient(bus, url, operator_seed, timeout=timeout)
        self.profiles = Profiles(ProfileStore(js), self.desk)
        self.overrides = Overrides(OverrideStore(js), self.desk)
        self.secrets = Secrets(self.desk)
        self.rollouts = Rollouts(self.desk)
        self._secrets = Bucket(js, subjects.SECRETS_BUCKET, SecretRecord)
        self._inventory = Bucket(js, subjects.INVENTORY_BUCKET, InventorySnapshot)
        self._applied = Bucket(js, subjects.APPLIED_BUCKET, Event)
        self._regions = Bucket(js, subjects.REGIONS_BUCKET, PresenceChange)
        self._presence = Bucket(js, subjects.PRESENCE_BUCKET, PresenceChange)

    @classmethod
    async def connect(
        cls,
        hub: str | None = None,
        *,
        timeout: float | None = None,
        persistent: bool = False,
        creds: Path | str | None = None,
        ca: Path | str | None = None,
    ) -> "FleetClient":
        """Connect to the hub (`hub`, else $FLEETBUS_HUB_URL) within
        `timeout` seconds ($FLEETBUS_TIMEOUT, else 5), else `HubUnreachableError`, as the
        identity in `creds` (else $FLEETBUS_CREDS): an nkey seed file or a JWT .creds file.
        `ca` (else $FLEETBUS_CA) is the fleet CA's certificate, which verifies the hub's
        where its client port takes only TLS.

        Each request has the same deadline. A lost connection is retried for that long and
        then closed, ending what waits on it; a `persistent` client (a program that outlives
        hub restarts: a dashboard, a test suite) retries for as long as it runs."""
        url = resolve_hub_url(hub)
        seconds = resolve_timeout(timeout)
        creds_path = resolve_creds(creds)
        try:
            bus = await connect_within(
                url,
                name="fleetbus-client",
                source="/fleet/client",
                timeout=seconds,
                persistent=persistent,
                creds=creds_path,
                ca=resolve_ca(ca),
            )
        except ServerUnreachableError as exc:
            raise HubUnreachableError(url, exc.reason) from exc
        return cls(bus, url, timeout=seconds, operator_seed=seed_of(creds_path))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lost = self.bus.closed  # nats-py gave up reconnecting: what was read may be partial
        await self.close()
        if isinstance(exc, UNANSWERED) or (lost and exc is None):
            raise self._lost(exc) from exc

    def _lost(self, exc: BaseException | None) -> HubUnreachableError:
        if exc is not None and jetstream_silent(exc):
            reason = "its JetStream (domain 'hub') does not answer"
        elif isinstance(exc, TimeoutError):
            reason = f"no answer within {self.timeout:g} s"
        else:
            error = self.bus.last_error
            why = f" ({unreachable_reason(error, self.timeout)})" if error else ""
            reason = f"the connection was lost and not regained within {self.timeout:g} s{why}"
        return HubUnreachableError(self.url, reason)

    async def close(self) -> None:
        await self.bus.close(timeout=self.timeout)

    async def audit(self, *, since: datetime) -> list[AuditRecord]:
        """The hub's audit trail from `since` on: every write request its desk handled."""
        return await read_stream(
            self._js, subjects.AUDIT_STREAM, subjects.hub_audit(), AuditRecord, since=since
        )

    async def secret_versions(self) -> dict[str, int]:
        """The current version of each secret (what `explain` and compliance pin references to)."""
        return {r.name: r.version for r in await self._secrets.values()}

    async def hub_keys(self) -> tuple[str, ...]:
        """The hub's desired-state signing keys (public nkeys), which edges pin."""
        return await self.desk.hub_keys()

    async def hub_info(self) -> HubInfo:
        summary = await account_summary(self._js)
        return HubInfo(
            url=self.url,
            domain=summary.domain,
            streams=summary.streams,
            storage_bytes=summary.storage_bytes,
            buckets=summary.buckets,
        )

    async def reports(self) -> list[Event]:
        """The last ApplyResult event of every edge that reported (hub bucket `applied`); a bad
        one is skipped (the edge's next report replaces it)."""
        return await self._applied.values()

    async def report(self, edge: str) -> Event | None:
        for event in await self.reports():
            if event.edge == edge:
                return event
        return None

    async def explain(
        self,
        edge: str,
        *,
        labels: Mapping[str, str] | None = None,
        region: str | None = None,
        now: datetime | None = None,
    ) -> tuple[DesiredState, Event | None]:
        """The desired state of `edge` as the hub computes it, with the layer behind each value.

        Labels and groups come from the edge's last report; pass `labels` (and `region`) to
        explain an edge that has not reported, or a what-if.
        """
        report = await self.report(edge)
        if labels is None:
            if report is None or report.apply_result is None:
                msg = (
                    f"edge {edge!r} has not reported to the hub yet, so its labels are unknown; "
                    "pass --label KEY=VALUE (and --region) to explain it for given labels"
                )
                raise MissingError(msg)
            labels, groups = report.apply_result.labels, report.apply_result.groups
        else:
            home = region or (report.region if report else None)
            groups = edge_groups(home, labels) if home else []
        profiles = await self.profiles.all()
        overrides = [o.override for o in await self.overrides.all()]
        rollouts, earlier = await self._rollouts(profiles)
        chosen, notes = under_rollouts(profiles, rollouts, earlier, edge, labels)
        desired = compute(
            chosen,
            labels,
            edge=edge,
            groups=groups,
            overrides=overrides,
            now=now or utcnow(),
            secrets=await self.secret_versions(),
            notes=notes,
        )
        return desired, report

    async def _rollouts(self, profiles: list[Profile]) -> tuple[dict[str, RolloutState], Earlier]:
        """The rollout state of each profile whose latest revision rolls out in waves, and
        the earlier revisions those keep edges at (docs/rollouts.md)."""
        rollouts: dict[str, RolloutState] = {}
        earlier: dict[tuple[str, int], Profile] = {}
        bucket = Bucket(self._js, subjects.ROLLOUTS_BUCKET, RolloutState)
        for profile in profiles:
            if profile.rollout is None or profile.revision is None:
                continue
            try:
                entry = await bucket.get(subjects.rollout_key(profile.name, profile.revision))
            except MissingError:
                return {}, {}  # a hub without rollouts
            if entry is None or entry.value is None:
                continue
            rollouts[profile.name] = entry.value
            if entry.value.previous is not None:
                for old in await self.profiles.history(profile.name):
                    earlier[profile.name, old.revision or 0] = old
        return rollouts, earlier

    async def compliance(self, *, now: datetime | None = None) -> list[EdgeCompliance]:
        """Per reporting edge: converged / pending / failed (see `fleetbus.core.compliance`)."""
        profiles = await self.profiles.all()
        overrides = [o.override for o in await self.overrides.all()]
        rollouts, earlier = await self._rollouts(profiles)
        return assess(
            profiles,
            overrides,
            await self.reports(),
            now=now or utcnow(),
            secrets=await self.secret_versions(),
            rollouts=rollouts,
            earlier=earlier,
        )

    # Inventory, presence and events: the hub's live view of the fleet.

    @property
    def _js(self) -> JetStream:
        return self.bus.jetstream(HUB_DOMAIN, timeout=self.timeout)

    @staticmethod
    def _snapshot(entry: Entry[InventorySnapshot]) -> InventorySnapshot | None:
        """A stored snapshot, `received_at` = when the hub stored it."""
        if entry.value is None:
            return None
        return entry.value.model_copy(update={"received_at": entry.stored_at})

    @staticmethod
    def _key(region: str | None, edge: str = "*") -> str:
        return f"{region or '*'}.{edge}"

    async def inventory(self, region: str | None = None) -> list[InventorySnapshot]:
        """The latest snapshot of every edge (of `region`), sorted by region and edge."""
        entries = await self._inventory.current(self._key(region))
        found = [s for e in entries if (s := self._snapshot(e)) is not None]
        return sorted(found, key=lambda s: (s.region, s.edge))

    async def get_inventory(self, edge: str, *, region: str | None = None) -> InventorySnapshot:
        """The latest snapshot of `edge`; `MissingError` if the hub has none."""
        for entry in await self._inventory.current(self._key(region, edge)):
            if (snapshot := self._snapshot(entry)) is not None:
                return snapshot
        msg = f"the hub has no inventory for edge {edge!r}" + (f" in region {region!r}" if region else "")
        raise MissingError(msg)

    async def send_device_command(
        self,
        edge: str,
        device: str,
        payload: JsonValue,
        *,
        region: str | None = None,
        sent_by: str = "",
        timeout: float = 5.0,
    ) -> DeviceCommandReply:
        """Ask `edge` to publish `payload` on `devices/<device>/cmd` (its MQTT devices get it).
        `EdgeUnreachableError` if the edge does not answer (offline, or a link down): commands
        are not queued, a late command to a device can do more harm than none."""
        check_token(device)
        if region is None:
            region = (await self.get_inventory(edge)).region
        command = DeviceCommand(
            region=region, edge=edge, device=device, payload=payload, sent_by=sent_by, sent_at=utcnow()
        )
        return await self._ask(
            subjects.edge_command(region, edge, "device"),
            command,
            DeviceCommandReply,
            who=f"edge {edge!r}",
            why="it is offline or its link is down; the command was not delivered "
            "(commands go to online edges only)",
            timeout=timeout,
        )

    async def _ask(
        self,
        subject: str,
        request: Message,
        reply: type[M],
        *,
        who: str,
        why: str,
        timeout: float | None = None,
    ) -> M:
        """A request to a site through the hub: `EdgeUnreachableError` naming `who` and `why`
        if nobody answers within `timeout` (default: the client's)."""
        deadline = self.timeout if timeout is None else timeout
        try:
            return await self.bus.request(subject, request, reply, timeout=deadline)
        except NO_ANSWER as exc:
            msg = f"{who} did not answer within {deadline:g} s: {why}"
            raise EdgeUnreachableError(msg) from exc

    async def device_credentials(
        self,
        edge: str,
        device: str,
        action: str,
        *,
        password_hash: str = "",
        gateway: bool = False,
        region: str | None = None,
        sent_by: str = "",
    ) -> DeviceCommandReply:
        """Add (`password_hash`: bcrypt) or remove a device's MQTT credentials at `edge`, which
        must be online. `RefusedError` with the edge's reason if it could not apply it."""
        check_token(device)
        if region is None:
            region = (await self.get_inventory(edge)).region
        request = DeviceCredentials(
            region=region,
            edge=edge,
            device=device,
            action=action,
            password_hash=password_hash,
            gateway=gateway,
            sent_by=sent_by,
        )
        reply = await self._ask(
            subjects.edge_command(region, edge, "device_credentials"),
            request,
            DeviceCommandReply,
            who=f"edge {edge!r}",
            why="it is offline or its link is down; device credentials are changed at online edges only",
        )
        if not reply.delivered:
            raise RefusedError(f"edge {edge}: {reply.reason}")
        return reply

    async def watch_inventory(self, region: str | None = None) -> AsyncGenerator[InventorySnapshot, None]:
        """Every edge's latest snapshot (of `region`), then each new one as the hub gets it.
        A snapshot older than one already yielded for its edge (a replayed source) is skipped."""
        newest: dict[tuple[str, str], datetime] = {}
        async for entry in self._inventory.watch(self._key(region)):
            if (snapshot := self._snapshot(entry)) is None:
                continue
            last = newest.get((snapshot.region, snapshot.edge))
            if last is None or snapshot.observed_at > last:
                newest[snapshot.region, snapshot.edge] = snapshot.observed_at
                yield snapshot

    async def regions(self) -> list[PresenceChange]:
        """Each regional's presence as the hub hears it."""
        return await self._regions.values()

    async def presence(self) -> list[EdgePresence]:
        """Every edge's presence as shown (`unreachable` behind a region the hub cannot hear)."""
        regions = {p.region: p for p in await self.regions()}
        edges = await self._presence.values()
        return sorted(
            (edge_presence(p, regions.get(p.region)) for p in edges if p.edge),
            key=lambda p: (p.region, p.edge),
        )

    async def watch_presence(self) -> AsyncGenerator[EdgePresence, None]:
        """Every edge's presence, then each change: an edge's own, or its region becoming
        (un)reachable, which changes what is shown for each of its edges."""
        region_records, region_seen = await self._regions.snapshot()
        edge_records, edge_seen = await self._presence.snapshot()
        rows = _PresenceRows()
        for record in region_records:
            rows.take(subjects.REGIONS_BUCKET, record)
        for record in edge_records:
            rows.take(subjects.PRESENCE_BUCKET, record)
        for row in rows.updates():
            yield row
        changes = _merged(
            (subjects.REGIONS_BUCKET, self._regions.changes(after=region_seen)),
            (subjects.PRESENCE_BUCKET, self._presence.changes(after=edge_seen)),
        )
        try:
            async for bucket, record in changes:
                rows.take(bucket, record)
                for row in rows.updates():
                    yield row
        finally:
            await changes.aclose()
        # The changes end without error only when nats-py closed the connection.
        raise self._lost(None)

    async def watch_events(
        self,
        kinds: Iterable[str] | None = None,
        *,
        region: str | None = None,
        since: datetime | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Events of the fleet (of `kinds`, of `region`): first the latest of each kind from
        each edge (or, with `since`, every event from then on), then each new one."""
        wanted = set(kinds or ())
        only = next(iter(wanted)) if len(wanted) == 1 else ">"  # one kind: let the server filter
        async for event in follow_stream(
            self._js,
            subjects.EVENTS_STREAM,
            subjects.events(region or "*", "*", only),
            Event,
            since=since,
        ):
            if not wanted or event.kind in wanted:
                yield event

    # Admission: enrollment tokens, approval, revocation (docs/security.md#enrollment).

    async def admission(
        self, region: str, action: str, edge: str | None = None, *, sent_by: str = "", **fields: Any
    ) -> AdmissionReply:
        """Ask `region`'s regional to `action` (approve, revoke, list, issued); `RefusedError`
        with its reason if it refuses, `EdgeUnreachableError` if it does not answer."""
        check_token(region)
        if edge is not None:
            check_token(edge)
        command = AdmissionCommand(region=region, action=action, edge=edge, sent_by=sent_by, **fields)
        reply = await self._ask(
            subjects.region_admission(region),
            command,
            AdmissionReply,
            who=f"the regional of {region!r}",
            why="it is down, its link to the hub is down, or the region does not exist "
            "(`fleetbus status` lists regions)",
        )
        if not reply.ok:
            raise RefusedError(f"regional {region}: {reply.reason}")
        return reply

    async def admitted_edges(self, region: str | None = None) -> dict[str, AdmissionReply]:
        """Each region's registry (admitted, pending, revoked), by region; a regional that does
        not answer is left out (logged)."""
        regions = [region] if region else sorted({r.region for r in await self.regions()})
        found = {}
        for name in regions:
            try:
                found[name] = await self.admission(name, "list")
            except EdgeUnreachableError as exc:
                if region:
                    raise
                logger.warning("regional not answering", region=name, error=str(exc))
        return found

    # Forgetting edges and regions that are gone for good (see `fleetbus.nats.forget`).

    async def forget_edge(self, edge: str, *, region: str | None = None, force: bool = False) -> ForgetResult:
        """Delete `edge`'s presence, inventory, last apply report and enrollment, at the hub
        and at its regional. `RefusedError` while it is online (unless `force`: a running
        edge comes back when it enrolls again); `MissingError` if no record names it."""
        check_token(edge)
        known = await forget.known_edges(self._js, region or "*", edge)
        regions = sorted({r for r, _ in known} | ({region} if region else set()))
        if not regions:
            msg = f"the hub has no record of edge {edge!r}; `fleetbus status` lists the edges it knows"
            raise MissingError(msg)
        if len(regions) > 1:
            msg = f"edge {edge!r} has records in regions {', '.join(regions)}; pass --region to choose one"
            raise ConfigError(msg)
        home = regions[0]
        if not force:
            shown = [p for p in await self.presence() if p.edge == edge and p.region == home]
            if shown and shown[0].state is PresenceState.ONLINE:
                msg = (
                    f"edge {edge!r} (region {home}) is online: stop it first, or pass --force "
                    "(a running edge comes back as soon as it enrolls again)"
                )
                raise RefusedError(msg)
        return await forget.forget_edges(
            self._js, self.bus.jetstream(home, timeout=self.timeout), home, [edge]
        )

    async def forget_region(self, region: str, *, force: bool = False) -> ForgetResult:
        """Forget every edge of `region` (as `forget_edge`) and the hub's record of the
        regional. `RefusedError` while the hub hears the regional, unless `force`."""
        check_token(region)
        record = next((r for r in await self.regions() if r.region == region), None)
        if record is not None and record.state is PresenceState.ONLINE and not force:
            msg = (
                f"region {region!r} is online: its regional would report it again at once; "
                "stop it first, or pass --force"
            )
            raise RefusedError(msg)
        regional = self.bus.jetstream(region, timeout=self.timeout)
        edges = {e for _, e in await forget.known_edges(self._js, region)}
        enrolled = await forget.enrolled_edges(regional, region)
        if record is None and not edges and not enrolled:
            msg = f"the hub has no record of region {region!r}; `fleetbus status` lists the regions it knows"
            raise MissingError(msg)
        result = await forget.forget_edges(self._js, regional, region, edges | (enrolled or set()))
        await forget.forget_region_record(self._js, region)
        return replace(result, regional_answered=result.regional_answered and enrolled is not None)

    async def status(self, *, now: datetime | None = None) -> list[EdgeStatus]:
        """One row per edge: presence, compliance, backlog (what `fleetbus status` shows)."""
        presence = await self.presence()
        inventory = await self.inventory()
        known = {(p.region, p.edge) for p in presence} | {(i.region, i.edge) for i in inventory}
        profiles = await self.profiles.all()
        overrides = [o.override for o in await self.overrides.all()]
        rollouts, earlier = await self._rollouts(profiles)
        compliance = assess(
            profiles,
            overrides,
            await self.reports(),
            now=now or utcnow(),
            known=known,
            secrets=await self.secret_versions(),
            rollouts=rollouts,
            earlier=earlier,
        )
        return fleet_status(presence, compliance, inventory)


class _PresenceRows:
    """What `watch_presence` has shown: each edge's row, recomputed as its record or its
    region's changes; `updates()` gives the rows that differ from what was shown."""

    def __init__(self) -> None:
        self.regions: dict[str, PresenceChange] = {}
        self.edges: dict[str, PresenceChange] = {}
        self.shown: dict[str, EdgePresence] = {}

    def take(self, bucket: str, record: Entry[PresenceChange]) -> None:
        if (change := record.value) is None:
            return
        if bucket == subjects.REGIONS_BUCKET:
            self.regions[change.region] = change
        elif change.edge:
            self.edges[record.key] = change

    def updates(self) -> list[EdgePresence]:
        out = []
        for key, change in sorted(self.edges.items()):
            row = edge_presence(change, self.regions.get(change.region))
            if self.shown.get(key) != row:
                self.shown[key] = row
                out.append(row)
        return out


async def _merged(*sources: tuple[str, AsyncGenerator[T, None]]) -> AsyncGenerator[tuple[str, T], None]:
    """Items of several generators as they come, each with its source's name; ends when one
    ends, raises what one raises."""
    queue: asyncio.Queue[tuple[str, T]] = asyncio.Queue()

    async def pump(name: str, items: AsyncGenerator[T, None]) -> None:
        async for item in items:
            await queue.put((name, item))

    pumps = [asyncio.create_task(pump(name, items)) for name, items in sources]
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait([getter, *pumps], return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                for task in done:
                    task.result()  # a pump failed: raise its error here
                return
            yield getter.result()
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
