"""Who may publish and subscribe to what, per identity: the rules every nats-server enforces.

Pure: a role and its site ids in, allow-lists of subjects out. `fleetbus.devfleet.natsconf`
renders them into each server's `authorization` block, and docs/security.md's table is
generated from `table()`. nats-server checks a permission on the subject as the client or
leaf link sends it, before any domain mapping, so JetStream calls across a link are named
here with their domain prefix (`$JS.<domain>.API.…`); `$JS.API.>` itself is never allowed
across a link (and leaf links block it anyway).

What crosses a leaf link, and in which direction, was read off a traced nats-server 2.15.1
(docs/security.md#what-crosses-a-link):

- a stream in the lower domain sourcing a stream of the upper one asks for a consumer on
  `$JS.<upper>.API.CONSUMER.CREATE.<stream>.<name>[.<filter>]` (reply `$JSC.R.<id>`), then
  receives on its deliver prefix (`subjects.deliver_down`) and answers flow control on
  `$JS.FC.<stream>.…`;
- the upper domain sourcing the lower one (the hub sourcing a regional) asks through
  `$JS.<lower>.API.>` and receives on `subjects.deliver_up`; a regional does not source its
  edges: they push to it (`fleetbus.nats.uplink`), so no call reaches into an edge's domain;
- a link's publish permission is what the lower site may send up, its subscribe permission
  what the upper site lets it receive (its interest is not even forwarded otherwise).
"""

from dataclasses import dataclass

from schemas import subjects
from schemas.subjects import (
    ASSIGNED_BUCKET,
    HUB_DOMAIN,
    LEASES_BUCKET,
    NONCES_BUCKET,
    OPERATORS_BUCKET,
    OVERRIDES_BUCKET,
    PROFILES_BUCKET,
    ROLLOUTS_BUCKET,
    SEALED_BUCKET,
    SECRETS_BUCKET,
    kv_stream,
)


