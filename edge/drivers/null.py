"""Driver `null`: applies nothing and remembers, in memory, what it was asked to apply.

For hollow edges (`fleetbus sim`): every step of reconciling runs (desired state computed,
"applied", ApplyResult reported) except touching a workload or a disk. Like `local`, it is
keyed by content hash: the same state again is `unchanged`.
"""

from edge.drivers import Applied
from fleetbus.core.desired import DesiredState
from schemas.base import utcnow
from schemas.inventory import AppliedState


class NullDriver:
    name = "null"

    def __init__(self) -> None:
        self.state: AppliedState | None = None

    async def applied(self) -> AppliedState | None:
        return self.state

    async def apply(self, desired: DesiredState) -> Applied:
        if self.state is not None and self.state.desired_hash == desired.hash:
            return Applied(changed=False)
        self.state = AppliedState(
            desired_hash=desired.hash,
            profile_revisions=desired.profile_revisions,
            applied_at=utcnow(),
            driver=self.name,
        )
        return Applied(changed=True)
