"""Inventory snapshots: what one edge has, as of `observed_at`; only the latest matters."""

from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from schemas.base import Message, Name, SiteId
from schemas.device import DeviceRecord


class HostFacts(BaseModel):
    model_config = ConfigDict(extra="allow")

    hostname: str = ""
    machine_id: str = ""
    os: str = ""
    kernel: str = ""
    cpu_count: int = Field(default=0, ge=0)
    memory_bytes: int = Field(default=0, ge=0)
    disk_total_bytes: int = Field(default=0, ge=0)
    disk_free_bytes: int = Field(default=0, ge=0)
    boot_time: datetime | None = None


class AppliedState(BaseModel):
    model_config = ConfigDict(extra="allow")

    desired_hash: str
    profile_revisions: dict[str, int] = Field(default_factory=dict)
    applied_at: datetime
    driver: str


class LinkState(BaseModel):
    model_config = ConfigDict(extra="allow")

    upstream_connected: bool
    since: datetime | None = None


class StreamBacklog(BaseModel):
    """How far one of the edge's upstream streams is behind, and what its limits evicted."""

    model_config = ConfigDict(extra="allow")

    stream: str
    pending: int = Field(ge=0, description="Stored messages the tier above has not confirmed holding.")
    oldest_age_seconds: float = Field(default=0, ge=0, description="Age of the oldest pending message.")
    evicted: int = Field(default=0, ge=0, description="Messages the stream's limits removed, ever.")
    evicted_unforwarded: int = Field(
        default=0, ge=0, description="Of those, removed before the tier above had them: lost upstream."
    )
    forwarded_seq: int = Field(default=0, ge=0, description="Last sequence the tier above confirmed.")


class KubeNode(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    ready: bool
    capacity: dict[str, str] = Field(
        default_factory=dict, description="cpu, memory, pods as the API gives them."
    )
    allocatable: dict[str, str] = Field(default_factory=dict)
    kubelet_version: str = ""
    os_image: str = ""
    architecture: str = ""


class OwnedDeployment(BaseModel):
    """A Deployment the kubernetes driver applied (label app.kubernetes.io/managed-by=fleetbus)."""

    model_config = ConfigDict(extra="allow")

    namespace: str
    name: str
    component: str | None = None
    desired_replicas: int = Field(ge=0)
    ready_replicas: int = Field(default=0, ge=0)
    available: bool = False


class KubernetesInventory(BaseModel):
    """The site's cluster as the kubernetes driver sees it."""

    model_config = ConfigDict(extra="allow")

    server: str = Field(description="The API server's address.")
    nodes: list[KubeNode] = Field(default_factory=list)
    pods: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Pod count by namespace, then by phase (Running, Pending, ...)."
    )
    deployments: list[OwnedDeployment] = Field(default_factory=list)
    error: str | None = Field(
        default=None, description="Why the API could not be read; the rest is then the last good reading."
    )
    read_at: datetime | None = Field(default=None, description="When the rest was read from the API.")


class InventorySnapshot(Message):
    """What one edge has and how its uplink is doing; only the latest per edge matters."""

    SCHEMA: ClassVar[str] = "fleet.inventory"

    region: SiteId
    edge: SiteId
    seq: int = Field(ge=0)
    observed_at: datetime
    received_at: datetime | None = Field(
        default=None,
        description=(
            "Never sent: null in every stored snapshot. Readers at the hub (FleetClient, the "
            "dashboard's API) fill it in from the time the hub's `inventory` bucket stored it."
        ),
    )
    labels: dict[Name, str] = Field(default_factory=dict)
    public_key: str = Field(
        default="",
        max_length=64,
        description="The edge's nkey (U…), which the hub seals its secrets to. Empty for simulated edges.",
    )
    host: HostFacts = Field(default_factory=HostFacts)
    applied: AppliedState | None = None
    link: LinkState | None = None
    backlog: list[StreamBacklog] = Field(default_factory=list)
    facts: dict[str, JsonValue] = Field(
        default_factory=dict, description="Site-defined facts (the edge's facts file), as given."
    )
    kubernetes: KubernetesInventory | None = Field(
        default=None, description="Nodes and workloads, when the edge runs the kubernetes driver."
    )
    devices: list[DeviceRecord] = Field(default_factory=list, description="Devices the edge has heard.")
