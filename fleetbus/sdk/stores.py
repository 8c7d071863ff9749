"""The hub's profile authority: profiles and overrides in the hub's KV buckets.

A profile's `revision` counts its own versions (1, 2, 3, ...), carried in the stored document
so every replica and every ApplyResult names the same number (a replica's stream sequences
differ from the hub's). Writes are compare-and-set on the bucket's last sequence for the key,
so two concurrent applies never both win, and `expect_revision` is checked against what the
hub holds. Values are stored as JSON, readable with any NATS client (`nats kv get`).

At the hub (the one writer, `hub.desk`) the stores sign every record they write
(`fleetbus.core.trust`): a profile's record claims the profile's revision, a delete the next
one; an override's record claims one more than the bucket sequence of the key's latest record,
which only grows. Edges refuse a revision lower than one they took.

The stores raise domain errors (`MissingError`, `ConflictError`, `ConfigError`); the CLI words
them for its flags.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from fleetbus.errors import ConfigError, ConflictError, MissingError
from fleetbus.nats.bus import JetStream
from fleetbus.nats.kv import Bucket
from fleetbus.runtime.signing import Signer, Verifier
from fleetbus.sdk.documents import Plan, diff
from schemas import subjects
from schemas.base import utcnow
from schemas.override import Override, OverrideScope, OverrideTarget
from schemas.profile import Profile


class ProfileStore:
    """Profiles in the hub's `profiles` bucket, keyed by name."""

    def __init__(self, js: JetStream, *, signer: Signer | None = None, guard: Verifier | None = None) -> None:
        self.bucket = Bucket(
            js, subjects.PROFILES_BUCKET, Profile, signer=signer, guard=guard, stub=Profile.stub
        )

    @property
    def undecodable(self) -> list[str]:
        """ "key: why" of each key whose latest value was skipped (its last good one stands,
        exactly as on the edges, which skip such values and keep the last good one)."""
        return [f"{key}: {why}" for key, why in sorted(self.bucket.undecodable.items())]

    async def _current(self, name: str) -> tuple[Profile | None, int]:
        """The stored profile (its last good revision), and the bucket sequence of the key's
        latest record, which a compare-and-set names (0: never written)."""
        last = await self.bucket.last_revision(name)
        entry = await self.bucket.get(name) if last else None
        return (entry.value if entry else None), last

    async def all(self) -> list[Profile]:
        """Every profile, read in one pass over the bucket."""
        self.bucket.undecodable.clear()
        return sorted(await self.bucket.values(), key=lambda p: (p.priority, p.name))

    async def history(self, name: str, *, since_delete: bool = False) -> list[Profile]:
        """Every stored revision still in the bucket's history (oldest first); deletes skipped,
        and with `since_delete` so are the revisions before the last delete."""
        found: list[Profile] = []
        for entry in await self.bucket.history(name):
            if entry.value is not None:
                found.append(entry.value)
            elif since_delete:
                found.clear()
        return found

    async def get(self, name: str, revision: int | None = None) -> Profile:
        if revision is None:
            profile, _ = await self._current(name)
            if profile is None:
                msg = f"no profile named {name!r}; `fleetbus profile ls` lists them"
                raise MissingError(msg)
            return profile
        history = await self.history(name)
        for profile in history:
            if profile.revision == revision:
                return profile
        kept = ", ".join(str(p.revision) for p in history) or "none"
        msg = f"profile {name!r} has no revision {revision} in the hub's history (kept: {kept})"
        raise MissingError(msg)

    async def plan(self, profile: Profile, *, actor: str, at: datetime | None = None) -> Plan:
        current, _ = await self._current(profile.name)
        return await self._plan(profile, current, actor=actor, at=at)

    async def _plan(
        self, profile: Profile, current: Profile | None, *, actor: str, at: datetime | None = None
    ) -> Plan:
        last = current.revision or 0 if current else await self._last_revision(profile.name)
        stamp = {"revision": last + 1, "updated_by": actor, "updated_at": at or utcnow()}
        new = profile.model_copy(update=stamp)
        return Plan(current=current, new=new, diff=diff(current, new))

    async def last_revision(self, name: str) -> int:
        """Highest revision ever stored under `name`, deletes included."""
        return await self._last_revision(name)

    async def _last_revision(self, name: str) -> int:
        """Highest revision ever stored under `name`, deletes included (a re-created profile
        continues from it)."""
        return max(
            (
                (e.value.revision or 0) if e.value is not None else (e.signed_revision or 0)
                for e in await self.bucket.history(name)
            ),
            default=0,
        )

    async def apply(
        self,
        profile: Profile,
        *,
        actor: str,
        expect_revision: int | None = None,
        at: datetime | None = None,
    ) -> Plan:
        """Store `profile` as the next revision, unless unchanged. Compare-and-set: raises
        `ConflictError` if `expect_revision` is not the current one or a writer got in first.
        `at`: the revision's `updated_at` (default now), what its rollout's state names."""
        current, sequence = await self._current(profile.name)
        current_revision = current.revision or 0 if current else 0
        if expect_revision is not None and expect_revision != current_revision:
            msg = (
                f"profile {profile.name!r} is at revision {current_revision}, not {expect_revision}: "
                "someone changed it; review `fleetbus profile diff` and apply again"
            )
            raise ConflictError(msg)
        plan = await self._plan(profile, current, actor=actor, at=at)
        if not plan.changed:
            return plan
        try:
            await self.bucket.update(profile.name, plan.new, last=sequence, revision=plan.new.revision)
        except ConflictError as exc:
            latest, _ = await self._current(profile.name)
            now = latest.revision if latest else "deleted"
            msg = f"profile {profile.name!r} changed while applying (now at revision {now}); apply again"
            raise ConflictError(msg) from exc
        return plan

    async def resign(self, name: str, *, actor: str, at: datetime | None = None) -> Profile:
        """Store the current content of `name` again as the next revision: signed with the
        signer this store has now (a key rotation), whatever signed it before."""
        current, sequence = await self._current(name)
        if current is None:
            msg = f"no profile named {name!r}"
            raise MissingError(msg)
        revision = max(current.revision or 0, await self._last_revision(name)) + 1
        new = current.model_copy(
            update={"revision": revision, "updated_by": actor, "updated_at": at or utcnow()}
        )
        await self.bucket.update(name, new, last=sequence, revision=revision)
        return new

    async def delete(self, name: str, *, expect_revision: int | None = None) -> Profile:
        """A signed delete; with `expect_revision`, only if that is the current revision
        (`ConflictError` otherwise)."""
        profile = await self.get(name)
        if expect_revision is not None and profile.revision != expect_revision:
            msg = f"profile {name!r} is at revision {profile.revision}, not {expect_revision}"
            raise ConflictError(msg)
        await self.bucket.delete(name, revision=await self._last_revision(name) + 1)
        return profile


