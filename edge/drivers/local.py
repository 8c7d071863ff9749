"""Driver `local`: the applied state is a JSON file under the site's state dir.

The default for dev fleets and tests, and a useful one for sites whose software reads its
configuration from a file. Writes are atomic (temporary file, fsync, rename): a reader or a
crash never sees half a document.
"""

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.drivers import Applied, DriverError
from fleetbus.core.desired import DesiredState
from schemas.base import utcnow
from schemas.inventory import AppliedState

APPLIED_FILE = "applied.json"


def read_applied(path: Path) -> dict[str, Any] | None:
    """The applied-state record at `path`, `None` if absent or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)


class LocalDriver:
    name = "local"

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / APPLIED_FILE

    async def applied_hash(self) -> str | None:
        record = read_applied(self.path)
        value = record.get("hash") if record else None
        return value if isinstance(value, str) else None

    async def applied(self) -> AppliedState | None:
        record = read_applied(self.path)
        if record is None:
            return None
        try:
            return AppliedState(
                desired_hash=record["hash"],
                profile_revisions=record.get("profile_revisions", {}),
                applied_at=record["applied_at"],
                driver=self.name,
            )
        except (KeyError, ValidationError):
            return None  # not a record this driver wrote; the next apply replaces it

    async def apply(self, desired: DesiredState) -> Applied:
        if await self.applied_hash() == desired.hash:
            return Applied(changed=False)
        record = {
            "hash": desired.hash,
            "profile_revisions": desired.profile_revisions,
            "overrides": list(desired.overrides),
            "applied_at": utcnow().isoformat(),
            "document": desired.document,
        }
        try:
            await asyncio.to_thread(write_atomic, self.path, json.dumps(record, indent=2, sort_keys=True))
        except OSError as exc:
            msg = f"cannot write {self.path}: {exc.strerror or exc}"
            raise DriverError(msg) from exc
        return Applied(changed=True)
