"""Driver `local`: the applied state is a JSON file under the site's state dir.

The default for dev fleets and tests, and a useful one for sites whose software reads its
configuration from a file. Writes are atomic (temporary file, fsync, rename): a reader or a
crash never sees half a document.

Secrets the desired state references (`{"secretRef": name, "version": n}` in the document)
are written beside it, one file per secret, `secrets/<name>`, mode 0600, from the plaintext
the edge opened from its sealed bundle; a secret no longer referenced is removed.
"""

import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.drivers import Applied, DriverError
from fleetbus.core.desired import DesiredState
from schemas.base import utcnow
from schemas.inventory import AppliedState

APPLIED_FILE = "applied.json"
SECRETS_DIR = "secrets"


def read_applied(path: Path) -> dict[str, Any] | None:
    """The applied-state record at `path`, `None` if absent or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_atomic(path: Path, text: str | bytes, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    data = text.encode() if isinstance(text, str) else text
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # the mode from the first byte on
    with os.fdopen(fd, "wb") as f:
        f.write(data)
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
        self.secrets_dir = state_dir / SECRETS_DIR

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
            await asyncio.to_thread(self._write_secrets, desired.secrets)
            await asyncio.to_thread(write_atomic, self.path, json.dumps(record, indent=2, sort_keys=True))
        except OSError as exc:
            msg = f"cannot write {self.path}: {exc.strerror or exc}"
            raise DriverError(msg) from exc
        return Applied(changed=True)

    def _write_secrets(self, secrets: Mapping[str, bytes]) -> None:
        """Each secret to `secrets/<name>` (0600, in a 0700 directory); others removed."""
        if not secrets and not self.secrets_dir.exists():
            return
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.secrets_dir.chmod(0o700)  # also one made otherwise before
        for name, value in secrets.items():
            write_atomic(self.secrets_dir / name, value, mode=0o600)
        for path in self.secrets_dir.iterdir():
            if path.name not in secrets:
                path.unlink(missing_ok=True)
        fd = os.open(self.secrets_dir, os.O_RDONLY)
        try:
            os.fsync(fd)  # the renames and removals themselves durable
        finally:
            os.close(fd)
