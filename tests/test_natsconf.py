"""Rendered server configs are valid for the real nats-server and carry the known traps' fixes."""

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleetbus.core import permissions
from fleetbus.devfleet import identities
from fleetbus.devfleet.natsconf import ServerSpec, render
from fleetbus.devfleet.plan import plan_fleet
from fleetbus.devfleet.servers import NatsServer, find_binary
from schemas.heartbeat import Tier
from tests.helpers import ROOT


@pytest.mark.parametrize("secured", [True, False], ids=["secured", "insecure"])
def test_every_tier_renders_a_config_nats_server_accepts(tmp_path: Path, secured: bool):
    plan = plan_fleet(tmp_path, regions=1, edges=1, ports=iter(range(20000, 20100)), mqtt=True)
    plan = identities.secure(plan) if secured else plan
    assert [s.tier for s in plan.sites] == [Tier.HUB, Tier.REGIONAL, Tier.EDGE]
    for site in plan.sites:
        # As the dev fleet writes it (with a regional's admission files beside it).
        path = NatsServer(site.server, tmp_path / site.name).write_config()
        text = path.read_text()
        # Secured: users with permissions, TLS on every leaf link; else the loud warning.
        assert ("authorization {" in text) is secured
        assert ("INSECURE" in text) is not secured
        if secured and site.tier is not Tier.EDGE:
            assert "verify: true" in text
        if secured and site.upstream:
            assert "ca_file:" in text.split("remotes")[1]
        if secured and site.tier is Tier.REGIONAL:
            users = (path.parent / "admission" / "users.conf").read_text()
            assert "edge r1-e1" in users
            assert "system_account: SYS" in text
        result = subprocess.run(
            [str(find_binary()), "-t", "-c", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "is valid" in result.stderr + result.stdout


def test_config_carries_domain_no_advertise_and_mqtt(tmp_path: Path):
    plan = plan_fleet(tmp_path, regions=1, edges=1, ports=iter(range(20000, 20100)), mqtt=True)
    hub, regional, edge = (render(s.server) for s in plan.sites)
    assert 'domain: "hub"' in hub
    assert "no_advertise: true" in hub
    assert "remotes" not in hub
    assert 'domain: "r1"' in regional
    assert "no_advertise: true" in regional
    assert f'urls: ["{plan.sites[0].server.leaf_url}"]' in regional
    assert 'domain: "r1-e1"' in edge
    assert "no_advertise" not in edge  # edges accept no leaf links
    assert "mqtt {" in edge
    assert "mqtt {" not in regional


def test_listen_host_override_for_containers(tmp_path: Path):
    spec = ServerSpec(
        name="hub", tier=Tier.HUB, store_dir=tmp_path, client_port=4222, http_port=8222, leaf_port=7422
    )
    assert 'listen: "0.0.0.0:4222"' in render(spec, listen_host="0.0.0.0")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tier": "hub", "upstream": ("nats-leaf://x:1",)}, "the hub has no upstream"),
        ({"tier": "edge"}, "needs an upstream"),
        ({"tier": "edge", "upstream": ("nats-leaf://x:1",), "leaf_port": 7422}, "do not accept leaf"),
        ({"tier": "regional", "upstream": ("nats-leaf://x:1",), "mqtt_port": 1883}, "only edges"),
        ({"tier": "edge", "upstream": ("nats-leaf://x:1",), "name": "Edge.1"}, "not a valid id"),
    ],
)
def test_impossible_shapes_are_refused(tmp_path: Path, fields, message):
    base = {"name": "s1", "store_dir": tmp_path, "client_port": 4222, "http_port": 8222}
    with pytest.raises(ValidationError, match=message):
        ServerSpec(**(base | fields))


def test_the_permission_table_in_the_docs_is_the_one_the_servers_get():
    doc = (ROOT / "docs" / "security.md").read_text()
    begin, end = "<!-- permissions table: begin -->\n", "<!-- permissions table: end -->"
    copy = doc[doc.index(begin) + len(begin) : doc.index(end)]
    assert copy == permissions.markdown(), (
        "docs/security.md's permission table is stale: replace it with permissions.markdown(), "
        "as the paragraph above it says"
    )


def test_a_clustered_hub_renders_routes_with_a_login_and_tls(tmp_path: Path):
    plan = identities.secure(plan_fleet(tmp_path, 1, 1, iter(range(20000, 20100)), links=True, hub_nodes=3))
    nodes = plan.nodes("hub")
    assert [n.key for n in nodes] == ["hub-n1", "hub-n2", "hub-n3"]
    regional = plan.site("r1")
    # The regional's leaf remote lists every node, each through its own proxy.
    assert [link.node for link in regional.links] == ["hub-n1", "hub-n2", "hub-n3"]
    assert [link.target for link in regional.links] == [n.server.leaf_port for n in nodes]
    assert len(regional.server.upstream) == 3
    for node in nodes:
        path = NatsServer(node.server, node.workdir).write_config()
        text = path.read_text()
        assert f'server_name: "{node.key}"' in text
        assert 'domain: "hub"' in text  # one domain for the whole cluster
        cluster = text.split("cluster {")[1].split("\nleafnodes")[0]
        assert "authorization { user:" in cluster
        assert "verify: true" in cluster
        routes = cluster.split("routes:")[1].split("\n")[0]
        assert all(f"@127.0.0.1:{n.server.cluster.port}" in routes for n in nodes if n.server.cluster)
        # Every node shares the site's identity directory, its own config and store.
        assert node.creds_path == nodes[0].creds_path
        assert node.workdir != nodes[0].workdir or node is nodes[0]
        result = subprocess.run(
            [str(find_binary()), "-t", "-c", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
    settings = nodes[1].daemon_settings(1.0)
    assert settings["node"] == "hub-n2"
    assert settings["replicas"] == 3
    # Its own node first, then the others: it moves to one while its own is down.
    assert str(settings["nats_url"]).split(",") == [
        nodes[1].server.client_url,
        nodes[0].server.client_url,
        nodes[2].server.client_url,
    ]
