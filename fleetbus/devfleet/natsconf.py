"""Render a tier's nats-server configuration from settings.

The output is a plain, commented nats-server config file a user can read and adapt; the dev
fleet, the tests and docker-compose all use what this module renders (one source of truth).
"""

import json
from pathlib import PurePath

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetbus.runtime.admission import DIR as ADMISSION_DIR
from fleetbus.runtime.admission import USERS_FILE, User, render_user
from schemas.base import SiteId
from schemas.heartbeat import Tier
from schemas.subjects import SITE_LOCAL


class LinkTls(BaseModel):
    """Paths of a site's TLS certificate and key, and of the CA that verifies its peers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cert: PurePath
    key: PurePath
    ca: PurePath


def _tls_block(tls: LinkTls, indent: str, *, verify: bool) -> list[str]:
    return [
        f"{indent}tls {{",
        f"{indent}  cert_file: {_q(str(tls.cert))}",
        f"{indent}  key_file: {_q(str(tls.key))}",
        f"{indent}  ca_file: {_q(str(tls.ca))}",
        *([f"{indent}  verify: true"] if verify else []),
        f"{indent}  timeout: 2",
        f"{indent}}}",
    ]


class Authorization(BaseModel):
    """Who may connect to a site's server, and as whom it links to the tier above."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    users: tuple[User, ...]
    # The site's own seed, presented on its leaf link upstream (the config is written 0600).
    leaf_seed: str | None = None
    # The user an MQTT client without credentials is taken for (None: refused).
    mqtt_anonymous: str | None = None
    # The site's certificate, key and the fleet CA: leaf links are TLS both ways, each end
    # verifying the other's certificate (None: leaf links in plaintext).
    tls: LinkTls | None = None
    # The client port takes only TLS too (with `tls`'s certificate; clients verify it against
    # the fleet CA and still log in with their key): for client ports other machines reach.
    client_tls: bool = False
    # A regional's: `users` is only the base; the edges it admits are kept in
    # admission/ beside the config and rendered into the users file it includes
    # (fleetbus.runtime.admission), which the regional daemon rewrites and reloads. The
    # edges admitted before the first start (edge id -> public key):
    admission: dict[SiteId, str] | None = None
    # An edge's: its MQTT devices' credentials are kept in admission/ by its daemon
    # (`fleetbus device add`), rendered into the users file it includes.
    devices: bool = False
    # Whose enrollment tokens the regional daemon accepts (public keys; not the server's).
    enroll_issuers: tuple[str, ...] = ()
    # The public key of the site daemon's system-account identity, with which it asks its
    # server to reload and closes revoked links (None: no system account).
    system_nkey: str | None = None
    # Not the server's, its daemon's: the hub's desk bootstrap operators (name -> public
    # key), and the hub's desired-state signing keys an edge trusts (docs/security.md).
    # The hub's: operators added later (`fleetbus operator add`) are kept in admission/ by
    # its daemon, rendered into the users file it includes.
    operators: bool = False
    admins: dict[str, str] = Field(default_factory=dict)
    viewers: dict[str, str] = Field(default_factory=dict)
    trusted_keys: tuple[str, ...] = ()


