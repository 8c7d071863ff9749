"""Selected device telemetry upstream: what the profiles' `telemetry` rules name leaves the
edge as `telemetry` events, through the edge's EVENTS stream (store-and-forward to the regional
and the hub, like every event), within explicit limits.

A rule is keyed by an MQTT topic filter over the device topics (`devices/+/telemetry`) and says

    mode: sample   one reading per device per `interval` (the first after it elapses); each one
                   is stored at the edge and forwarded, also after a partition
    mode: last     the latest reading per device, at most once per `interval`; while the uplink
                   is down only each device's latest waits (in memory), superseded ones never
                   leave the site
    fields: [...]  only these fields of a reading (all when empty)

Limits, per edge (settings): `telemetry_max_rate` readings per second leave in all (a token
bucket; a sample over it is dropped, a last value waits), and `telemetry_max_backlog` samples
are stored while the uplink is down (then samples are dropped until it returns), so telemetry
can never fill the EVENTS stream and push out apply results or drift. Everything dropped is
counted in `fleetbus_telemetry_dropped_total{reason}`.
"""

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from edge.inventory import LinkView
from fleetbus.runtime import log
from fleetbus.runtime.metrics import DaemonMetrics
from schemas.event import Event, EventKind
from schemas.profile import ForwardMode, TelemetryRule, check_device_filter

logger = log.get_logger(__name__)

