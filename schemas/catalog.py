"""The list of message types: what `schema export` writes and the golden tests cover."""

from schemas.base import Message
from schemas.desk import AuditRecord, DeskNonce, DeskReply, DeskRequest, OperatorRecord
from schemas.device import DeviceCommand, DeviceCommandReply, DeviceCredentials
from schemas.enrollment import (
    AdmissionCommand,
    AdmissionReply,
    Enrollment,
    EnrollmentReply,
    JoinReply,
    JoinRequest,
)
from schemas.event import Event
from schemas.heartbeat import Heartbeat
from schemas.inventory import InventorySnapshot
from schemas.lease import Lease
from schemas.override import Override
from schemas.presence import PresenceChange
from schemas.profile import Profile
from schemas.secret import SealedBundle, SecretRecord

MESSAGE_TYPES: tuple[type[Message], ...] = (
    Profile,
    Override,
    InventorySnapshot,
    Heartbeat,
    PresenceChange,
    Event,
    Enrollment,
    EnrollmentReply,
    JoinRequest,
    JoinReply,
    AdmissionCommand,
    AdmissionReply,
    DeviceCommand,
    DeviceCommandReply,
    DeviceCredentials,
    DeskRequest,
    DeskReply,
    DeskNonce,
    OperatorRecord,
    AuditRecord,
    SecretRecord,
    SealedBundle,
    Lease,
)
