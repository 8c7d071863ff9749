"""Hypothesis strategies for every message type (explicit, so every field is exercised)."""

from datetime import UTC, datetime

from hypothesis import strategies as st

from schemas import (
    AdmissionCommand,
    AdmissionReply,
    AdmittedEdge,
    ApplyResult,
    ApplyStatus,
    Component,
    Enrollment,
    EnrollmentReply,
    Event,
    EventKind,
    Heartbeat,
    InventorySnapshot,
    JoinReply,
    JoinRequest,
    LabelSelector,
    Override,
    OverrideScope,
    OverrideTarget,
    PresenceChange,
    PresenceState,
    Profile,
    ProfileSpec,
    Severity,
    Tier,
)
from schemas.desk import AuditRecord, DeskNonce, DeskReply, DeskRequest, OperatorRecord, Role
from schemas.device import DeviceCommand, DeviceCommandReply, DeviceCredentials
from schemas.inventory import AppliedState, HostFacts, LinkState, StreamBacklog
from schemas.lease import Lease
from schemas.profile import LabelRequirement, SelectorOperator
from schemas.secret import SealedBundle, SealedSecret, SecretRecord

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,15}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}", fullmatch=True)
times = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
counts = st.integers(min_value=0, max_value=2**53)
floats = st.floats(min_value=0, max_value=1e9, allow_nan=False)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
labels = st.dictionaries(names, st.text(max_size=12), max_size=4)


@st.composite
def requirements(draw: st.DrawFn) -> LabelRequirement:
    op = draw(st.sampled_from(list(SelectorOperator)))
    needs = op in (SelectorOperator.IN, SelectorOperator.NOT_IN)
    values = draw(st.lists(st.text(max_size=8), min_size=1, max_size=3)) if needs else []
    return LabelRequirement(key=draw(names), operator=op, values=values)


components = st.builds(
    Component,
    name=names,
    image=st.text(min_size=1, max_size=30),
    version=st.text(min_size=1, max_size=10),
    config=json_objects,
)


@st.composite
def profile_specs(draw: st.DrawFn) -> ProfileSpec:
    comps = draw(st.lists(components, max_size=4, unique_by=lambda c: c.name))
    return ProfileSpec(components=comps, config=draw(json_objects))


