"""The fleetbus wire contract: message models, subjects, codec and headers. No I/O here."""

from schemas.base import Message, SiteId
from schemas.catalog import MESSAGE_TYPES
from schemas.enrollment import (
    AdmissionCommand,
    AdmissionReply,
    AdmittedEdge,
    Enrollment,
    EnrollmentReply,
    JoinReply,
    JoinRequest,
)
from schemas.event import ApplyResult, ApplyStatus, Event, EventKind, Severity
from schemas.heartbeat import Heartbeat, Tier
from schemas.inventory import InventorySnapshot
from schemas.override import Override, OverrideScope, OverrideTarget
from schemas.presence import PresenceChange, PresenceState
from schemas.profile import Component, LabelSelector, Profile, ProfileSpec

__all__ = [
    "MESSAGE_TYPES",
    "AdmissionCommand",
    "AdmissionReply",
    "AdmittedEdge",
    "ApplyResult",
    "ApplyStatus",
    "Component",
    "Enrollment",
    "EnrollmentReply",
    "Event",
    "EventKind",
    "Heartbeat",
    "InventorySnapshot",
    "JoinReply",
    "JoinRequest",
    "LabelSelector",
    "Message",
    "Override",
    "OverrideScope",
    "OverrideTarget",
    "PresenceChange",
    "PresenceState",
    "Profile",
    "ProfileSpec",
    "Severity",
    "SiteId",
    "Tier",
]
