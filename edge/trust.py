"""What an edge trusts its desired state from (docs/security.md#signed-desired-state).

The hub's signing keys come from a trust anchor the operator controls: the edge's settings
(`trusted_keys`, written by whoever deployed it) or the enrollment token the operator handed
it, whose keys are pinned in `<state_dir>/trust/hub-keys.json` the first time, so a restart
without the token keeps them. Never from the regional.
"""

import json
import os
import secrets
from pathlib import Path

from edge.enrollment import read_token
from fleetbus.runtime import log
from fleetbus.runtime.enrolltoken import TokenError, unverified_claims
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.settings import EdgeSettings, HollowSettings
from fleetbus.runtime.signing import Verifier, check_keys

logger = log.get_logger(__name__)

TRUST_DIR = "trust"
PINNED = "hub-keys.json"
REVISIONS = "revisions.json"


def pinned_keys(state: Path, token: str | None) -> tuple[str, ...]:
    """The hub keys pinned here, after pinning those `token` carries (if it carries any)."""
    path = state / PINNED
    keys: list[str] = json.loads(path.read_text()) if path.exists() else []
    if token:
        try:
            carried = unverified_claims(token).hub_keys
        except TokenError:
            carried = ()  # the regional refuses the token and says why; nothing to pin
        new = [k for k in check_keys(carried, field="the enrollment token's hub_keys") if k not in keys]
        if new:
            keys += new
            state.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{PINNED}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            tmp.write_text(json.dumps(keys))
            tmp.replace(path)
            logger.info("pinned the hub's signing keys from the enrollment token", keys=new)
    return tuple(keys)


def verifier_of(settings: EdgeSettings | HollowSettings, metrics: DaemonMetrics) -> Verifier | None:
    """What judges this edge's desired state: the keys it trusts and the highest revision it
    took per key (kept in `<state_dir>/trust/`). None only with `verify_desired_state = false`."""
    if not settings.verify_desired_state:
        logger.warning(
            "UNVERIFIED desired state: this edge applies whatever its replicas hold (measuring only)"
        )
        return None
    state = settings.state_dir / TRUST_DIR
    token = None
    if isinstance(settings, EdgeSettings):  # hollow edges take no tokens
        token = read_token(settings.enroll_token, settings.enroll_token_file)
    keys = (*check_keys(settings.trusted_keys, field="trusted_keys"), *pinned_keys(state, token))
    # Hollow edges keep what they took in memory only: a process of a thousand of them would
    # otherwise write every edge's kept records once per burst (most of its CPU in a fan-out).
    kept = state / REVISIONS if isinstance(settings, EdgeSettings) else None
    return Verifier(keys, state=kept, metrics=metrics)
