"""The hub's profile authority: profiles and overrides in the hub's KV buckets.

A profile's `revision` counts its own versions (1, 2, 3, ...), carried in the stored document
so every replica and every ApplyResult names the same number (a replica's stream sequences
differ from the hub's). Writes are compare-and-set on the bucket's last sequence for the key,
so two concurrent applies never both win, and `--expect-revision` is checked against what
the hub holds. Values are stored as JSON, readable with any NATS client (`nats kv get`).
"""

import difflib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.errors import NotFoundError as NatsNotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue
from pydantic import ValidationError

from fleetbus.errors import ConfigError, FleetbusError
from schemas import subjects
from schemas.authoring import unknown_keys
from schemas.base import Message, utcnow
from schemas.codec import JSON, check_text, check_tree, decode_body, encode_body
from schemas.errors import DecodeError, PermanentError
from schemas.override import Override, OverrideScope, OverrideTarget
from schemas.profile import Profile

M = TypeVar("M", bound=Message)

# Fields the authority sets; not part of what a user writes or what a diff compares.
STAMPS = {"revision", "updated_by", "updated_at"}


class ConflictError(PermanentError):
    """A compare-and-set lost: someone else changed the profile first."""


class NotFoundError(PermanentError):
    pass


def load_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON file whose top level is a mapping; errors name the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        msg = f"{path}: cannot read: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        raise ConfigError(msg) from exc
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        msg = f"{path}: not valid YAML or JSON: {exc}"
        raise ConfigError(msg) from exc
    except RecursionError as exc:
        msg = f"{path}: nested too deeply to read"
        raise ConfigError(msg) from exc
    except (ValueError, TypeError) as exc:  # e.g. an integer of 5,000 digits
        msg = f"{path}: cannot read a value: {exc}"
        raise ConfigError(msg) from exc
    # e.g. aliases of aliases that expand to billions of values; "\ud800", which cannot be sent
    if problem := check_tree(data) or check_text(data):
        msg = f"{path}: refused: {problem}"
        raise ConfigError(msg)
    if not isinstance(data, dict):
        msg = f"{path}: expected a mapping at the top level, got {type(data).__name__}"
        raise ConfigError(msg)
    return data


def load_document(path: Path, cls: type[M]) -> M:
    """Read a YAML or JSON file as a `cls`; errors name the file, the field path and the problem."""
    data = load_mapping(path)
    # Strict where people write: the models accept unknown fields (from newer senders on the
    # wire), a person's typo must not pass that way.
    if unknown := unknown_keys(cls, data):
        noun = cls.SCHEMA.removeprefix("fleet.")
        raise ConfigError("\n".join([f"{path}: not a valid {noun}:", *(f"  {u}" for u in unknown)]))
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: not a valid {cls.SCHEMA.removeprefix('fleet.')}:"]
        for item in exc.errors():
            # A dict key's own error ends its path with "[key]": the key is the place.
            where = ".".join(str(p) for p in item["loc"] if p not in ("[key]", "")) or "<document>"
            got = f" (got {item['input']!r})" if item["type"] != "missing" else ""
            lines.append(f"  {where}: {item['msg']}{got}")
        raise ConfigError("\n".join(lines)) from None


def content(profile: Profile) -> dict[str, Any]:
    """What a user wrote: the profile without the authority's stamps, and without the fields
    left at their defaults (a diff shows the change, not `replicas: null` on every line)."""
    return profile.model_dump(mode="json", exclude=STAMPS, exclude_defaults=True)


def render_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def diff(old: Profile | None, new: Profile, *, old_label: str = "current", new_label: str = "new") -> str:
    """Unified diff of two profiles' content (empty when equal)."""
    before = render_yaml(content(old)).splitlines(keepends=True) if old else []
    after = render_yaml(content(new)).splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, fromfile=old_label, tofile=new_label))


@dataclass(frozen=True)
class Plan:
    """What `apply` would do: the profile as it would be stored, and the diff to the current."""

    current: Profile | None
    new: Profile
    diff: str

    @property
    def changed(self) -> bool:
        return self.current is None or content(self.current) != content(self.new)


