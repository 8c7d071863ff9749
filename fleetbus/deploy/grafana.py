"""The Grafana dashboard for fleetbus's metrics (deploy/grafana/fleetbus.json), built here.

`fleetbus compose render` writes it with the rest of the container fleet; a test checks the
committed file is current and that its queries use exactly the metrics the README documents.
Prometheus scrapes each tier as its own job (`fleetbus-hub`, `fleetbus-regional`,
`fleetbus-edge`), so no query needs a label per site.
"""

from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
WINDOW = "$__rate_interval"

# (row title, [(panel title, unit, [(PromQL, legend)])])
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    (
        "Fleet, as the hub sees it",
        [
            ("Edges by presence", "short", [("sum by (presence) (fleetbus_fleet_edges)", "{{presence}}")]),
            (
                "Edges by compliance",
                "short",
                [("sum by (compliance) (fleetbus_fleet_edges)", "{{compliance}}")],
            ),
            (
                "Regionals by presence (hub)",
                "short",
                [('sum by (state) (fleetbus_presence_sites{job="fleetbus-hub"})', "{{state}}")],
            ),
        ],
    ),
    (
        "Links and store-and-forward",
        [
            (
                "Uplink backlog (all edges)",
                "short",
                [("sum by (stream) (fleetbus_uplink_backlog_messages)", "{{stream}}")],
            ),
            (
                "Oldest message waiting for an uplink",
                "s",
                [("max by (stream) (fleetbus_uplink_backlog_oldest_age_seconds)", "{{stream}}")],
            ),
            (
                "Pushed up by edges, and stalls",
                "short",
                [
                    (
                        f"sum by (stream) (increase(fleetbus_uplink_forwarded_total[{WINDOW}]))",
                        "forwarded {{stream}}",
                    ),
                    (
                        f"sum by (stream) (increase(fleetbus_uplink_stalls_total[{WINDOW}]))",
                        "stalls {{stream}}",
                    ),
                ],
            ),
            (
                "Sites whose uplink is down",
                "short",
                [("count by (job) (fleetbus_upstream_up == 0)", "{{job}}")],
            ),
            (
                "Link transitions",
                "short",
                [
                    (
                        f"sum by (job, state) (increase(fleetbus_link_transitions_total[{WINDOW}]))",
                        "{{job}} {{state}}",
                    )
                ],
            ),
            (
                "Source kicks (heal acceleration)",
                "short",
                [
                    (
                        f"sum by (job, stream) (increase(fleetbus_source_kicks_total[{WINDOW}]))",
                        "{{job}} {{stream}}",
                    )
                ],
            ),
            (
                "Messages evicted by stream limits",
                "short",
                [("sum by (job, stream) (fleetbus_stream_evicted_messages)", "{{job}} {{stream}}")],
            ),
        ],
    ),
    (
        "Messages",
        [
            (
                "Received per second, by kind",
                "ops",
                [(f"sum by (kind) (rate(fleetbus_messages_in_total[{WINDOW}]))", "{{kind}}")],
            ),
            (
                "Sent per second, by kind",
                "ops",
                [(f"sum by (kind) (rate(fleetbus_messages_out_total[{WINDOW}]))", "{{kind}}")],
            ),
            (
                "Undecodable messages dropped",
                "short",
                [
                    (
                        f"sum by (job, kind) (increase(fleetbus_decode_errors_total[{WINDOW}]))",
                        "{{job}} {{kind}}",
                    )
                ],
            ),
            (
                "Desired state refused by edges (forged, unsigned, replayed)",
                "short",
                [
                    (
                        f"sum by (bucket, reason) (increase(fleetbus_desired_refused_total[{WINDOW}]))",
                        "{{bucket}} {{reason}}",
                    )
                ],
            ),
            (
                "Write requests at the hub's desk",
                "short",
                [
                    (
                        f"sum by (op, outcome) (increase(fleetbus_desk_requests_total[{WINDOW}]))",
                        "{{op}} {{outcome}}",
                    )
                ],
            ),
            (
                "Heartbeats rejected",
                "short",
                [
                    (
                        f"sum by (job, reason) (increase(fleetbus_heartbeats_rejected_total[{WINDOW}]))",
                        "{{job}} {{reason}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Edges: applies and inventory",
        [
            (
                "Applies per second, by outcome",
                "ops",
                [(f"sum by (status) (rate(fleetbus_reconciles_total[{WINDOW}]))", "{{status}}")],
            ),
            (
                "Apply duration",
                "s",
                [
                    (
                        (
                            "histogram_quantile(0.5, sum by (le) "
                            f"(rate(fleetbus_apply_duration_seconds_bucket[{WINDOW}])))"
                        ),
                        "p50",
                    ),
                    (
                        (
                            "histogram_quantile(0.99, sum by (le) "
                            f"(rate(fleetbus_apply_duration_seconds_bucket[{WINDOW}])))"
                        ),
                        "p99",
                    ),
                ],
            ),
            (
                "Drift found (kubernetes driver), by action",
                "short",
                [(f"sum by (action) (increase(fleetbus_drift_total[{WINDOW}]))", "{{action}}")],
            ),
            (
                "Device messages per second: accepted by channel, rejected by reason",
                "ops",
                [
                    (f"sum by (channel) (rate(fleetbus_device_messages_total[{WINDOW}]))", "{{channel}}"),
                    (
                        f"sum by (reason) (rate(fleetbus_device_messages_rejected_total[{WINDOW}]))",
                        "rejected {{reason}}",
                    ),
                ],
            ),
            (
                "Device telemetry upstream per second: forwarded by mode, dropped by reason",
                "ops",
                [
                    (f"sum by (mode) (rate(fleetbus_telemetry_forwarded_total[{WINDOW}]))", "{{mode}}"),
                    (
                        f"sum by (reason) (rate(fleetbus_telemetry_dropped_total[{WINDOW}]))",
                        "dropped {{reason}}",
                    ),
                ],
            ),
            (
                "Inventory snapshots per second, by trigger",
                "ops",
                [(f"sum by (trigger) (rate(fleetbus_inventory_snapshots_total[{WINDOW}]))", "{{trigger}}")],
            ),
        ],
    ),
    (
        "Presence and enrollment",
        [
            (
                "Presence changes",
                "short",
                [
                    (
                        f"sum by (job, state) (increase(fleetbus_presence_writes_total[{WINDOW}]))",
                        "{{job}} {{state}}",
                    )
                ],
            ),
            (
                "Edges by presence (regionals)",
                "short",
                [('sum by (state) (fleetbus_presence_sites{job="fleetbus-regional"})', "{{state}}")],
            ),
            ("Sites heard, per regional and hub", "short", [("fleetbus_peers_heard", "{{instance}}")]),
            (
                "Hub daemon holding the lease (1: the active one)",
                "short",
                [('fleetbus_lease_held{lease="hub"}', "{{instance}}")],
            ),
            (
                "Enrollments",
                "short",
                [(f"sum by (outcome) (increase(fleetbus_enrollments_total[{WINDOW}]))", "{{outcome}}")],
            ),
            (
                "Records handed to edges (regionals)",
                "short",
                [
                    (
                        f"sum by (operation) (increase(fleetbus_assigned_writes_total[{WINDOW}]))",
                        "{{operation}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Daemons and dashboard",
        [
            (
                "Daemons connected to their nats-server",
                "short",
                [
                    ("sum by (job) (fleetbus_nats_connected)", "{{job}} connected"),
                    ("count by (job) (fleetbus_daemon_info)", "{{job}} running"),
                ],
            ),
            (
                "Dashboard API requests per second",
                "ops",
                [
                    (
                        f"sum by (route, status) (rate(fleetbus_api_requests_total[{WINDOW}]))",
                        "{{route}} {{status}}",
                    )
                ],
            ),
            ("Open live dashboard feeds", "short", [("sum(fleetbus_dashboard_streams)", "feeds")]),
        ],
    ),
]


def _panel(
    panel_id: int, title: str, unit: str, targets: list[tuple[str, str]], x: int, y: int
) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard() -> dict[str, Any]:
    """The dashboard document Grafana provisions (schemaVersion 39)."""
    panels: list[dict[str, Any]] = []
    y = 0
    for title, row in ROWS:
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        y += 1
        for i, (panel_title, unit, targets) in enumerate(row):
            panels.append(
                _panel(len(panels) + 1, panel_title, unit, targets, x=(i % 3) * 8, y=y + (i // 3) * 8)
            )
        y += ((len(row) + 2) // 3) * 8
    return {
        "uid": "fleetbus",
        "title": "fleetbus",
        "description": "fleetbus daemons: fleet presence and compliance, links, messages, applies.",
        "tags": ["fleetbus"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "editable": True,
        "panels": panels,
        "templating": {"list": []},
        "annotations": {"list": []},
    }


def expressions() -> list[str]:
    return [expr for _, row in ROWS for _, _, targets in row for expr, _ in targets]
