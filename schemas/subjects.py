"""Every subject, stream and bucket name fleetbus uses, built in one place.

Layout (all under `fleet.`):

    fleet.edge.<region>.<edge>.hb               edge heartbeat -> its regional (core NATS)
    fleet.edge.<region>.<edge>.events.<kind>    edge-local EVENTS stream
    $KV.inventory.<region>.<edge>               edge-local INVENTORY stream (last value)
    fleet.edge.<region>.<edge>.cmd.<name>       hub -> edge commands (request/reply)
    fleet.edge.<region>.<edge>.outbox.events.<kind>  an edge's events -> regional EVENTS
    fleet.edge.<region>.<edge>.outbox.inventory      an edge's inventory -> regional INVENTORY
    fleet.edge.<region>.<edge>.enroll           edge -> its regional: enrollment, labels (request/reply)
    fleet.region.<region>.hb                    regional heartbeat -> hub (core NATS)
    fleet.region.<region>.join.<edge>           a new edge redeems its token (request/reply)
    fleet.region.<region>.admission             operator -> regional: approve, revoke, list
    fleet.hub.hello                             hub -> regionals: heartbeat now (core NATS)
    fleet.hub.desk                              operator -> hub: signed write requests (request/reply)
    fleet.hub.audit.<op>                        the hub's AUDIT stream: who did what, why

Everything an edge publishes sits under `fleet.edge.<region>.<edge>.>` (`edge_scope`) or is
its own inventory key `$KV.inventory.<region>.<edge>`, so a leaf-link permission can pin an
edge to its own subjects; a regional likewise to `fleet.region.<region>.>`. Edge-local
stream subjects carry the edge's own id, so no other domain ever binds a stream to them: an
edge pushes its data to its regional on outbox subjects, and the hub sources each regional's
streams (filters, and transforms where the hub needs a key), never by listening on the same
subject (docs/architecture.md#invariants: the double-store trap).
"""

from schemas.base import check_token

PREFIX = "fleet"

# Stream and bucket names (per JetStream domain, so the same name exists on every edge).
EVENTS_STREAM = "EVENTS"
INVENTORY_STREAM = "INVENTORY"
PROFILES_BUCKET = "profiles"
OVERRIDES_BUCKET = "overrides"
PRESENCE_BUCKET = "presence"  # regional: its edges' presence; hub: every region's, sourced
APPLIED_BUCKET = "applied"  # hub: last ApplyResult event per edge, filled by sourcing
INVENTORY_BUCKET = "inventory"  # hub: latest snapshot per edge, filled by sourcing
REGIONS_BUCKET = "regions"  # hub: presence of each regional, as the hub hears it
EDGES_BUCKET = "edges"  # regional: the edges enrolled in its region
AUDIT_STREAM = "AUDIT"  # hub: every write request, allowed or refused
SECRETS_BUCKET = "secrets"  # hub only: each secret sealed to the hub's key
SEALED_BUCKET = "sealed"  # hub -> regional -> edge (its own key only): secrets sealed per edge
# regional -> edge (its own keys only): the profiles and group overrides that concern each edge
ASSIGNED_BUCKET = "assigned"
# hub -> regional: the state of each profile revision's staged rollout (key `<profile>.<revision>`)
ROLLOUTS_BUCKET = "rollouts"
# hub only: who does what only one hub daemon may do (key `hub`; docs/clustering.md#leases)
LEASES_BUCKET = "leases"
# hub only: the operators added at run time (key: the operator's name), which every hub
# daemon renders into its own server's admission files (docs/clustering.md)
OPERATORS_BUCKET = "operators"
# hub only: the nonces of desk requests seen lately (key: the nonce's SHA-256), so that no hub
# daemon takes a replayed request (docs/security.md#one-writer)
NONCES_BUCKET = "nonces"
HUB_DESK = "fleet.hub.desk"

HUB_DOMAIN = "hub"


def _tokens(*parts: str) -> str:
    for part in parts:
        check_token(part)
    return ".".join(parts)


def edge_scope(region: str, edge: str) -> str:
    """Wildcard covering every subject one edge may publish upstream."""
    return f"{PREFIX}.edge.{_tokens(region, edge)}.>"


def edge_heartbeat(region: str, edge: str) -> str:
    return f"{PREFIX}.edge.{_tokens(region, edge)}.hb"


def edge_of(subject: str) -> tuple[str, str] | None:
    """The (region, edge) an edge subject belongs to; None if it is not one."""
    parts = subject.split(".")
    if len(parts) < 4 or parts[0] != PREFIX or parts[1] != "edge":  # fleet.edge.<r>.<e>...
        return None
    return parts[2], parts[3]


def edge_heartbeats(region: str) -> str:
    """What a regional subscribes to: the heartbeats of every edge in its region."""
    return f"{PREFIX}.edge.{_tokens(region)}.*.hb"