MESSAGE_FIELDS = 4  # readings shown in an event's one-line message
QUEUE_MAX = 1000  # readings waiting for the edge's own server (restarting) to store them


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (`+` one level, `#` the rest) of `topic` by `topic_filter`."""
    levels, wanted = topic.split("/"), topic_filter.split("/")
    for i, part in enumerate(wanted):
        if part == "#":
            return True
        if i >= len(levels) or (part not in ("+", levels[i])):
            return False
    return len(levels) == len(wanted)


@dataclass(frozen=True)
class Rule:
    topic: str
    mode: ForwardMode
    interval: float
    fields: tuple[str, ...]


def rules_of(document: Mapping[str, Any]) -> list[Rule]:
    """The telemetry rules of a desired document; a rule an override made invalid is skipped
    (logged), the others still apply."""
    rules = []
    for topic, value in sorted((document.get("telemetry") or {}).items()):
        try:
            check_device_filter(topic)
            rule = TelemetryRule.model_validate(value)
        except (ValueError, ValidationError) as exc:
            logger.warning("telemetry rule skipped", topic=topic, error=str(exc).splitlines()[0])
            continue
        rules.append(Rule(topic, rule.mode, rule.interval, tuple(rule.fields)))
    return rules


@dataclass
class _Reading:
    device: str
    channel: str
    values: dict[str, Any]
    observed_at: datetime


class TokenBucket:
    """`rate` tokens a second, holding up to one second's worth (at least one token)."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.capacity = max(1.0, rate)
        self.tokens, self.at = self.capacity, clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def wait(self) -> float:
        """Seconds until a token is there."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


class TelemetryForwarder:
    """Feeds on the device registry's accepted messages (`offer`), forwards what the rules
    select through `publish` (the edge's EVENTS, retried until stored)."""

    def __init__(
        self,
        publish: Callable[[Event], Awaitable[None]],
        *,
        region: str,
        edge: str,
        link: LinkView,
        max_rate: float,
        max_backlog: int,
        metrics: DaemonMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.publish = publish
        self.region, self.edge = region, edge
        self.link, self.max_backlog = link, max_backlog
        self.metrics, self.monotonic = metrics, monotonic
        self.bucket = TokenBucket(max_rate, clock=monotonic)
        self.rules: list[Rule] = []
        self.sent_at: dict[tuple[str, str], float] = {}  # (rule topic, device) -> when
        self.waiting: dict[tuple[str, str], _Reading] = {}  # last mode: the latest not yet sent
        self.ready: deque[tuple[Rule, _Reading]] = deque()
        self._matching: dict[tuple[str, str], list[Rule]] = {}  # (device, channel) -> its rules
        self.stored_while_down = 0  # samples stored since the uplink went down
        self._wake = asyncio.Event()

    def configure(self, document: Mapping[str, Any]) -> None:
        """Take the rules of the current desired document (cheap when they did not change)."""
        rules = rules_of(document)
        if rules == self.rules:
            return
        logger.info("telemetry rules", rules=[f"{r.topic} {r.mode.value}/{r.interval:g}s" for r in rules])
        self.rules = rules
        self._matching.clear()
        topics = {r.topic for r in rules}
        self.waiting = {k: v for k, v in self.waiting.items() if k[0] in topics}
        self.sent_at = {k: v for k, v in self.sent_at.items() if k[0] in topics}
        self._wake.set()

    def poke(self) -> None:
        """The uplink is back: send the last values that waited for it now."""
        self._wake.set()

    def offer(self, device: str, channel: str, body: dict[str, Any], observed_at: datetime) -> None:
        """One accepted device message; the rules decide whether and when it leaves."""
        if not self.rules:
            return
        matching = self._matching.get((device, channel))
        if matching is None:
            topic = f"devices/{device}/{channel}"
            matching = self._matching[device, channel] = [
                r for r in self.rules if topic_matches(r.topic, topic)
            ]
        for rule in matching:
            values = {k: body[k] for k in rule.fields if k in body} if rule.fields else dict(body)
            if not values:
                continue
            reading = _Reading(device, channel, values, observed_at)
            key = (rule.topic, device)
            if rule.mode is ForwardMode.LAST:
                self.waiting[key] = reading  # supersedes the one waiting, if any
                self._wake.set()
            elif self.monotonic() - self.sent_at.get(key, float("-inf")) >= rule.interval:
                self.sent_at[key] = self.monotonic()
                self._take_sample(rule, reading)

    def _take_sample(self, rule: Rule, reading: _Reading) -> None:
        down = self.link.up is False
        if not down:
            self.stored_while_down = 0
        if (down and self.stored_while_down >= self.max_backlog) or len(self.ready) >= QUEUE_MAX:
            self._count_dropped("backlog")
            return
        if not self.bucket.take():
            self._count_dropped("rate")
            return
        if down:
            self.stored_while_down += 1
        self.ready.append((rule, reading))
        self._wake.set()

    def _due_last_values(self) -> float | None:
        """Move the last values whose interval passed to `ready`, while the uplink is up and
        the rate allows; seconds until the next one is due (None: nothing waits)."""
        if not self.waiting:
            return None
        if self.link.up is False:
            return 1.0  # poke() says when the link is back; look again anyway
        now, rules = self.monotonic(), {r.topic: r for r in self.rules}
        next_due: float | None = None
        for key, reading in list(self.waiting.items()):
            rule = rules[key[0]]
            due = self.sent_at.get(key, float("-inf")) + rule.interval
            if due > now:
                next_due = due - now if next_due is None else min(next_due, due - now)
                continue
            if not self.bucket.take():
                return self.bucket.wait()
            del self.waiting[key]
            self.sent_at[key] = now
            self.ready.append((rule, reading))
        return next_due

    async def flush(self) -> float | None:
        """Publish what is due; seconds until something else will be (None: nothing waits)."""
        wait = self._due_last_values()
        while self.ready:
            rule, reading = self.ready.popleft()
            await self.publish(self._event(rule, reading))
            if self.metrics:
                self.metrics.telemetry_forwarded.labels(mode=rule.mode.value).inc()
        return wait

    async def run(self) -> None:
        while True:
            self._wake.clear()
            wait = await self.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _event(self, rule: Rule, reading: _Reading) -> Event:
        shown = " ".join(f"{k}={v}" for k, v in list(reading.values.items())[:MESSAGE_FIELDS])
        more = " …" if len(reading.values) > MESSAGE_FIELDS else ""
        return Event(
            id=f"{self.edge}-{uuid.uuid4().hex}",
            kind=EventKind.TELEMETRY,
            region=self.region,
            edge=self.edge,
            observed_at=reading.observed_at,
            message=f"{reading.device} {reading.channel}: {shown}{more}",
            data={
                "device": reading.device,
                "channel": reading.channel,
                "topic": rule.topic,
                "mode": rule.mode.value,
                "values": reading.values,
            },
        )

    def _count_dropped(self, reason: str) -> None:
        if self.metrics:
            self.metrics.telemetry_dropped.labels(reason=reason).inc()