def _decode(cls: type[M], bucket: str, key: str, value: bytes | None) -> M:
    return decode_body(cls, value or b"", subject=subjects.kv_subject(bucket, key))


class ProfileStore:
    """Profiles in the hub's `profiles` bucket, keyed by name."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None
        self.undecodable: list[str] = []  # keys `all()` skipped, with why

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await _bucket(self.js, subjects.PROFILES_BUCKET)
        return self._kv

    async def _current(self, name: str) -> tuple[Profile | None, int]:
        """The stored profile and the bucket sequence of the key's latest entry (0 if absent).

        If the latest value is not a profile (written by something else than fleetbus), the
        last good revision stands, exactly as on the edges, which skip such values and keep
        the last good one; the key is listed in `undecodable`.
        """
        kv = await self.kv()
        try:
            entry = await kv.get(name)
        except KeyNotFoundError:
            return None, 0
        sequence = entry.revision or 0
        try:
            return _decode(Profile, subjects.PROFILES_BUCKET, name, entry.value), sequence
        except DecodeError as exc:
            self.undecodable.append(f"{name}: {exc.reason}")
        good = await self.history(name, since_delete=True)
        return (good[-1] if good else None), sequence

    async def all(self) -> list[Profile]:
        await self.kv()
        self.undecodable = []
        names = await keys(self.js, subjects.PROFILES_BUCKET)
        found = [p for p in [(await self._current(n))[0] for n in names] if p is not None]
        return sorted(found, key=lambda p: (p.priority, p.name))

    async def history(self, name: str, *, since_delete: bool = False) -> list[Profile]:
        """Every stored revision still in the bucket's history (oldest first); deletes skipped,
        and with `since_delete` so are the revisions before the last delete."""
        found: list[Profile] = []
        for operation, value in await self._entries(name):
            if operation in (KV_DEL, KV_PURGE):
                if since_delete:
                    found.clear()
                continue
            try:
                found.append(_decode(Profile, subjects.PROFILES_BUCKET, name, value))
            except DecodeError:
                continue
        return found

    async def _entries(self, name: str) -> list[tuple[str | None, bytes]]:
        """(KV operation, value) of every entry kept for `name`, oldest first.

        Read message by message (`next` by subject), not with `KeyValue.history()`, whose
        watcher can end before the entries it should deliver (the same nats-py race as
        `keys()`), which would renumber a profile.
        """
        await self.kv()
        stream = f"KV_{subjects.PROFILES_BUCKET}"
        subject = subjects.kv_subject(subjects.PROFILES_BUCKET, name)
        entries: list[tuple[str | None, bytes]] = []
        seq = 1
        while True:
            try:
                msg = await self.js.get_msg(stream, seq=seq, subject=subject, next=True)
            except NatsNotFoundError:
                return entries
            entries.append(((msg.headers or {}).get(KV_OP), msg.data or b""))
            seq = (msg.seq or seq) + 1

    async def get(self, name: str, revision: int | None = None) -> Profile:
        if revision is None:
            profile, _ = await self._current(name)
            if profile is None:
                msg = f"no profile named {name!r}; `fleetbus profile ls` lists them"
                raise NotFoundError(msg)
            return profile
        history = await self.history(name)
        for profile in history:
            if profile.revision == revision:
                return profile
        kept = ", ".join(str(p.revision) for p in history) or "none"
        msg = f"profile {name!r} has no revision {revision} in the hub's history (kept: {kept})"
        raise NotFoundError(msg)

    async def plan(self, profile: Profile, *, actor: str) -> Plan:
        current, _ = await self._current(profile.name)
        last = current.revision or 0 if current else await self._last_revision(profile.name)
        new = profile.model_copy(update={"revision": last + 1, "updated_by": actor, "updated_at": utcnow()})
        return Plan(current=current, new=new, diff=diff(current, new))

    async def _last_revision(self, name: str) -> int:
        """Highest revision ever stored under `name` (a re-created profile continues from it)."""
        return max((p.revision or 0 for p in await self.history(name)), default=0)

    async def apply(self, profile: Profile, *, actor: str, expect_revision: int | None = None) -> Plan:
        """Store `profile` as the next revision, unless unchanged. Compare-and-set: raises
        `ConflictError` if `expect_revision` is not the current one or a writer got in first."""
        kv = await self.kv()
        current, sequence = await self._current(profile.name)
        current_revision = current.revision or 0 if current else 0
        if expect_revision is not None and expect_revision != current_revision:
            msg = (
                f"profile {profile.name!r} is at revision {current_revision}, not {expect_revision}: "
                "someone changed it; review `fleetbus profile diff` and apply again"
            )
            raise ConflictError(msg)
        plan = await self.plan(profile, actor=actor)
        if not plan.changed:
            return plan
        value = encode_body(plan.new, JSON)
        try:
            if sequence:
                await kv.update(profile.name, value, last=sequence)
            else:
                await kv.create(profile.name, value)
        except KeyWrongLastSequenceError as exc:
            latest, _ = await self._current(profile.name)
            now = latest.revision if latest else "deleted"
            msg = f"profile {profile.name!r} changed while applying (now at revision {now}); apply again"
            raise ConflictError(msg) from exc
        return plan

    async def rollback(self, name: str, to: int, *, actor: str) -> Plan:
        """Apply revision `to`'s content again, as a new revision."""
        old = await self.get(name, to)
        return await self.apply(old.model_copy(update=dict.fromkeys(STAMPS)), actor=actor)

    async def delete(self, name: str) -> Profile:
        profile = await self.get(name)
        await (await self.kv()).delete(name)
        return profile