def edge_event(region: str, edge: str, kind: str) -> str:
    return f"{PREFIX}.edge.{_tokens(region, edge)}.events.{_tokens(kind)}"


def edge_events(region: str, edge: str) -> str:
    """Subjects of an edge's local EVENTS stream."""
    return f"{PREFIX}.edge.{_tokens(region, edge)}.events.>"


def events(region: str = "*", edge: str = "*", kind: str = ">") -> str:
    """Events of one kind (or all) of one edge, or (wildcards) of every edge."""
    return f"{PREFIX}.edge.{region}.{edge}.events.{kind}"


def apply_results(region: str = "*", edge: str = "*") -> str:
    """ApplyResult events of one edge, or (wildcards) of every edge."""
    return events(region, edge, "apply_result")


def edge_inventory(region: str, edge: str) -> str:
    """Subject of an edge's local INVENTORY stream (one message kept): the edge's key in the
    hub's `inventory` bucket, `$KV.inventory.<region>.<edge>`, so the regional and the hub
    source it with plain filters, no subject transform. It carries the edge's ids like every
    edge-local subject, so no other domain binds it."""
    return kv_subject(INVENTORY_BUCKET, _tokens(region, edge))


def inventories(region: str = "*", edge: str = "*") -> str:
    """Inventory subjects of one edge, or (wildcards) of every edge."""
    return kv_subject(INVENTORY_BUCKET, f"{region}.{edge}")


# Outbox subjects: how an edge's events and snapshots reach its regional. A full edge's
# forwarder (`fleetbus.nats.uplink`) republishes what its own streams stored; a thin edge (no
# nats-server of its own, docs/architecture.md#thin-edges) publishes there directly. The
# regional's EVENTS and INVENTORY bind them and rewrite them on the way in (a stream subject
# transform) to the subjects the edge's own streams store them under.


def outbox_event(region: str, edge: str, kind: str) -> str:
    return f"{PREFIX}.edge.{_tokens(region, edge)}.outbox.events.{_tokens(kind)}"


def outbox_events(region: str, edge: str) -> str:
    """Where an edge's events of every kind go up."""
    return f"{PREFIX}.edge.{_tokens(region, edge)}.outbox.events.>"


def outbox_inventory(region: str, edge: str) -> str:
    return f"{PREFIX}.edge.{_tokens(region, edge)}.outbox.inventory"


def outbox_events_transform(region: str) -> tuple[str, str]:
    """(bound subject, stored subject) of the edges' events in a regional's EVENTS."""
    return (
        f"{PREFIX}.edge.{_tokens(region)}.*.outbox.events.>",
        f"{PREFIX}.edge.{region}.{{{{wildcard(1)}}}}.events.>",
    )


def outbox_inventory_transform(region: str) -> tuple[str, str]:
    """(bound subject, stored subject) of the edges' snapshots in a regional's INVENTORY."""
    return (
        f"{PREFIX}.edge.{_tokens(region)}.*.outbox.inventory",
        kv_subject(INVENTORY_BUCKET, f"{region}.{{{{wildcard(1)}}}}"),
    )


def edge_command(region: str, edge: str, name: str) -> str:
    return f"{PREFIX}.edge.{_tokens(region, edge)}.cmd.{_tokens(name)}"


DEVICE_TELEMETRY = "devices.*.telemetry"  # MQTT devices/<id>/telemetry on the edge's server
DEVICE_STATUS = "devices.*.status"


# Subjects only the site itself may see: they never cross a leaf link, in either direction.
# The rendered nats-server configs deny them on every leaf remote (fleetbus.devfleet.natsconf), so a
# device reading at one edge never reaches another edge, and a command addressed to one
# edge's `devices/<id>/cmd` never reaches a device with the same id elsewhere.
SITE_LOCAL: tuple[str, ...] = (
    "devices.>",  # MQTT devices/<id>/<channel> on the edge's own listener
    "$MQTT.>",  # the MQTT listener's own sessions, retained messages and JetStream calls
    "$JS.EVENT.>",  # JetStream advisories of the site's own streams and consumers
)


def device_command_topic(device: str) -> str:
    """Where a device's MQTT client receives commands (`devices/<id>/cmd`), as a NATS subject."""
    return f"devices.{_tokens(device)}.cmd"


def edge_base(region: str, edge: str) -> str:
    """`fleet.edge.<region>.<edge>`: every subject of one edge starts with this."""
    return f"{PREFIX}.edge.{_tokens(region, edge)}"


def region_base(region: str) -> str:
    """`fleet.region.<region>`: every subject of one regional starts with this."""
    return f"{PREFIX}.region.{_tokens(region)}"