@dataclass(frozen=True)
class StoredOverride:
    key: str
    override: Override


class OverrideStore:
    """Overrides in the hub's `overrides` bucket, keyed `edge.<id>` or `group.<name>`."""

    def __init__(self, js: JetStream, *, signer: Signer | None = None, guard: Verifier | None = None) -> None:
        self.bucket = Bucket(js, subjects.OVERRIDES_BUCKET, Override, signer=signer, guard=guard)

    async def set(
        self,
        scope: OverrideScope,
        name: str,
        patch: dict[str, Any],
        *,
        owner: str,
        reason: str,
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> StoredOverride:
        created = now or utcnow()
        if expires_at is not None and expires_at <= created:
            msg = f"the expiry {expires_at.isoformat()} is not in the future"
            raise ConfigError(msg)
        try:
            override = Override(
                target=OverrideTarget(scope=scope, name=name),
                patch=patch,
                owner=owner,
                reason=reason,
                created_at=created,
                expires_at=expires_at,
            )
        except ValidationError as exc:
            raise ConfigError(f"invalid override: {exc.errors()[0]['msg']}") from None
        key = subjects.override_key(scope.value, name)
        last = await self.bucket.last_revision(key)
        await self.bucket.update(key, override, last=last, revision=last + 1)
        return StoredOverride(key, override)

    @property
    def undecodable(self) -> list[str]:
        """ "key: why" of each override `all()` skipped (not an override: `override rm` removes it)."""
        return [f"{key}: {why}" for key, why in sorted(self.bucket.undecodable.items())]

    async def all(self) -> list[StoredOverride]:
        self.bucket.undecodable.clear()
        return [StoredOverride(e.key, e.value) for e in await self.bucket.current() if e.value is not None]

    async def resign(self, key: str) -> None:
        """Store the override under `key` again, signed with this store's signer now."""
        entry = await self.bucket.get(key)
        if entry is None or entry.value is None:
            msg = f"no override under {key!r}"
            raise MissingError(msg)
        last = await self.bucket.last_revision(key)
        await self.bucket.update(key, entry.value, last=last, revision=last + 1)

    async def remove(self, scope: OverrideScope, name: str) -> None:
        """Delete the override of `scope` `name`, also one whose value cannot be read."""
        key = subjects.override_key(scope.value, name)
        if key not in await self.bucket.live_keys(key):
            msg = f"no override for {scope.value} {name!r}; `fleetbus override ls` lists them"
            raise MissingError(msg)
        await self.bucket.delete(key, revision=await self.bucket.last_revision(key) + 1)
