"""Staged rollouts (docs/rollouts.md): how a new profile revision reaches its edges in waves.

`RolloutSpec` is what an operator writes (strict: `schemas.authoring`); `RolloutState` is
what the hub's rollout controller keeps per rollout and decides with
`fleetbus.core.rollout`.
"""

import re
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from schemas.base import Message, Name
from schemas.selector import LabelSelector

if TYPE_CHECKING:
    from schemas.profile import Profile

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def seconds(value: Any) -> Any:
    """`90`, `"90s"`, `"10m"`, `"2h"`, `"1d"` as seconds; anything else is left for
    validation to refuse."""
    if isinstance(value, str) and (found := _DURATION.match(value)):
        return float(found.group(1)) * _UNIT[found.group(2) or "s"]
    return value


Seconds = Annotated[float, BeforeValidator(seconds), Field(ge=0)]
"""A duration: a number of seconds, or `500ms`, `30s`, `10m`, `2h`, `1d`."""


class OfflinePolicy(StrEnum):
    """What a wave does with its edges that are offline or unreachable when it starts."""

    SKIP = "skip"  # leave them out of the wave's gate (they converge when they return)
    WAIT = "wait"  # hold the wave until they return and converge (or its wave_timeout)
    FAIL = "fail"  # count each as a failure


class FailurePolicy(StrEnum):
    HALT = "halt"  # the rollout stops where it is
    ROLLBACK = "rollback"  # and the failed wave's edges go back to the previous revision


class Wave(BaseModel):
    """One wave: the edges a selector matches, or a stable `percent` of those not yet taken."""

    model_config = ConfigDict(extra="allow")

    name: Name
    selector: LabelSelector | None = None
    percent: float | None = Field(default=None, gt=0, le=100)

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> "Wave":
        if (self.selector is None) == (self.percent is None):
            msg = f"wave {self.name!r}: give either `selector` or `percent` (of the edges not yet taken)"
            raise ValueError(msg)
        return self


class RolloutSpec(BaseModel):
    """How a profile's new revisions roll out (the profile's `rollout`)."""

    model_config = ConfigDict(extra="allow")

    waves: list[Wave] = Field(min_length=1, max_length=16)
    max_failures: int | str = Field(
        default=0, description='failed edges tolerated per wave: a number, or a share such as "5%"'
    )
    soak: Seconds = 0.0
    wave_timeout: Annotated[float, BeforeValidator(seconds), Field(gt=0)] = 1800.0
    offline: OfflinePolicy = OfflinePolicy.SKIP
    on_failure: FailurePolicy = FailurePolicy.HALT

    @field_validator("waves")
    @classmethod
    def _names_unique(cls, waves: list[Wave]) -> list[Wave]:
        names = [w.name for w in waves]
        if len(set(names)) != len(names):
            msg = f"wave names must be unique: {', '.join(names)}"
            raise ValueError(msg)
        return waves

    @field_validator("max_failures")
    @classmethod
    def _failures(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 0:
                msg = "max_failures must be 0 or more"
                raise ValueError(msg)
            return value
        found = _PERCENT.match(value)
        if not found or float(found.group(1)) > 100:
            msg = f'max_failures {value!r}: a number of edges, or a share such as "5%"'
            raise ValueError(msg)
        return value

    def allowed_failures(self, members: int) -> int:
        """How many failed edges a wave of `members` edges tolerates."""
        if isinstance(self.max_failures, int):
            return self.max_failures
        share = float(self.max_failures.strip().rstrip("%"))
        return int(members * share / 100)


class RolloutStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETE = "complete"
    HALTED = "halted"  # a wave failed its gate; the rollout stopped where it was
    ROLLED_BACK = "rolled_back"  # ... and the failed wave's edges went back
    ABORTED = "aborted"  # an operator stopped it


FINAL = (RolloutStatus.COMPLETE, RolloutStatus.HALTED, RolloutStatus.ROLLED_BACK, RolloutStatus.ABORTED)


class WaveState(BaseModel):
    """Where one wave is: when it started, when all its edges had converged (its soak began),
    when it passed; its failed edges (why) and the edges it left out (offline at its start)."""

    model_config = ConfigDict(extra="allow")

    started_at: datetime | None = None
    converged_at: datetime | None = None
    passed_at: datetime | None = None
    failed: dict[str, str] = Field(default_factory=dict)
    skipped: list[str] = Field(default_factory=list)


class Step(BaseModel):
    """One transition of a rollout, as `rollout status` lists it (also an AUDIT record)."""

    model_config = ConfigDict(extra="allow")

    at: datetime
    kind: str  # started, wave_started, wave_converged, wave_passed, edge_failed, halted, ...
    message: str
    wave: str | None = None
    edge: str | None = None


STEPS_KEPT = 64  # the newest transitions a state keeps (all of them are in AUDIT)


class RolloutState(Message):
    """One rollout: revision `revision` of profile `profile`, replacing `previous`."""

    SCHEMA: ClassVar[str] = "fleet.rollout"

    profile: Name
    revision: int = Field(ge=1)
    previous: int | None = Field(default=None, ge=1, description="None: a new profile (nothing to keep)")
    spec: RolloutSpec
    status: RolloutStatus = RolloutStatus.RUNNING
    wave: int = Field(default=0, ge=0, description="index of the active wave (len(waves) once complete)")
    waves: list[WaveState] = Field(default_factory=list)
    members: dict[str, int] = Field(
        default_factory=dict, description="edge -> the wave that took it, fixed the first time it is seen"
    )
    promoted: bool = False  # the active wave's soak ends as soon as it converged
    paused_for: float = 0.0  # seconds the active wave spent paused (its deadlines move by that)
    paused_at: datetime | None = None
    updated_at: datetime | None = None
    started_by: str = ""
    reason: str = Field(
        default="", description="why it stopped: the failures, the operator, a newer revision"
    )
    rollback: int | None = Field(
        default=None,
        ge=1,
        description="the revision that restored the previous content (on_failure: rollback)",
    )
    rollback_of: int | None = Field(
        default=None, ge=1, description="set on a rollback revision's record: the revision it rolled back"
    )
    steps: list[Step] = Field(default_factory=list, description=f"the newest {STEPS_KEPT} transitions")
    stamp: datetime | None = Field(
        default=None,
        description="the `updated_at` of the revision it rolls out: a state naming a revision whose "
        "record says otherwise is not that revision's (a leftover of an apply that failed)",
    )
    restore_failed: str = Field(default="", description="why a rollback could not restore the content")

    def rolls_out(self, profile: "Profile") -> bool:
        """Whether this is the rollout of `profile` (its revision, as stored)."""
        return self.revision == profile.revision and (self.stamp is None or self.stamp == profile.updated_at)

    @property
    def key(self) -> str:
        """What identifies this rollout (`base#7`): percent waves choose per key."""
        return f"{self.profile}#{self.revision}"