profiles = st.builds(
    Profile,
    name=names,
    selector=st.builds(
        LabelSelector, match_labels=labels, match_expressions=st.lists(requirements(), max_size=3)
    ),
    priority=st.integers(-1000, 1000),
    spec=profile_specs(),
    description=st.text(max_size=40),
    revision=st.none() | st.integers(1, 2**40),
    updated_by=st.none() | st.text(max_size=10),
    updated_at=st.none() | times,
)
overrides = st.builds(
    Override,
    target=st.builds(OverrideTarget, scope=st.sampled_from(list(OverrideScope)), name=ids),
    patch=json_objects,
    owner=st.text(min_size=1, max_size=10),
    reason=st.text(min_size=1, max_size=20),
    created_at=times,
    expires_at=st.none() | times,
)
inventories = st.builds(
    InventorySnapshot,
    region=ids,
    edge=ids,
    seq=counts,
    observed_at=times,
    received_at=st.none() | times,
    labels=labels,
    host=st.builds(
        HostFacts,
        hostname=st.text(max_size=10),
        cpu_count=st.integers(0, 512),
        memory_bytes=counts,
        disk_total_bytes=counts,
        disk_free_bytes=counts,
        boot_time=st.none() | times,
    ),
    applied=st.none()
    | st.builds(
        AppliedState,
        desired_hash=st.text(min_size=1, max_size=64),
        profile_revisions=st.dictionaries(names, st.integers(1, 1000), max_size=3),
        applied_at=times,
        driver=st.sampled_from(["local", "kubernetes"]),
    ),
    link=st.none() | st.builds(LinkState, upstream_connected=st.booleans(), since=st.none() | times),
    backlog=st.lists(
        st.builds(
            StreamBacklog,
            stream=names,
            pending=counts,
            oldest_age_seconds=floats,
            evicted=counts,
            evicted_unforwarded=counts,
            forwarded_seq=counts,
        ),
        max_size=3,
    ),
    facts=json_objects,
)
heartbeats = st.builds(
    Heartbeat,
    tier=st.sampled_from(list(Tier)),
    site=ids,
    region=ids,
    seq=counts,
    sent_at=times,
    interval_seconds=st.floats(min_value=0.001, max_value=3600),
    uptime_seconds=floats,
)
presences = st.builds(
    PresenceChange,
    region=ids,
    edge=st.none() | ids,
    state=st.sampled_from(list(PresenceState)),
    previous=st.none() | st.sampled_from(list(PresenceState)),
    changed_at=times,
    last_seen=st.none() | times,
    reason=st.text(max_size=20),
)
apply_results = st.builds(
    ApplyResult,
    desired_hash=st.text(min_size=1, max_size=64),
    profile_revisions=st.dictionaries(names, st.integers(1, 1000), max_size=3),
    status=st.sampled_from(list(ApplyStatus)),
    driver=st.sampled_from(["local", "kubernetes"]),
    duration_seconds=floats,
    error=st.none() | st.text(max_size=30),
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    kind = draw(
        st.sampled_from([k.value for k in EventKind]) | st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
    )
    result = draw(apply_results) if kind == EventKind.APPLY_RESULT else None
    return Event(
        id=draw(st.uuids()).hex,
        kind=kind,
        region=draw(ids),
        edge=draw(ids),
        observed_at=draw(times),
        severity=draw(st.sampled_from(list(Severity))),
        message=draw(st.text(max_size=30)),
        data=draw(json_objects),
        apply_result=result,
    )


enrollments = st.builds(
    Enrollment,
    region=ids,
    edge=ids,
    labels=labels,
    hostname=st.text(max_size=10),
    software_version=st.text(max_size=10),
    capabilities=st.lists(st.text(max_size=8), max_size=3),
    requested_at=times,
)

enrollment_replies = st.builds(
    EnrollmentReply,
    region=ids,
    edge=ids,
    accepted=st.booleans(),
    reason=st.text(max_size=20),
    enrolled_at=st.none() | times,
)

join_requests = st.builds(
    JoinRequest,
    region=ids,
    edge=ids,
    token=st.text(max_size=40),
    public_key=st.text(max_size=56),
    machine_id=st.text(max_size=20),
    requested_at=times,
)

join_replies = st.builds(
    JoinReply,
    region=ids,
    edge=ids,
    status=st.sampled_from(["admitted", "pending", "refused"]),
    reason=st.text(max_size=20),
    proof=st.text(max_size=64),
)

admission_commands = st.builds(
    AdmissionCommand,
    region=ids,
    action=st.sampled_from(["approve", "revoke", "list", "issued"]),
    edge=st.none() | ids,
    sent_by=st.text(max_size=10),
    token_id=st.text(max_size=10),
    expires=st.none() | times,
)

admission_replies = st.builds(
    AdmissionReply,
    region=ids,
    ok=st.booleans(),
    reason=st.text(max_size=20),
    edges=st.lists(
        st.builds(
            AdmittedEdge,
            edge=ids,
            status=st.sampled_from(["admitted", "pending", "revoked"]),
            machine_id=st.text(max_size=10),
            public_key=st.text(max_size=10),
            since=st.none() | times,
        ),
        max_size=3,
    ),
    enroll_url=st.text(max_size=20),
)

device_commands = st.builds(
    DeviceCommand,
    region=ids,
    edge=ids,
    device=ids,
    payload=json_objects,
    sent_by=st.text(max_size=10),
    sent_at=times,
)

device_command_replies = st.builds(
    DeviceCommandReply,
    edge=ids,
    device=ids,
    delivered=st.booleans(),
    device_known=st.booleans(),
    device_online=st.booleans(),
    reason=st.text(max_size=20),
)

device_credentials = st.builds(
    DeviceCredentials,
    region=ids,
    edge=ids,
    device=ids,
    action=st.sampled_from(["add", "remove"]),
    password_hash=st.text(max_size=60),
    gateway=st.booleans(),
    sent_by=st.text(max_size=10),
)

small_json = st.dictionaries(
    st.text(max_size=8), st.one_of(st.none(), st.integers(-(2**53), 2**53), st.text(max_size=8)), max_size=3
)
desk_requests = st.builds(
    DeskRequest,
    op=st.sampled_from(["profile.apply", "override.set", "operator.add"]),
    args=small_json,
    operator=st.text(max_size=56),
    issued_at=times,
    nonce=st.text(min_size=8, max_size=64),
    reason=st.text(max_size=20),
)
desk_nonces = st.builds(DeskNonce, operator=st.text(max_size=56), seen_at=times)
desk_replies = st.builds(
    DeskReply,
    ok=st.booleans(),
    error_kind=st.none() | st.sampled_from(["config", "forbidden"]),
    error=st.none() | st.text(max_size=20),
    actor=st.text(max_size=10),
    result=small_json,
)
operator_records = st.builds(
    OperatorRecord,
    name=ids,
    public_key=st.text(max_size=56),
    role=st.sampled_from(Role),
    regions=st.lists(ids, max_size=3),
    added_by=st.text(max_size=10),
    added_at=times,
    revoked_at=st.none() | times,
)
audit_records = st.builds(
    AuditRecord,
    at=times,
    actor=st.text(max_size=10),
    role=st.text(max_size=10),
    op=st.text(min_size=1, max_size=20),
    target=st.text(max_size=20),
    revision=st.none() | counts,
    outcome=st.sampled_from(["ok", "refused", "failed"]),
    detail=st.text(max_size=40),
    reason=st.text(max_size=20),
)
secret_records = st.builds(
    SecretRecord,
    name=ids,
    version=st.integers(1, 2**31),
    sealed=st.text(max_size=40),
    sealed_to=st.text(max_size=56),
    updated_by=st.text(max_size=10),
    updated_at=st.none() | times,
)
sealed_bundles = st.builds(
    SealedBundle,
    edge=ids,
    key=st.text(max_size=56),
    secrets=st.dictionaries(
        ids, st.builds(SealedSecret, version=st.integers(1, 2**31), box=st.text(max_size=40)), max_size=3
    ),
)
leases = st.builds(
    Lease,
    holder=st.text(min_size=1, max_size=12),
    since=times,
    ttl_seconds=st.floats(0.1, 60),
)

BY_TYPE = {
    Profile: profiles,
    Override: overrides,
    InventorySnapshot: inventories,
    Heartbeat: heartbeats,
    PresenceChange: presences,
    Event: events(),
    Enrollment: enrollments,
    EnrollmentReply: enrollment_replies,
    JoinRequest: join_requests,
    JoinReply: join_replies,
    AdmissionCommand: admission_commands,
    AdmissionReply: admission_replies,
    DeviceCommand: device_commands,
    DeviceCommandReply: device_command_replies,
    DeviceCredentials: device_credentials,
    DeskRequest: desk_requests,
    DeskReply: desk_replies,
    DeskNonce: desk_nonces,
    OperatorRecord: operator_records,
    AuditRecord: audit_records,
    SecretRecord: secret_records,
    SealedBundle: sealed_bundles,
    Lease: leases,
}