@dataclass(frozen=True)
class Permissions:
    """Allow-lists; anything not listed is refused by the server."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # Refused even where `publish`/`subscribe` allow (nats-server's deny wins over allow).
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()


def _consumer_create(domain: str, bucket: str, key: str | None = None) -> tuple[str, ...]:
    """The API subjects a source or watch of `bucket` in `domain` creates its consumer on.
    With `key`, only a consumer filtered to that key: a single-filter consumer names its
    filter in the subject, and the server refuses a request whose body filters otherwise."""
    stream = kv_stream(bucket)
    create = f"{subjects.js_api_prefix(domain)}.CONSUMER.CREATE.{stream}"
    if key:
        return (f"{create}.*.{subjects.kv_subject(bucket, key)}",)
    # An unfiltered source asks on the stream's subject alone (its body may filter: any key
    # of this one stream), a named consumer on `.<name>[.<filter>]`.
    return (create, f"{create}.*", f"{create}.*.>")


def _flow_control(bucket: str) -> tuple[str, ...]:
    """Flow-control answers of a source reading `bucket` one tier up (with and without the
    domain-qualified form the server also uses)."""
    stream = kv_stream(bucket)
    return (f"$JS.FC.{stream}.>", f"$JS.FC.*.*.{stream}.>")


def regional_link(region: str) -> Permissions:
    """Regional `region` at the hub (its leaf link, and its daemon's requests through it).

    It may send its own heartbeats and deliveries, read the profiles, overrides, sealed and
    rollouts buckets (its replicas' sources), answer the hub's calls into its own domain and the hub's
    commands to its edges. It reaches no stream-management API of the hub.
    """
    base = subjects.region_base(region)
    return Permissions(
        publish=(
            f"{base}.>",
            *_consumer_create(HUB_DOMAIN, PROFILES_BUCKET),
            *_consumer_create(HUB_DOMAIN, OVERRIDES_BUCKET),
            *_consumer_create(HUB_DOMAIN, SEALED_BUCKET),
            *_consumer_create(HUB_DOMAIN, ROLLOUTS_BUCKET),
            *_flow_control(PROFILES_BUCKET),
            *_flow_control(OVERRIDES_BUCKET),
            *_flow_control(SEALED_BUCKET),
            *_flow_control(ROLLOUTS_BUCKET),
            f"{subjects.js_api_prefix(HUB_DOMAIN)}.INFO",  # the upstream probe
            "$JSC.R.*",  # answers to the hub's calls into this domain
            "_INBOX.>",  # answers to requests from the hub (commands to edges)
        ),
        subscribe=(
            f"{base}.>",
            f"{PREFIX_EDGE}.{region}.>",  # commands to the region's edges
            subjects.hub_hello(),
            f"{subjects.js_api_prefix(region)}.>",  # the hub sourcing this region's streams
            "$JSC.R.*",
            "$JS.FC.>",
            f"{subjects.inbox_prefix(region)}.>",
        ),
    )


PREFIX_EDGE = f"{subjects.PREFIX}.edge"


def edge_link(region: str, edge: str) -> Permissions:
    """Edge `edge` at its regional (its leaf link, and its daemon's requests through it).

    It may publish only under its own subjects (its events and inventory go up on its outbox
    subjects, which the regional's streams bind), ask to enroll, and read only what concerns
    it: its own keys of the regional's `assigned` bucket (the profiles that select it, its
    groups' overrides), its own override and its own sealed secrets. It reaches no
    stream-management API and no other edge's keys, and nothing reaches into its domain.
    """
    base = subjects.edge_base(region, edge)
    api = subjects.js_api_prefix(region)
    return Permissions(
        publish=(
            f"{base}.>",  # its heartbeats, outbox, enrollment (labels), command answers
            # Its profiles and its groups' overrides (`<edge>.profile.*`, `<edge>.group.*`).
            *_consumer_create(region, ASSIGNED_BUCKET, subjects.assigned_to(edge)),
            *_consumer_create(region, OVERRIDES_BUCKET, subjects.override_key("edge", edge)),
            *_consumer_create(region, SEALED_BUCKET, edge),  # its own secrets only
            *_flow_control(ASSIGNED_BUCKET),
            *_flow_control(OVERRIDES_BUCKET),
            *_flow_control(SEALED_BUCKET),
            f"{api}.INFO",  # the upstream probe
            # Where its forwarder resumes: a direct get of the newest message of its own the
            # regional holds, the subject naming it (docs/security.md).
            f"{api}.DIRECT.GET.{subjects.EVENTS_STREAM}.{base}.>",
            f"{api}.DIRECT.GET.{subjects.INVENTORY_STREAM}.{subjects.edge_inventory(region, edge)}",
            "_INBOX.>",  # answers to commands
        ),
        subscribe=(
            f"{base}.>",
            "$JSC.R.*",  # the regional's answers to its replicas' consumer requests
            f"{subjects.inbox_prefix(edge)}.>",
        ),
    )


def joiner(region: str) -> Permissions:
    """Anyone holding an enrollment token, at the regional's client port before the edge's
    key is admitted (user `join`, no password): it may ask to redeem a token and read the
    answers, nothing else. The token is checked by the regional daemon (a signature); the
    answer carries an HMAC keyed by the token."""
    return Permissions(publish=(subjects.region_join(region),), subscribe=(f"{subjects.JOIN_INBOX}.>",))


def device(device_id: str) -> Permissions:
    """An MQTT device at its edge (`fleetbus device add`): its own topics `devices/<id>/…`,
    and its own command topic to receive."""
    base = f"devices.{device_id}"
    return Permissions(publish=(f"{base}.>",), subscribe=(f"{base}.cmd",))


def gateway() -> Permissions:
    """A site gateway at its edge (`fleetbus device add --gateway`): it speaks for every
    device of the edge, and never on a fleet subject."""
    return Permissions(publish=("devices.>",), subscribe=("devices.*.cmd",))


def simulator(region: str, site: str) -> Permissions:
    """A simulator of hollow edges in `region` (`fleetbus sim`, one connection for all of
    them): the subjects of every edge of the region, and reads of the region's buckets
    (its `assigned` too: every edge's keys). A
    dev and test identity; a real thin edge is an edge (`edge_link`)."""
    return Permissions(
        publish=(
            f"{PREFIX_EDGE}.{region}.*.>",
            "$JS.API.INFO",
            f"$JS.API.STREAM.INFO.{kv_stream(PROFILES_BUCKET)}",
            f"$JS.API.STREAM.INFO.{kv_stream(OVERRIDES_BUCKET)}",
            f"$JS.API.CONSUMER.CREATE.{kv_stream(PROFILES_BUCKET)}",
            f"$JS.API.CONSUMER.CREATE.{kv_stream(PROFILES_BUCKET)}.>",
            f"$JS.API.CONSUMER.CREATE.{kv_stream(OVERRIDES_BUCKET)}",
            f"$JS.API.CONSUMER.CREATE.{kv_stream(OVERRIDES_BUCKET)}.>",
            f"$JS.API.DIRECT.GET.{kv_stream(PROFILES_BUCKET)}.>",
            f"$JS.API.DIRECT.GET.{kv_stream(OVERRIDES_BUCKET)}.>",
            # The profiles the regional hands each of its edges (every edge's keys).
            f"$JS.API.STREAM.INFO.{kv_stream(ASSIGNED_BUCKET)}",
            f"$JS.API.CONSUMER.CREATE.{kv_stream(ASSIGNED_BUCKET)}",
            f"$JS.API.CONSUMER.CREATE.{kv_stream(ASSIGNED_BUCKET)}.>",
            f"$JS.API.DIRECT.GET.{kv_stream(ASSIGNED_BUCKET)}.>",
            # Flow control of its watches (a fan-out to thousands of edges of `assigned` needs it).
            *_flow_control(ASSIGNED_BUCKET),
            *_flow_control(PROFILES_BUCKET),
            *_flow_control(OVERRIDES_BUCKET),
            # How far the regional's copy of the hollow edges' streams is (their uplinks).
            f"$JS.API.STREAM.MSG.GET.{subjects.INVENTORY_STREAM}",
            f"$JS.API.STREAM.MSG.GET.{subjects.EVENTS_STREAM}",
            "_INBOX.>",
        ),
        subscribe=(f"{PREFIX_EDGE}.{region}.*.>", f"{subjects.inbox_prefix(site)}.>"),
    )


# A dashboard builder's read-only identity at the hub: read every bucket and stream, change
# nothing, delete nothing (no CONSUMER.DELETE: ephemeral consumers expire by themselves).
_READ_API = (
    "INFO",
    "STREAM.INFO.*",
    "STREAM.NAMES",
    "STREAM.LIST",
    "CONSUMER.INFO.*.*",
    "CONSUMER.CREATE.*",
    "CONSUMER.CREATE.*.>",
    "CONSUMER.MSG.NEXT.*.*",
    "DIRECT.GET.*",
    "DIRECT.GET.*.>",
    "STREAM.MSG.GET.*",
)


def viewer() -> Permissions:
    """Read-only, at the hub: dashboards in any language subscribe to buckets and streams.
    It may ask the hub's desk, which refuses its writes (and records that it tried). An
    operator of the `operator` role has the same: everything it may change, it changes through
    the desk, which checks its role and regions."""
    return Permissions(
        publish=(*(f"$JS.API.{call}" for call in _READ_API), "$JS.FC.>", subjects.HUB_DESK),
        subscribe=("_INBOX.>",),
    )


# The stream API calls that change a stream or what it holds.
_CHANGE_API = ("DELETE", "PURGE", "RESTORE", "MSG.DELETE")

# What only the hub itself writes: desired state, operators, the audit trail.
HUB_OWNED = (
    PROFILES_BUCKET,
    OVERRIDES_BUCKET,
    SECRETS_BUCKET,
    SEALED_BUCKET,
    ROLLOUTS_BUCKET,
    LEASES_BUCKET,
    OPERATORS_BUCKET,
    NONCES_BUCKET,
)


def admin() -> Permissions:
    """An `admin` at the hub: it may do anything but write what only the hub writes (the
    desired-state buckets and the AUDIT stream, directly or through their streams' API),
    create or change any stream (a stream of its own could republish into those), or listen
    on the hub's desk (where it could answer for the hub). Its writes go through the desk,
    which checks its role and signs (docs/security.md#one-writer)."""
    streams = [kv_stream(b) for b in HUB_OWNED] + [subjects.AUDIT_STREAM]
    api = ("$JS.API", "$JS.*.API")
    return Permissions(
        publish=(">",),
        subscribe=(">",),
        deny_publish=(
            *(subjects.kv_subject(b) for b in HUB_OWNED),
            subjects.hub_audit(),
            *(f"{prefix}.STREAM.{call}.*" for prefix in api for call in ("CREATE", "UPDATE")),
            *(
                f"{prefix}.STREAM.{call}.{stream}"
                for prefix in api
                for call in _CHANGE_API
                for stream in streams
            ),
        ),
        deny_subscribe=(subjects.HUB_DESK,),
    )


def table() -> list[tuple[str, str, Permissions]]:
    """(identity, where it connects, permissions) with example ids, for the docs."""
    return [
        ("regional `r1`", "hub (leaf link)", regional_link("r1")),
        ("edge `r1-e1`", "regional r1 (leaf link)", edge_link("r1", "r1-e1")),
        ("new edge with a token (`join`)", "regional r1 (client)", joiner("r1")),
        ("simulator `r1-hollow`", "regional r1 (client)", simulator("r1", "r1-hollow")),
        ("`admin` operator", "hub (client)", admin()),
        ("`operator` and `viewer` operators, dashboard builders", "hub (client)", viewer()),
        ("device `sensor-1`", "edge (MQTT)", device("sensor-1")),
        ("gateway (`--gateway`)", "edge (MQTT)", gateway()),
    ]


def markdown() -> str:
    """`table()` as the Markdown table in docs/security.md (a test keeps that copy current)."""
    rows = [
        "| identity | connects to | may publish | but not | may subscribe | but not |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for who, where, perms in table():
        cells = (perms.publish, perms.deny_publish, perms.subscribe, perms.deny_subscribe)
        rows.append(
            f"| {who} | {where} | " + " | ".join("<br>".join(f"`{s}`" for s in c) for c in cells) + " |"
        )
    return "\n".join(rows) + "\n"