# Where a stream source's messages travel across a leaf link (ExternalStream.deliver). A
# source's consumer lives in the domain it reads from and delivers on `<prefix>.S.<id>`;
# without a prefix that is `$JS.S.<id>`, one namespace for every site, so no link permission
# could tell one site's deliveries from another's. With these prefixes every delivery crossing
# a link is inside the lower site's own subjects (docs/security.md#link-permissions).


def deliver_down(base: str) -> str:
    """Prefix of the deliveries a site receives from the tier above (its replicas)."""
    return f"{base}.in"


def deliver_up(base: str) -> str:
    """Prefix of the deliveries the tier above receives from a site (its streams, sourced)."""
    return f"{base}.up"


def region_scope(region: str) -> str:
    return f"{PREFIX}.region.{_tokens(region)}.>"


def regional_heartbeat(region: str) -> str:
    return f"{PREFIX}.region.{_tokens(region)}.hb"


def edge_enroll(region: str, edge: str) -> str:
    """Where a linked edge (re)registers with its regional, with its labels (request/reply);
    under the edge's own subjects, so its link permission pins the id it speaks for."""
    return f"{edge_base(region, edge)}.enroll"


def edge_enrolls(region: str) -> str:
    """What a regional subscribes to: every edge of its region registering."""
    return f"{PREFIX}.edge.{_tokens(region)}.*.enroll"


def region_join(region: str, edge: str = "*") -> str:
    """Where a new edge redeems its enrollment token, before its link is admitted."""
    return f"{PREFIX}.region.{_tokens(region)}.join.{edge if edge == '*' else _tokens(edge)}"


def region_admission(region: str) -> str:
    """Where operators approve, revoke and list a regional's edges (request/reply)."""
    return f"{PREFIX}.region.{_tokens(region)}.admission"


# The inbox prefix of a new edge redeeming its token as the regional's `join` user.
JOIN_INBOX = "_INBOX.join"


def regional_heartbeats() -> str:
    """What the hub subscribes to: every regional's heartbeat."""
    return f"{PREFIX}.region.*.hb"


def hub_hello() -> str:
    """The hub, ready to hear regionals, asks them to heartbeat now (core NATS, empty body):
    a regional that started first is heard at once, not one heartbeat interval later."""
    return f"{PREFIX}.hub.hello"


def hub_audit(op: str = ">") -> str:
    """Subject of an audit record of operation `op` (`profile.apply`) in the hub's AUDIT."""
    return f"{PREFIX}.hub.audit.{op}"


def inbox_prefix(site: str) -> str:
    """Reply subjects of one site's clients (`_INBOX.<site>.<id>`): a link permission lets a
    site receive only its own replies."""
    return f"_INBOX.{_tokens(site)}"


def js_api_prefix(domain: str) -> str:
    """JetStream API prefix of another tier's domain, e.g. `$JS.hub.API`."""
    return f"$JS.{_tokens(domain)}.API"


# KV keys and the subjects under them. Keys are dotted tokens, so a source filter or a
# watch can select one edge (`edge.<id>`) or one group (`group.<name>`).


def kv_subject(bucket: str, key: str = ">") -> str:
    return f"$KV.{_tokens(bucket)}.{key}"


KV_STREAM_PREFIX = "KV_"


def kv_stream(bucket: str) -> str:
    """The JetStream stream that holds bucket `bucket` (as every NATS client names it)."""
    return f"{KV_STREAM_PREFIX}{bucket}"


def override_key(scope: str, name: str) -> str:
    """Key of the override for one edge (`edge.<id>`) or one group (`group.<name>`)."""
    return _tokens(scope, name)


# What a regional's `assigned` bucket holds per edge, and where each lands in the edge's replicas
# (docs/architecture.md#data-flows): `<edge>.profile.<name>` -> `profiles/<name>`,
# `<edge>.group.<group>` -> `overrides/group.<group>`.
ASSIGNED_PROFILE = "profile"
ASSIGNED_GROUP = "group"


def assigned_key(edge: str, kind: str, name: str) -> str:
    """Key of one record assigned to `edge` in a regional's `assigned` bucket."""
    return _tokens(edge, kind, name)


def rollout_key(profile: str, revision: int) -> str:
    """Key of the rollout of `profile`'s revision `revision` in the `rollouts` bucket."""
    return _tokens(profile, str(revision))


def assigned_to(edge: str, kind: str | None = None) -> str:
    """The keys assigned to `edge` (of one `kind`, else of both), as a wildcard key."""
    return f"{_tokens(edge)}.{_tokens(kind) if kind else '*'}.*"


def edge_key(region: str, edge: str) -> str:
    """Key of one edge in the hub's per-edge buckets (`inventory`, `presence`, `applied`)."""
    return _tokens(region, edge)


def split_edge_key(key: str) -> tuple[str, str]:
    """`<region>.<edge>` back to its two ids; ValueError if `key` is not one."""
    region, _, edge = key.partition(".")
    _tokens(region, edge)
    return region, edge
