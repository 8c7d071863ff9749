"""Store and forward between tiers: streams built from sources, and kicks when a link returns.

Every downstream replica (profiles, overrides) and the hub's copy of each region's events and
inventory is a stream with *sources* in another JetStream domain (docs/architecture.md#data-flows):

- a replica bucket is `KV_<bucket>` with no subjects, sourcing the same stream one tier up,
  optionally filtered (an edge takes all profiles but only its own overrides), so nothing
  local can write it and `fleetbus.nats.kv.Bucket` reads and watches it like any bucket;
- an aggregate stream at the hub (EVENTS, INVENTORY) gains one source per region the first
  time that regional is heard from; a regional's binds its edges' outbox subjects instead
  (`aggregate_stream(direct=...)`): edges push up (`fleetbus.nats.uplink`), since what a
  source reads is whatever the other end's server returns, which pins no identity.

After a long outage the server resumes a source only on its own retry back-off (0.3-80 s
measured); `kick()` removes and re-adds the source, which resumes from the last sequence it
holds, with no duplicates, in ~0.3 s (`SourcedStream.kick`).
"""

import asyncio
import contextlib
import copy
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import (
    ExternalStream,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import NotFoundError

from fleetbus.nats.errors import TRANSIENT
from fleetbus.nats.heartbeat import HeartbeatLog
from fleetbus.nats.provisioning import ensure_stream, kv_stream
from fleetbus.nats.streams import local_stream
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff
from fleetbus.runtime.metrics import DaemonMetrics
from schemas.base import utcnow
from schemas.heartbeat import Heartbeat
from schemas.subjects import js_api_prefix

logger = log.get_logger(__name__)


def source(
    stream: str,
    domain: str,
    *,
    deliver: str | None = None,
    filters: Sequence[str] = (),
    rename: tuple[str, str] | None = None,
) -> StreamSource:
    """`stream` in `domain`, optionally restricted to `filters` (subjects kept as they are)
    or to the one subject `rename` = (filter, stored as) maps (`{{wildcard(n)}}` in the
    second), its messages delivered across the link on `deliver` (`subjects.deliver_down`/
    `_up`: the lower site's own subjects, which its link permissions name)."""
    pairs = [(f, f) for f in filters] + ([rename] if rename else [])
    transforms = [SubjectTransform(src=src, dest=dest) for src, dest in pairs] or None
    return StreamSource(
        name=stream,
        external=ExternalStream(api=js_api_prefix(domain), deliver=deliver),
        subject_transforms=transforms,
    )


def source_domain(item: StreamSource) -> str | None:
    """The domain a source reads from (`$JS.<domain>.API`), None for a local one."""
    api = item.external.api if item.external else None
    if not api or not api.startswith("$JS.") or not api.endswith(".API"):
        return None
    return api.removeprefix("$JS.").removesuffix(".API")


def source_key(item: StreamSource) -> tuple[str, str]:
    """What identifies a source within a stream: its name and the API it comes through."""
    return item.name, item.external.api if item.external else ""


def replica_bucket(bucket: str, sources: list[StreamSource], *, history: int = 1) -> StreamConfig:
    """A read-only replica of `bucket`: `KV_<bucket>` filled only by `sources`."""
    description = f"Replica of the {bucket!r} bucket one tier up (read-only, sourced)."
    return kv_stream(bucket, description, history=history, sources=sources)


def aggregate_stream(
    name: str,
    description: str,
    *,
    max_bytes: int,
    max_age_s: float = 0.0,
    per_subject: int = -1,
    direct: tuple[str, str] | None = None,
) -> StreamConfig:
    """A stream filled from the sites below (sources added as they are heard, or `direct`);
    explicit limits (age, bytes, messages per subject), since what they evict is counted.
    `direct` = (subject, stored as): the subject it binds for the sites below to publish into
    (edges' outbox subjects), rewritten on the way in to the subject the site stores it under."""
    return local_stream(
        name,
        description,
        subjects=[direct[0]] if direct else None,
        transform=direct,
        max_age_s=max_age_s,
        max_bytes=max_bytes,
        per_subject=per_subject,
        direct_get=True,
    )


class SourcedStream:
    """One stream whose sources this daemon manages; changes are serialised (read, modify,
    write of the stream config), so two heartbeats cannot lose each other's source."""

    def __init__(
        self,
        js: JetStreamContext,
        config: StreamConfig,
        metrics: DaemonMetrics | None = None,
        *,
        per_site: Callable[[str], StreamSource] | None = None,
        deliver: Callable[[str], str] | None = None,
    ) -> None:
        self.js = js
        self.config = config
        self.name = config.name or ""
        self.metrics = metrics
        # The source to add for a site heard from below (default: its same-named stream,
        # delivered on the prefix `deliver` gives for that site).
        self.per_site = per_site or (
            lambda site: source(self.name, site, deliver=deliver(site) if deliver else None)
        )
        self._lock = asyncio.Lock()

    async def exists(self) -> bool:
        """Whether the stream is there (created by an earlier run)."""
        try:
            await self.js.stream_info(self.name)
        except NotFoundError:
            return False
        return True

    async def ensure(self, *, keep_sources: bool = False) -> None:
        """Create or update the stream; `keep_sources` keeps sources gained at run time."""
        async with self._lock:
            config = copy.copy(self.config)
            if keep_sources:
                with contextlib.suppress(NotFoundError):
                    info = await self.js.stream_info(self.name)
                    kept = [self._current(s) for s in info.config.sources or []]
                    keys = {source_key(s) for s in kept}
                    config.sources = kept + [
                        s for s in self.config.sources or [] if source_key(s) not in keys
                    ]
            await ensure_stream(self.js, config)

    def _current(self, kept: StreamSource) -> StreamSource:
        """A source added at run time, as this version of fleetbus would add it now (a
        stream created by an older one may lack the deliver prefix link permissions need)."""
        domain = source_domain(kept)
        if domain is None:
            return kept
        now = self.per_site(domain)
        return now if source_key(now) == source_key(kept) else kept

    async def add(self, new: StreamSource) -> bool:
        """Add `new` unless a source with its name and API is there; True if added."""
        async with self._lock:
            config = (await self.js.stream_info(self.name)).config
            existing = list(config.sources or [])
            if any(source_key(s) == source_key(new) for s in existing):
                return False
            config.sources = [*existing, new]
            await self.js.update_stream(config)
        logger.info("source added", stream=self.name, source=new.name, api=source_key(new)[1])
        return True

    async def kick(self, which: Callable[[StreamSource], bool]) -> int:
        """Remove the sources `which` selects and add them back, so they resume now rather
        than on the server's retry back-off. Returns how many were kicked."""
        async with self._lock:
            try:
                config = (await self.js.stream_info(self.name)).config
            except NotFoundError:
                return 0
            sources = list(config.sources or [])
            kicked = [s for s in sources if which(s)]
            if not kicked:
                return 0
            config.sources = [s for s in sources if not which(s)]
            await self.js.update_stream(config)
            config.sources = sources
            await self.js.update_stream(config)
        if self.metrics:
            self.metrics.kicks.labels(stream=self.name).inc(len(kicked))
        logger.info("sources kicked", stream=self.name, apis=[source_key(s)[1] for s in kicked])
        return len(kicked)

    async def failing(self) -> set[str]:
        """Names of the sources whose last attempt failed (e.g. the stream they source did
        not exist yet: a tier started before the one above had provisioned)."""
        try:
            info = await self.js.stream_info(self.name)
        except (NotFoundError, *TRANSIENT):
            return set()
        return {s.name for s in info.sources or [] if s.error}


async def repair_sources(
    streams: Sequence[SourcedStream], probe: "UpstreamProbe", *, interval: float = 5.0, soon: float = 0.25
) -> None:
    """While the upstream answers, kick every source of `streams` that reports an error, so it
    is retried now rather than on the server's back-off. Seen at every fleet start: a replica
    created before the bucket above existed kept failing for ~6 s after that bucket appeared,
    and the first profile change waited for it. Meant for streams with one source per name
    (replicas): sources are picked by name.

    Checks come `soon` after this starts and after sources start failing (the bucket above
    usually appears within a second: the first apply of a fresh fleet must not wait), then
    less often, up to every `interval` seconds (a bucket that stays missing is kicked at that
    rate, not in a tight loop)."""
    backoff = Backoff(soon, cap=interval)
    was_failing = True  # at start: the sources may not have been tried yet
    while True:
        failing_now = False
        if probe.up:
            for stream in streams:
                failing = await stream.failing()
                if failing:
                    failing_now = True
                    logger.info("kicking failing sources", stream=stream.name, sources=sorted(failing))
                    await stream.kick(lambda s, names=failing: s.name in names)  # type: ignore[misc]
        if failing_now and not was_failing:
            backoff.reset()
        was_failing = failing_now
        await backoff.wait()  # a check period


class SiteFollower:
    """Keeps the streams this daemon fills from the sites below it in step with their
    heartbeats: a site's sources are added the first time it is heard, and kicked when its
    link came back (`HeartbeatLog.returned`). The first beat after this daemon started also
    kicks sources that already existed: the link may have come back while it was down."""

    def __init__(
        self, streams: Sequence[SourcedStream], heard: HeartbeatLog | None = None, *, kick: bool = True
    ) -> None:
        self.streams = streams
        self.heard = heard or HeartbeatLog()
        self.kick = kick  # False: leave catch-up to the server's retry back-off
        self._recheck: set[str] = set()  # sites whose sources to add again (`server_back`)

    def server_back(self) -> None:
        """This daemon's own server is back, maybe from a crash, and a source added just
        before the crash may not have survived it (seen: the hub added r1's sources 0.2 s
        before its server was SIGKILLed; after the restart nothing of r1 reached the hub
        again, tests/test_dashboard.py). At each site's next beat, add its sources again (a
        no-op where they are) and kick them."""
        self._recheck = set(self.heard.sites())

    async def follow(self, beat: Heartbeat) -> bool:
        """Record `beat` and add or kick its site's sources; True the first time it is heard.
        A thin site has no sources: it publishes into these streams itself."""
        first = self.heard.last(beat.site) is None
        recheck = beat.site in self._recheck
        if beat.thin:
            self.heard.record(beat)
        elif first or recheck:
            self.heard.record(beat)
            logger.info("site heard", site=beat.site, seq=beat.seq, again=recheck)
            existed = [s for s in self.streams if not await s.add(s.per_site(beat.site))]
            if self.kick:
                for stream in existed:
                    await stream.kick(from_domain(beat.site))
            self._recheck.discard(beat.site)  # only once added: a failure tries again next beat
        elif self.heard.returned(beat) and self.kick:
            logger.info("site heard again", site=beat.site, seq=beat.seq, uplink_returns=beat.uplink_returns)
            for stream in self.streams:
                await stream.kick(from_domain(beat.site))
        return first


async def watch_limits(
    js: JetStreamContext,
    streams: Sequence[str],
    metrics: DaemonMetrics,
    *,
    superseded_ok: Sequence[str] = (),
    interval: float = 15.0,
) -> None:
    """Export, per stream, what its limits have evicted (first sequence - 1; streams in
    `superseded_ok` keep one message per subject, so older ones are replaced, not lost),
    every `interval` seconds."""
    while True:
        for name in streams:
            try:
                info = await js.stream_info(name)
            except (NotFoundError, *TRANSIENT):
                continue
            evicted = 0 if name in superseded_ok else max(0, info.state.first_seq - 1)
            metrics.stream_evicted.labels(stream=name).set(evicted)
        await asyncio.sleep(interval)  # a sampling period


def from_domain(domain: str) -> Callable[[StreamSource], bool]:
    api = js_api_prefix(domain)
    return lambda s: s.external is not None and s.external.api == api


@dataclass
class UpstreamProbe:
    """Asks the upstream domain's JetStream for account info, to learn when a link is back.

    `run()` probes every `interval` seconds (faster while down) and calls `on_return` each time
    the upstream answers after having failed, and on the first answer after start (the link
    may have come back while this daemon was down); `up` is the last outcome.
    """

    js: JetStreamContext
    domain: str
    on_return: Callable[[], Awaitable[None]]
    interval: float = 2.0
    down_interval: float = 0.25
    timeout: float = 0.5
    metrics: DaemonMetrics | None = None
    up: bool | None = None
    changed_at: datetime | None = None  # when `up` last changed

    async def probe(self) -> bool:
        try:
            await asyncio.wait_for(self.js.account_info(), self.timeout)
        except TRANSIENT:
            return False
        return True

    async def run(self) -> None:
        while True:
            answered = await self.probe()
            was = self.up
            self.up = answered
            if answered != was:
                self.changed_at = utcnow()
                if self.metrics and was is not None:
                    self.metrics.link_transitions.labels(state="up" if answered else "down").inc()
            if self.metrics:
                self.metrics.upstream_up.set(1 if answered else 0)
            if answered and was is not True:
                logger.info("upstream answers", domain=self.domain, again=was is False)
                await self.on_return()
            elif not answered and was is not False:
                logger.warning("upstream not answering", domain=self.domain)
            # The probe period, not a synchronisation: links are watched at this rate.
            await asyncio.sleep(self.interval if answered else self.down_interval)
