"""Prometheus metrics every daemon exports. Prefix `fleetbus_`, base units, no per-edge labels."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class DaemonMetrics:
    """One registry per daemon, so several daemons can live in one test process."""

    def __init__(self, tier: str, site: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.info = Gauge(
            "fleetbus_daemon_info", "Constant 1, labelled with what runs here.", ["tier", "site"], registry=r
        )
        self.info.labels(tier=tier, site=site).set(1)
        self.messages_in = Counter(
            "fleetbus_messages_in_total", "Messages received, by kind.", ["kind"], registry=r
        )
        self.messages_out = Counter(
            "fleetbus_messages_out_total", "Messages sent, by kind.", ["kind"], registry=r
        )
        self.decode_errors = Counter(
            "fleetbus_decode_errors_total",
            "Messages dropped because they could not be decoded.",
            ["kind"],
            registry=r,
        )
        self.nats_connected = Gauge(
            "fleetbus_nats_connected", "1 while connected to the site's own nats-server.", registry=r
        )
        self.lease_held = Gauge(
            "fleetbus_lease_held",
            "1 while this daemon holds the lease (a clustered hub's active daemon: docs/clustering.md).",
            ["lease"],
            registry=r,
        )
        self.peers_heard = Gauge(
            "fleetbus_peers_heard", "Sites of the tier below that sent at least one heartbeat.", registry=r
        )
        self.kicks = Counter(
            "fleetbus_source_kicks_total",
            "Stream sources restarted because the site at their other end was heard again.",
            ["stream"],
            registry=r,
        )
        self.upstream_up = Gauge(
            "fleetbus_upstream_up", "1 while the tier above answers JetStream requests.", registry=r
        )
        self.reconciles = Counter(
            "fleetbus_reconciles_total",
            "Desired-state applies by the edge, by outcome.",
            ["status"],
            registry=r,
        )
        self.drift = Counter(
            "fleetbus_drift_total",
            "Live objects found differing from what the edge applied, by action "
            "(reported, corrected, correction_failed).",
            ["action"],
            registry=r,
        )
        self.device_messages = Counter(
            "fleetbus_device_messages_total",
            "Device messages the edge accepted, by channel (telemetry, status) and source (mqtt, bridge).",
            ["channel", "source"],
            registry=r,
        )
        self.device_rejected = Counter(
            "fleetbus_device_messages_rejected_total",
            "Device messages the edge skipped, by reason (not_json, wrong_type, too_large, bad_device_id).",
            ["reason"],
            registry=r,
        )
        self.telemetry_forwarded = Counter(
            "fleetbus_telemetry_forwarded_total",
            "Device readings the edge forwarded upstream as telemetry events, by mode (sample, last).",
            ["mode"],
            registry=r,
        )
        self.telemetry_dropped = Counter(
            "fleetbus_telemetry_dropped_total",
            "Device readings a telemetry rule selected but the edge's limits dropped, by reason "
            "(rate, backlog).",
            ["reason"],
            registry=r,
        )
        self.apply_duration = Histogram(
            "fleetbus_apply_duration_seconds", "Time the driver took to apply a desired state.", registry=r
        )
        self.stream_evicted = Gauge(
            "fleetbus_stream_evicted_messages",
            "Messages a stream's limits removed (first sequence - 1), by stream.",
            ["stream"],
            registry=r,
        )
        self.uplink_backlog = Gauge(
            "fleetbus_uplink_backlog_messages",
            "Messages stored here that the tier above has not confirmed holding yet, by stream (edge).",
            ["stream"],
            registry=r,
        )
        self.uplink_backlog_age = Gauge(
            "fleetbus_uplink_backlog_oldest_age_seconds",
            "Age of the oldest message waiting for the uplink, by stream (edge); 0 when none waits.",
            ["stream"],
            registry=r,
        )
        self.uplink_forwarded = Counter(
            "fleetbus_uplink_forwarded_total",
            "Messages the regional confirmed storing from this edge's streams, by stream (edge).",
            ["stream"],
            registry=r,
        )
        self.desired_refused = Counter(
            "fleetbus_desired_refused_total",
            "Desired-state records an edge refused (unsigned, malformed, unknown_key, "
            "bad_signature, replayed, withheld); its last good state stands.",
            ["bucket", "reason"],
            registry=r,
        )
        self.desk_requests = Counter(
            "fleetbus_desk_requests_total",
            "Write requests the hub's desk answered, by operation and outcome.",
            ["op", "outcome"],
            registry=r,
        )
        self.assigned_writes = Counter(
            "fleetbus_assigned_writes_total",
            "Records a regional handed its edges (copies of signed profiles and group overrides, "
            "stubs, deletes), by operation.",
            ["operation"],
            registry=r,
        )
        self.uplink_stalls = Counter(
            "fleetbus_uplink_stalls_total",
            "Times forwarding stopped to wait for the regional (link down, unconfirmed), by stream (edge).",
            ["stream"],
            registry=r,
        )
        self.link_transitions = Counter(
            "fleetbus_link_transitions_total",
            "Times the tier above started (up) or stopped (down) answering.",
            ["state"],
            registry=r,
        )
        self.heartbeats_rejected = Counter(
            "fleetbus_heartbeats_rejected_total",
            "Heartbeats ignored: from a site not enrolled here, or naming another site or region.",
            ["reason"],
            registry=r,
        )
        self.enrollments = Counter(
            "fleetbus_enrollments_total", "Enrollment requests answered, by outcome.", ["outcome"], registry=r
        )
        self.presence_writes = Counter(
            "fleetbus_presence_writes_total",
            "Presence records written (one per state change, never one per heartbeat), by new state.",
            ["state"],
            registry=r,
        )
        self.presence_sites = Gauge(
            "fleetbus_presence_sites", "Sites below this tier, by presence state.", ["state"], registry=r
        )
        self.inventory_published = Counter(
            "fleetbus_inventory_snapshots_total",
            "Inventory snapshots stored for the uplink, by trigger (changed or interval).",
            ["trigger"],
            registry=r,
        )
        # The hub only: the fleet as its dashboard shows it.
        self.fleet_edges = Gauge(
            "fleetbus_fleet_edges",
            "Edges the hub knows, by presence as shown and compliance (hub).",
            ["presence", "compliance"],
            registry=r,
        )
        self.dashboard_streams = Gauge(
            "fleetbus_dashboard_streams", "Live dashboard feeds (/api/stream) open now (hub).", registry=r
        )
        self.api_requests = Counter(
            "fleetbus_api_requests_total",
            "HTTP requests to the hub's dashboard and API, by route template and status class.",
            ["route", "status"],
            registry=r,
        )