@dataclass(frozen=True)
class StoredOverride:
    key: str
    override: Override


class OverrideStore:
    """Overrides in the hub's `overrides` bucket, keyed `edge.<id>` or `group.<name>`."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

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
            msg = f"--expires {expires_at.isoformat()} is not in the future"
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
        kv = await _bucket(self.js, subjects.OVERRIDES_BUCKET)
        key = subjects.override_key(scope.value, name)
        await kv.put(key, encode_body(override, JSON))
        return StoredOverride(key, override)

    async def all(self) -> list[StoredOverride]:
        kv = await _bucket(self.js, subjects.OVERRIDES_BUCKET)
        found = []
        for key in await keys(self.js, subjects.OVERRIDES_BUCKET):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue
            found.append(StoredOverride(key, _decode(Override, subjects.OVERRIDES_BUCKET, key, entry.value)))
        return found

    async def remove(self, scope: OverrideScope, name: str) -> None:
        kv = await _bucket(self.js, subjects.OVERRIDES_BUCKET)
        key = subjects.override_key(scope.value, name)
        try:
            await kv.get(key)
        except KeyNotFoundError:
            msg = f"no override for {scope.value} {name!r}; `fleetbus override ls` lists them"
            raise NotFoundError(msg) from None
        await kv.delete(key)


async def keys(js: JetStreamContext, bucket: str) -> list[str]:
    """Keys ever written to `bucket` (deleted ones included: their `get` raises KeyNotFound).

    From the stream's per-subject state rather than `KeyValue.keys()`, whose watcher in
    nats-py 2.16 returns `NoKeysError` for a non-empty bucket about 1 call in 100 (measured:
    2 of 300 back to back), which made `fleetbus status` flash "0 converged".
    """
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=subjects.kv_subject(bucket))
    prefix = subjects.kv_subject(bucket, "")
    return sorted(s.removeprefix(prefix) for s in (info.state.subjects or {}))


async def _bucket(js: JetStreamContext, name: str) -> KeyValue:
    try:
        return await js.key_value(name)
    except BucketNotFoundError as exc:
        msg = f"the hub has no {name!r} bucket yet: is the hub daemon running? (`fleetbus dev up`)"
        raise FleetbusError(msg) from exc