class Cluster(BaseModel):
    """A clustered site's routes: its nodes form one JetStream cluster (one domain, streams
    replicated across the nodes: docs/clustering.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="The cluster's name: the site's id.")
    port: int = Field(ge=1, le=65535, description="This node's route port.")
    routes: tuple[str, ...] = Field(description="nats-route:// URLs of every node, its own included.")
    # The route login every node presents and accepts: TLS alone would let any holder of a
    # certificate of the fleet CA (every site has one) join the cluster. None: no login
    # (--insecure).
    user: str | None = None
    password: str | None = None


class ServerSpec(BaseModel):
    """Everything that differs between two sites' nats-server configs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: SiteId = Field(description="The site: its JetStream domain; server_name unless clustered.")
    tier: Tier
    # A clustered site's node (`hub-n2`): its server_name; None for a site of one server.
    node: str | None = None
    cluster: Cluster | None = None
    store_dir: PurePath
    host: str = "127.0.0.1"
    client_port: int = Field(ge=1, le=65535)
    http_port: int = Field(ge=1, le=65535, description="Monitoring: /healthz, /varz, /jsz.")
    leaf_port: int | None = Field(default=None, ge=1, le=65535, description="Accept leaf links.")
    upstream: tuple[str, ...] = Field(default=(), description="nats-leaf:// URLs of the tier above.")
    mqtt_port: int | None = Field(default=None, ge=1, le=65535)
    max_file_store: str = "10G"
    max_memory_store: str = "256M"
    # JetStream fsyncs every 2 min by default; keep that default unless an operator opts into
    # "always" (every write is synced before the ack, slower).
    sync_interval: str | None = None
    # nats-server 2.15 caps consumers per stream at 1,000 by default; a regional's replicas
    # have one consumer per edge sourcing them (and per thin edge watching them).
    max_consumers_per_stream: int = 100_000
    # The largest message a client may publish. nats-server's default, written out so that
    # what a site accepts is visible in its config; fleetbus's own messages are far smaller.
    max_payload: str = "1MB"
    # How a silent link loss (packets vanish, sockets stay open) is noticed: the server pings
    # a quiet leaf (and client) connection every `ping_interval` and closes it once `ping_max`
    # pings go unanswered. nats-server's defaults (2m x 2) take up to 6 minutes; these take
    # 20-25 s (measured: tests/test_blackhole.py), for a PING/PONG pair of ~12 bytes every 5 s
    # on an idle link.
    ping_interval: str = "5s"
    ping_max: int = Field(default=3, ge=1)
    # Time between a leaf remote's reconnect attempts once its link is lost.
    leaf_reconnect: str = "1s"
    # None: anyone who reaches a port is admitted (`--insecure`, for debugging only).
    auth: Authorization | None = None

    @property
    def domain(self) -> str:
        return self.name

    @property
    def server_name(self) -> str:
        return self.node or self.name

    @model_validator(mode="after")
    def _shape_fits_tier(self) -> "ServerSpec":
        if self.tier is Tier.HUB and self.upstream:
            msg = "the hub has no upstream"
            raise ValueError(msg)
        if self.tier is not Tier.HUB and not self.upstream:
            msg = f"a {self.tier.value} server needs an upstream leaf URL"
            raise ValueError(msg)
        if self.tier is Tier.EDGE and self.leaf_port is not None:
            msg = "edges do not accept leaf connections"
            raise ValueError(msg)
        if self.tier is not Tier.EDGE and self.mqtt_port is not None:
            msg = "only edges run an MQTT listener"
            raise ValueError(msg)
        return self

    @property
    def client_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"

    @property
    def leaf_url(self) -> str | None:
        return None if self.leaf_port is None else f"nats-leaf://{self.host}:{self.leaf_port}"

    @property
    def health_url(self) -> str:
        """Healthy: JetStream runs; a cluster's node also has its meta leader and is current
        on every stream it holds (so a node restarted in a rolling restart caught up)."""
        if self.cluster is not None:
            return f"http://{self.host}:{self.http_port}/healthz"
        return f"http://{self.host}:{self.http_port}/healthz?js-enabled-only=true"


def _q(value: object) -> str:
    """Quote a value for the nats-server config grammar (a JSON string is valid there)."""
    return json.dumps(str(value))


def _authorization(auth: Authorization | None) -> list[str]:
    if auth is None:
        return [
            "",
            "# INSECURE: no authorization. Anyone who reaches a port of this server may read and",
            "# write everything, on every tier it links to. Only for debugging (--insecure).",
        ]
    lines = ["", "# Every connection (client, leaf link, MQTT) authenticates as one of these."]
    if auth.admission is not None or auth.devices or auth.operators:
        if auth.admission is not None:
            kept = "the edges admitted so far, kept by its daemon as edges are enrolled and revoked"
        elif auth.devices:
            kept = "its devices' credentials, kept by its daemon (fleetbus device add)"
        else:
            kept = "the operators added so far, kept by its daemon (fleetbus operator add)"
        lines += [
            "# This site's own identities and " + kept,
            "# (docs/security.md).",
            "authorization {",
            f"  include {_q(f'{ADMISSION_DIR}/{USERS_FILE}')}",
            "}",
        ]
    else:
        lines += ["authorization {", "  users: ["]
        for user in auth.users:
            lines += render_user(user)
        lines += ["  ]", "}"]
    if auth.system_nkey:
        lines += [
            "",
            "# The site daemon's system identity: it asks this server to reload and closes the",
            "# connections of revoked keys ($SYS.REQ.SERVER.<id>.RELOAD / KICK).",
            f"accounts {{ SYS {{ users: [ {{nkey: {_q(auth.system_nkey)}}} ] }} }}",
            "system_account: SYS",
        ]
    return lines


def _client_tls(auth: Authorization | None) -> list[str]:
    if auth is None or auth.tls is None or not auth.client_tls:
        return []
    return [
        "# The client port takes only TLS: clients verify this site's certificate against the",
        "# fleet CA (and still log in with their own key).",
        *_tls_block(auth.tls, "", verify=False),
    ]


def _cluster(spec: ServerSpec, bind: str) -> list[str]:
    cluster = spec.cluster
    if cluster is None:
        return []
    # Every node's route, its own too: nats-server drops a route to itself (by server id), so
    # the same list serves every node, wherever the nodes run and whatever ports they use.
    routes = ", ".join(_q(_route_url(r, cluster)) for r in cluster.routes)
    lines = [
        "",
        f"# Node {spec.server_name} of the {cluster.name!r} cluster: one JetStream domain, its streams",
        "# replicated over these routes (docs/clustering.md).",
        "cluster {",
        f"  name: {_q(cluster.name)}",
        f"  listen: {_q(f'{bind}:{cluster.port}')}",
        "  # Nodes find each other only through these routes, never by gossip from outside.",
        "  no_advertise: true",
        f"  routes: [{routes}]",
    ]
    if cluster.user and cluster.password:
        lines += [
            "  # Every node presents and accepts this login: a certificate of the fleet CA alone",
            "  # (every site has one) must not make a server a node of this cluster.",
            f"  authorization {{ user: {_q(cluster.user)}, password: {_q(cluster.password)}, timeout: 2 }}",
        ]
    if spec.auth and spec.auth.tls:
        lines += [
            "  # TLS both ways; each node verifies the other's certificate.",
            *_tls_block(spec.auth.tls, "  ", verify=True),
        ]
    lines.append("}")
    return lines


