"""The client side of the hub's desk (`hub.desk`): writes of desired state as signed requests.

`FleetClient.profiles` and `.overrides` keep the stores' methods: reads go to the hub's
buckets directly (`fleetbus.sdk.stores`), writes are `DeskRequest`s signed with the
operator's nkey (the seed in its credentials file), which the hub checks, authorizes, does,
signs and records in its audit trail. The identity stamped on what is stored is the one the
hub verified, never a name the caller gives.
"""

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nkeys
from pydantic import JsonValue

from fleetbus.core.rollout import WaveProgress
from fleetbus.errors import (
    ConfigError,
    ConflictError,
    FleetbusError,
    ForbiddenError,
    HubUnreachableError,
    MissingError,
    RefusedError,
)
from fleetbus.nats.bus import Bus
from fleetbus.nats.errors import NO_ANSWER
from fleetbus.runtime import sealing
from fleetbus.sdk.documents import Plan
from fleetbus.sdk.stores import OverrideStore, ProfileStore, StoredOverride
from schemas import subjects
from schemas.base import utcnow
from schemas.desk import DeskReply, DeskRequest
from schemas.headers import SIGNATURE
from schemas.override import Override, OverrideScope
from schemas.profile import Profile
from schemas.rollout import RolloutState

ERRORS: dict[str, type[Exception]] = {
    "config": ConfigError,
    "missing": MissingError,
    "conflict": ConflictError,
    "refused": RefusedError,
    "forbidden": ForbiddenError,
}


class DeskClient:
    """Sends signed requests to the hub's desk (unsigned without a seed, which only an
    --insecure hub takes)."""

    def __init__(self, bus: Bus, url: str, seed: str | None, *, timeout: float) -> None:
        self.bus, self.url = bus, url
        self.timeout = timeout
        self._pair = nkeys.from_seed(seed.encode()) if seed else None
        self.operator = self._pair.public_key.decode() if self._pair else ""

    def _sign(self, body: bytes) -> dict[str, str]:
        if self._pair is None:
            return {}
        return {SIGNATURE: base64.b64encode(self._pair.sign(body)).decode()}

    async def hub_keys(self) -> tuple[str, ...]:
        """The hub's desired-state signing keys (public nkeys), its current one first."""
        keys = (await self.call("trust")).result.get("keys")
        return tuple(str(k) for k in keys) if isinstance(keys, list) else ()

    async def call(self, op: str, *, reason: str = "", **args: Any) -> DeskReply:
        """The hub's answer, or the error it names (`ForbiddenError` for a refusal)."""
        request = DeskRequest(
            op=op,
            args=args,
            operator=self.operator,
            issued_at=utcnow(),
            nonce=secrets.token_hex(16),
            reason=reason,
        )
        try:
            reply = await self.bus.request(
                subjects.HUB_DESK, request, DeskReply, timeout=self.timeout, sign=self._sign
            )
        except NO_ANSWER as exc:
            why = (
                f"its desk did not answer {op} within {self.timeout:g} s: is the hub daemon running "
                "(`fleetbus dev status`), and do these credentials admit sending to it?"
            )
            raise HubUnreachableError(self.url, why) from exc
        if not reply.ok:
            error = ERRORS.get(reply.error_kind or "", FleetbusError)
            raise error(reply.error or "the hub refused the request")
        return reply


def _plan(result: dict[str, JsonValue]) -> Plan:
    current = result.get("current")
    return Plan(
        current=Profile.model_validate(current) if current else None,
        new=Profile.model_validate(result["new"]),
        diff=str(result.get("diff", "")),
    )


class Profiles:
    """`ProfileStore`'s reads; its writes through the desk."""

    def __init__(self, store: ProfileStore, desk: DeskClient) -> None:
        self.store, self.desk = store, desk
        self.all, self.history, self.get = store.all, store.history, store.get

    @property
    def undecodable(self) -> list[str]:
        return self.store.undecodable

    async def plan(self, profile: Profile) -> Plan:
        """What `apply` would store (stamped as by you; the hub stamps whom it verified)."""
        return await self.store.plan(profile, actor=self.desk.operator or "you")

    async def apply(self, profile: Profile, *, expect_revision: int | None = None, reason: str = "") -> Plan:
        body = profile.model_dump(mode="json", exclude_none=True)
        reply = await self.desk.call(
            "profile.apply", reason=reason, profile=body, expect_revision=expect_revision
        )
        return _plan(reply.result)

    async def rollback(self, name: str, to: int, *, reason: str = "") -> Plan:
        return _plan((await self.desk.call("profile.rollback", reason=reason, name=name, to=to)).result)

    async def delete(self, name: str, *, reason: str = "") -> Profile:
        reply = await self.desk.call("profile.delete", reason=reason, name=name)
        return Profile.model_validate(reply.result["profile"])


