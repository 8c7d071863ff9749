"""Daemon settings: one pydantic-settings class per role.

Precedence, highest first: explicit values (CLI flags), `FLEETBUS_*` environment variables,
the TOML file given with `--config`, defaults. Invalid settings fail at start with a
`ConfigError` naming the field and the environment variable that sets it.
"""

import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fleetbus.errors import ConfigError
from schemas.authoring import suggestion
from schemas.base import SiteId
from schemas.subjects import HUB_DOMAIN

ENV_PREFIX = "FLEETBUS_"


class DaemonSettings(BaseSettings):
    """What every daemon needs: who it is, where its local server is, where to expose health."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    site: SiteId = Field(description="This site's id; also its JetStream domain.")
    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        description=(
            "The site's own server. A clustered hub's daemon: its own node first, then the "
            "others, comma-separated (it moves to another node while its own is down)."
        ),
    )
    nats_creds: Path | None = Field(
        default=None,
        description=(
            "The site's identity: an nkey seed file (or a JWT .creds file) the daemon connects "
            "with. None connects anonymously, which only an --insecure server admits."
        ),
    )
    nats_ca: Path | None = Field(
        default=None,
        description=(
            "The fleet CA's certificate (fleetbus pki init), which verifies the site's server "
            "where its client port takes only TLS (and a regional's, for enrollment)."
        ),
    )
    state_dir: Path = Field(default=Path("state"), description="Where the daemon keeps files.")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=0, ge=0, le=65535, description="/metrics and /healthz; 0 = any.")
    shutdown_timeout: float = Field(default=10.0, gt=0, description="Graceful shutdown deadline, s.")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    heal_acceleration: bool = Field(
        default=True,
        description=(
            "Kick sources the moment a link is back (docs/architecture.md#heal-acceleration); "
            "false leaves catch-up to nats-server's retry back-off (0.3-80 s). Off only to "
            "measure what it buys."
        ),
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - called by keyword
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


DASHBOARD_HOSTS = ("localhost", "127.0.0.1")  # what the dashboard answers to by default


class HubSettings(DaemonSettings):
    site: SiteId = HUB_DOMAIN
    dashboard: bool = Field(default=True, description="Serve the web dashboard and JSON API.")
    dashboard_host: str = Field(default="127.0.0.1", description="Dashboard address; 0.0.0.0 = every.")
    dashboard_port: int = Field(default=8080, ge=0, le=65535, description="Dashboard port; 0 = any.")
    dashboard_hosts: list[str] = Field(
        default_factory=lambda: list(DASHBOARD_HOSTS),
        description=(
            "Host names the dashboard and API answer to; a request naming another (a DNS "
            "rebinding page in a browser) gets 400. Add the names it is reached by."
        ),
    )
    region_offline_after: float = Field(
        default=60.0, gt=0, description="Silence after which a regional is offline (stale after 2 beats), s."
    )
    signing_key: Path | None = Field(
        default=None,
        description=(
            "The nkey seed the hub signs desired state with (docs/security.md#signed-desired-"
            "state); edges pin its public key. None: unsigned, which verifying edges refuse."
        ),
    )
    trusted_keys: list[str] = Field(
        default_factory=list,
        description=(
            "Signing keys besides signing_key whose records the hub still takes from its own "
            "buckets: the old key during a rotation, until `fleetbus keys resign`."
        ),
    )
    admins: dict[str, str] = Field(
        default_factory=dict,
        description="Bootstrap operators with the admin role: name -> public nkey (U…).",
    )
    viewers: dict[str, str] = Field(
        default_factory=dict, description="Bootstrap operators with the viewer role: name -> public nkey."
    )
    admission_dir: Path | None = Field(
        default=None,
        description=(
            "The directory beside the server's config holding the operators it admits "
            "(`fleetbus operator add`); None: operators cannot be added or revoked here."
        ),
    )
    system_creds: Path | None = Field(
        default=None,
        description="The daemon's identity in its server's system account (reload, close revoked operators).",
    )
    desk_insecure: bool = Field(
        default=False,
        description="Take unsigned write requests as an admin's (an --insecure dev fleet; debugging only).",
    )
    node: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "A clustered hub's node this daemon runs beside (`hub-n2`; unique per daemon): the "
            "name it holds the hub's lease under (docs/clustering.md). None: the site's id."
        ),
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Copies of each hub bucket and stream: 3 on a 3-node hub (docs/clustering.md).",
    )

    @model_validator(mode="after")
    def _clustered_daemons_are_named(self) -> "HubSettings":
        if self.replicas > 1 and self.node is None:
            msg = (
                "node: a clustered hub's daemons (replicas > 1) each need their own name, the node "
                'they run beside (node = "hub-n2"): two daemons under one name would take the '
                "hub's lease from each other"
            )
            raise ValueError(msg)
        return self


class RegionalSettings(DaemonSettings):
    heartbeat_interval: float = Field(default=5.0, gt=0, description="Regional -> hub, s.")
    offline_after: float = Field(
        default=60.0, gt=0, description="Silence after which an edge is offline (stale after 2 beats), s."
    )
    max_edges: int = Field(
        default=20_000,
        ge=1,
        description=(
            "Edges the region enrolls at most; one more is refused (fleetbus_enrollments_total"
            "{outcome=refused}), so a client inventing edge ids cannot grow the region's state "
            "or the hub's view without bound."
        ),
    )

    admission_dir: Path | None = Field(
        default=None,
        description=(
            "The directory beside the server's config holding the users it admits "
            "(docs/security.md#enrollment); the daemon rewrites it as edges are enrolled and "
            "revoked. None: the server's config lists its edges, and tokens, approval and "
            "revocation are unavailable."
        ),
    )
    system_creds: Path | None = Field(
        default=None,
        description="The daemon's identity in its server's system account (reload, close revoked links).",
    )
    enroll_issuers: list[str] = Field(
        default_factory=list,
        description="Public keys (nkeys) whose enrollment tokens this regional accepts.",
    )
    enroll_policy: Literal["token", "approve"] = Field(
        default="token",
        description=(
            "token: a valid enrollment token admits the edge; approve: it waits as pending "
            "until `fleetbus edge approve`."
        ),
    )
    enroll_url: str | None = Field(
        default=None,
        description="The URL edges redeem tokens at (this server's client port), written into tokens.",
    )

    @property
    def region(self) -> str:
        return self.site


class EdgeSettings(DaemonSettings):
    region: SiteId = Field(description="Id of the region this edge belongs to.")
    heartbeat_interval: float = Field(default=5.0, gt=0, description="Edge -> regional, s.")
    labels: dict[str, str] = Field(default_factory=dict)
    inventory_interval: float = Field(
        default=60.0, gt=0, description="Publish an inventory snapshot at least this often, s."
    )
    inventory_scan_interval: float = Field(
        default=5.0, gt=0, description="Look for inventory changes (published at once) this often, s."
    )
    facts_file: Path | None = Field(
        default=None,
        description="JSON object of site-defined facts for the inventory; default <state_dir>/facts.json.",
    )
    driver: Literal["local", "kubernetes"] = Field(
        default="local",
        description="How profiles are applied: local (a JSON file in state_dir), kubernetes (a cluster).",
    )
    kubeconfig: Path | None = Field(
        default=None,
        description="kubernetes driver: kubeconfig file; default: in a pod its service account, "
        "else $KUBECONFIG or ~/.kube/config.",
    )
    kube_context: str | None = Field(
        default=None, description="kubernetes driver: kubeconfig context to use."
    )
    kube_in_cluster: bool | None = Field(
        default=None, description="kubernetes driver: use the pod's service account (default: when in a pod)."
    )
    kube_rollout_timeout: float = Field(
        default=120.0,
        gt=0,
        description="kubernetes driver: how long Deployments may take to become available, s.",
    )
    kube_drift_interval: float = Field(
        default=60.0,
        gt=0,
        description="kubernetes driver: compare live objects with the applied ones this often, s.",
    )
    kube_request_timeout: float = Field(
        default=10.0, gt=0, description="kubernetes driver: timeout of one API request, s."
    )

    device_offline_after: float = Field(
        default=60.0, gt=0, description="A device not heard for this long is offline, s."
    )
    device_max_payload: int = Field(
        default=65536, ge=1, description="Device messages larger than this are rejected (counted), bytes."
    )
    device_max_tracked: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Devices the edge keeps in its registry at most; a message from one more device id "
            "is rejected (counted as too_many_devices), so a client inventing ids cannot grow "
            "the edge's memory or its inventory without bound."
        ),
    )
    telemetry_max_rate: float = Field(
        default=5.0,
        gt=0,
        description="Device readings forwarded upstream per second at most, all rules together.",
    )
    telemetry_max_backlog: int = Field(
        default=10000,
        ge=0,
        description="Sampled readings stored at the edge while the uplink is down; more are dropped.",
    )
    admission_dir: Path | None = Field(
        default=None,
        description=(
            "The directory beside the server's config holding its MQTT devices' credentials "
            "(`fleetbus device add`); None: device credentials cannot be added here."
        ),
    )
    system_creds: Path | None = Field(
        default=None, description="The daemon's identity in its server's system account (reload)."
    )
    enroll_token: str | None = Field(
        default=None,
        description=(
            "A one-time enrollment token (`fleetbus edge token create`); also "
            "FLEETBUS_ENROLL_TOKEN. The edge redeems it at its regional before it links."
        ),
    )
    enroll_token_file: Path | None = Field(
        default=None, description="A file holding the enrollment token (instead of enroll_token)."
    )
    machine_id: str | None = Field(
        default=None, description="Bound to the edge at enrollment; default: /etc/machine-id."
    )
    enroll_url: str | None = Field(
        default=None,
        description="The regional's client URL to redeem the token at; default: the URL in the token.",
    )
    trusted_keys: list[str] = Field(
        default_factory=list,
        description=(
            "The hub's desired-state signing keys (public nkeys) this edge takes profiles and "
            "overrides signed by; an enrollment token adds the ones it carries."
        ),
    )
    verify_desired_state: bool = Field(
        default=True,
        description="Refuse unsigned, forged and replayed desired state; false only to measure the cost.",
    )
    mqtt_bridge_url: str | None = Field(
        default=None,
        description=(
            "A site MQTT broker to take devices from as well, e.g. mqtt://10.0.0.5:1883, or "
            "mqtts://broker.store.example:8883 (TLS, its certificate verified)."
        ),
    )
    mqtt_bridge_username: str | None = Field(
        default=None, description="The bridge's login at the site broker."
    )
    mqtt_bridge_password_file: Path | None = Field(
        default=None, description="A file holding the bridge's password at the site broker."
    )
    mqtt_bridge_ca: Path | None = Field(
        default=None, description="CA certificate(s) to verify an mqtts:// broker (default: the system's)."
    )
    mqtt_bridge_topics: list[str] = Field(
        default_factory=lambda: ["devices/+/telemetry", "devices/+/status"],
        description="Topics the bridge subscribes to on the site broker.",
    )

    @model_validator(mode="after")
    def _distinct_ids(self) -> "EdgeSettings":
        if self.site == self.region:
            msg = "site and region must differ (each is a JetStream domain)"
            raise ValueError(msg)
        return self


class HollowSettings(DaemonSettings):
    """One process of hollow edges (`python -m edge.hollow`, started by `fleetbus sim`): thin
    clients of the regional at `nats_url`, named `<region>-h<n>` for n = first .. first+edges-1."""

    region: SiteId = Field(description="The region the hollow edges belong to (its regional's server).")
    edges: int = Field(default=100, ge=0, le=20000, description="How many hollow edges this process runs.")
    first: int = Field(default=1, ge=1, description="Number of the first hollow edge (ids <region>-h<n>).")
    edges_per_connection: int = Field(
        default=1000, ge=1, le=5000, description="Hollow edges sharing one NATS connection."
    )
    start_rate: float = Field(default=200.0, gt=0, description="Hollow edges started per second.")
    heartbeat_interval: float = Field(default=5.0, gt=0, description="Edge -> regional, s.")
    inventory_interval: float = Field(default=60.0, gt=0, description="Inventory at least this often, s.")
    inventory_scan_interval: float = Field(default=60.0, gt=0, description="Look for changes this often, s.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of every hollow edge.")
    trusted_keys: list[str] = Field(
        default_factory=list,
        description=(
            "The hub's desired-state signing keys (public nkeys) this edge takes profiles and "
            "overrides signed by; an enrollment token adds the ones it carries."
        ),
    )
    verify_desired_state: bool = Field(
        default=True,
        description="Refuse unsigned, forged and replayed desired state; false only to measure the cost.",
    )


S = TypeVar("S", bound=DaemonSettings)


def _describe(error: ValidationError, cls: type[DaemonSettings], source: str) -> str:
    lines = [f"invalid settings for {cls.__name__.removesuffix('Settings').lower()} daemon{source}:"]
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        field = loc[0] if loc else "<settings>"
        env = f" (env {ENV_PREFIX}{field.upper()})" if field in cls.model_fields else ""
        where = ".".join(loc) or "<settings>"
        if item["type"] == "extra_forbidden":  # a typo: name the closest setting
            lines.append(f"  {where}: unknown setting; {suggestion(field, sorted(cls.model_fields))}")
            continue
        got = f"; got {item['input']!r}" if item["type"] != "missing" and "input" in item else ""
        lines.append(f"  {where}{env}: {item['msg']}{got}")
    return "\n".join(lines)


def load_settings(cls: type[S], config: Path | None = None, **explicit: Any) -> S:
    """Build settings from flags, environment and an optional TOML file; raise `ConfigError`."""
    if config is not None:
        try:
            tomllib.loads(config.read_text())
        except OSError as exc:
            msg = f"cannot read settings file {config}: {exc.strerror}"
            raise ConfigError(msg) from exc
        except tomllib.TOMLDecodeError as exc:
            msg = f"settings file {config} is not valid TOML: {exc}"
            raise ConfigError(msg) from exc
        bound = type(cls.__name__, (cls,), {"model_config": {**cls.model_config, "toml_file": config}})
    else:
        bound = cls
    values = {k: v for k, v in explicit.items() if v is not None}
    try:
        return bound(**values)  # type: ignore[no-any-return]
    except ValidationError as exc:
        source = f" (file {config})" if config else ""
        raise ConfigError(_describe(exc, cls, source)) from None