def _route_url(url: str, cluster: Cluster) -> str:
    """`url` with the cluster's login in it (nats-route://user:password@host:port)."""
    if not (cluster.user and cluster.password):
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{cluster.user}:{cluster.password}@{rest}"


def render(spec: ServerSpec, *, listen_host: str | None = None) -> str:
    """Config text for `spec`. `listen_host` overrides the bind address (0.0.0.0 in containers)."""
    bind = listen_host or spec.host
    lines = [
        f"# nats-server for fleetbus {spec.tier.value} site {spec.name!r}.",
        "# Rendered by fleetbus from the site's settings; change those and render again.",
        f"server_name: {_q(spec.server_name)}",
        f"listen: {_q(f'{bind}:{spec.client_port}')}",
        *_client_tls(spec.auth),
        f"http: {_q(f'{bind}:{spec.http_port}')}",
        f"max_payload: {spec.max_payload}",
        "# A silent link loss is noticed after ping_interval x ping_max without an answer.",
        f"ping_interval: {_q(spec.ping_interval)}",
        f"ping_max: {spec.ping_max}",
        *_authorization(spec.auth),
        "",
        "jetstream {",
        "  # Each site is its own JetStream domain: cross-tier calls use $JS.<domain>.API.",
        f"  domain: {_q(spec.domain)}",
        f"  store_dir: {_q(spec.store_dir)}",
        f"  max_file_store: {spec.max_file_store}",
        f"  max_memory_store: {spec.max_memory_store}",
    ]
    if spec.sync_interval:
        lines.append(f"  sync_interval: {spec.sync_interval}")
    lines += [
        "  # Per stream (nats-server 2.15 defaults to 1,000): one per edge sourcing a replica.",
        f"  limits {{ default_max_consumers: {spec.max_consumers_per_stream} }}",
        "}",
    ]
    lines += _cluster(spec, bind)
    if spec.leaf_port is not None or spec.upstream:
        lines += ["", "leafnodes {"]
        if spec.leaf_port is not None:
            lines += [
                f"  listen: {_q(f'{bind}:{spec.leaf_port}')}",
                "  # Leaves must keep using the URL they were given (a proxy, a load balancer):",
                "  # never gossip this server's own addresses to them.",
                "  no_advertise: true",
                *(
                    [
                        "  # TLS only; a leaf must present a certificate of the fleet CA.",
                        *_tls_block(spec.auth.tls, "  ", verify=True),
                    ]
                    if spec.auth and spec.auth.tls
                    else []
                ),
            ]
        if spec.upstream:
            urls = ", ".join(_q(u) for u in spec.upstream)
            local = ", ".join(_q(s) for s in SITE_LOCAL)
            lines += [
                "  # Time between attempts to reach the tier above once its link is lost.",
                f"  reconnect: {_q(spec.leaf_reconnect)}",
                "  remotes: [",
                "    {",
                f"      urls: [{urls}]",
                "      ignore_discovered_servers: true",
                *(
                    [
                        "      # This site's identity (its own key, generated here).",
                        f"      nkey: {_q(spec.auth.leaf_seed)}",
                    ]
                    if spec.auth and spec.auth.leaf_seed
                    else []
                ),
                *(
                    [
                        "      # TLS: the upstream's certificate is verified against the fleet CA.",
                        *_tls_block(spec.auth.tls, "      ", verify=False),
                    ]
                    if spec.auth and spec.auth.tls
                    else []
                ),
                "      # Site-local subjects (devices, MQTT internals, JetStream advisories)",
                "      # never cross this link, either way.",
                f"      deny_imports: [{local}]",
                f"      deny_exports: [{local}]",
                "    }",
                "  ]",
            ]
        lines.append("}")
    if spec.mqtt_port is not None:
        lines += [
            "",
            "# Local devices publish telemetry here.",
            "mqtt {",
            f"  listen: {_q(f'{bind}:{spec.mqtt_port}')}",
            *(
                [
                    "  # TLS only (mqtts): devices verify this site's certificate against the fleet",
                    "  # CA and log in with their own password (fleetbus device add).",
                    *_tls_block(spec.auth.tls, "  ", verify=False),
                ]
                if spec.auth and spec.auth.tls
                else []
            ),
            *(
                [
                    "  # A device without credentials is taken for this user (publish devices/...).",
                    f"  no_auth_user: {_q(spec.auth.mqtt_anonymous)}",
                ]
                if spec.auth and spec.auth.mqtt_anonymous
                else []
            ),
            "}",
        ]
    return "\n".join(lines) + "\n"