class Overrides:
    """`OverrideStore`'s reads; its writes through the desk."""

    def __init__(self, store: OverrideStore, desk: DeskClient) -> None:
        self.store, self.desk = store, desk
        self.all = store.all

    @property
    def undecodable(self) -> list[str]:
        return self.store.undecodable

    async def set(
        self,
        scope: OverrideScope,
        name: str,
        patch: dict[str, Any],
        *,
        reason: str,
        expires_at: datetime | None = None,
    ) -> StoredOverride:
        reply = await self.desk.call(
            "override.set",
            reason=reason,
            scope=scope.value,
            name=name,
            patch=patch,
            expires_at=expires_at.isoformat() if expires_at else None,
        )
        return StoredOverride(str(reply.result["key"]), Override.model_validate(reply.result["override"]))

    async def remove(self, scope: OverrideScope, name: str, *, reason: str = "") -> None:
        await self.desk.call("override.remove", reason=reason, scope=scope.value, name=name)


class Secrets:
    """Secrets (docs/security.md#sealed-secrets): `set` seals the value to the hub's key here,
    before it leaves this process; the hub keeps it sealed and seals it again to each edge
    that references it. Nothing reads a value back: `ls` lists names and versions."""

    def __init__(self, desk: DeskClient) -> None:
        self.desk = desk

    async def set(self, name: str, value: bytes, *, reason: str = "") -> int:
        """Store `value` as the next version of secret `name`; returns that version."""
        keys = await self.desk.hub_keys()
        if not keys:
            msg = "the hub has no signing key, so it keeps no secrets (it runs --insecure)"
            raise ConfigError(msg)
        hub_key = keys[0]
        try:
            sealed = sealing.seal(value, hub_key)
        except sealing.SealError as exc:
            raise ConfigError(str(exc)) from None
        reply = await self.desk.call("secret.set", reason=reason, name=name, sealed=sealed, sealed_to=hub_key)
        version = reply.result.get("version")
        return version if isinstance(version, int) else 0

    async def ls(self) -> list[dict[str, Any]]:
        """Each secret's name, version, the key it is sealed to, who set it and when."""
        rows = (await self.desk.call("secret.ls")).result.get("secrets")
        return [dict(r) for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    async def rm(self, name: str, *, reason: str = "") -> None:
        await self.desk.call("secret.rm", reason=reason, name=name)


@dataclass(frozen=True)
class RolloutReport:
    """A rollout as the hub sees it now: its state, each wave's progress, and what
    `rollout status --wait` exits with (0 complete, 1 halted/rolled back/aborted, None:
    under way or paused)."""

    state: RolloutState
    waves: list[WaveProgress]
    exit_code: int | None
    at: datetime

    @property
    def done(self) -> bool:
        return self.exit_code is not None


class Rollouts:
    """Staged rollouts (docs/rollouts.md): read their progress, pause, resume, abort, promote."""

    def __init__(self, desk: DeskClient) -> None:
        self.desk = desk

    async def status(self, name: str, *, revision: int | None = None) -> RolloutReport:
        """The newest rollout of profile `name` (or of its `revision`)."""
        args: dict[str, Any] = {"name": name} | ({"revision": revision} if revision is not None else {})
        result = (await self.desk.call("rollout.status", **args)).result
        waves = result.get("progress")
        code, at = result.get("exit_code"), result.get("at")
        return RolloutReport(
            state=RolloutState.model_validate(result.get("state")),
            waves=[_wave(w) for w in waves if isinstance(w, dict)] if isinstance(waves, list) else [],
            exit_code=code if isinstance(code, int) else None,
            at=datetime.fromisoformat(at) if isinstance(at, str) else utcnow(),
        )

    async def watch(
        self, name: str, *, revision: int | None = None, interval: float = 1.0
    ) -> AsyncIterator[RolloutReport]:
        """`status` every `interval` seconds until the rollout is done (the last one included)."""
        while True:
            report = await self.status(name, revision=revision)
            yield report
            if report.done:
                return
            await asyncio.sleep(interval)  # a polling period

    async def _operate(self, op: str, name: str, reason: str) -> RolloutState:
        reply = await self.desk.call(f"rollout.{op}", reason=reason, name=name)
        return RolloutState.model_validate(reply.result.get("state"))

    async def pause(self, name: str, *, reason: str = "") -> RolloutState:
        """Nothing moves (not even deadlines) until `resume`."""
        return await self._operate("pause", name, reason)

    async def resume(self, name: str, *, reason: str = "") -> RolloutState:
        return await self._operate("resume", name, reason)

    async def abort(self, name: str, *, reason: str = "") -> RolloutState:
        """Stopped for good: edges keep what they run."""
        return await self._operate("abort", name, reason)

    async def promote(self, name: str, *, reason: str = "") -> RolloutState:
        """The active wave's soak ends: it passes as soon as it converged."""
        return await self._operate("promote", name, reason)


def _wave(found: dict[str, Any]) -> WaveProgress:
    failed = found.get("failed")
    return WaveProgress(
        name=str(found.get("name", "")),
        phase=str(found.get("phase", "")),
        members=int(found.get("members", 0)),
        converged=int(found.get("converged", 0)),
        pending=int(found.get("pending", 0)),
        offline=int(found.get("offline", 0)),
        skipped=int(found.get("skipped", 0)),
        failed={str(k): str(v) for k, v in failed.items()} if isinstance(failed, dict) else {},
        soak_left=found.get("soak_left"),
    )
