"""The kubernetes driver against the in-process Kubernetes API stand-in (`tests/kubeapi.py`),
and an edge daemon with `--driver kubernetes` in a real fleet (real nats-servers)."""

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.drivers import DriverError
from edge.drivers.kubernetes import KubeApi, KubernetesDriver, UnreachableError, connect
from edge.drivers.manifests import (
    COMPONENT_LABEL,
    HASH_LABEL,
    MANAGED_BY,
    PROFILE_LABEL,
    SECRETS_MOUNT,
    SITE_LABEL,
    label_value,
    profile_namespace,
    render,
)
from fleetbus.core.desired import DesiredState, compute, content_hash
from fleetbus.core.secrets import pin
from fleetbus.errors import ConfigError
from fleetbus.sdk.client import FleetClient
from schemas.event import ObjectOutcome, ObjectResult
from schemas.heartbeat import Tier
from schemas.profile import Profile
from tests.conftest import admin_creds, running_fleet
from tests.helpers import eventually
from tests.kubeapi import KubeStandIn
from tests.test_metrics import CHECKED_ELSEWHERE, Metrics

NOW = datetime(2026, 11, 21, tzinfo=UTC)
SITE = "r1-e1"

WEB = {
    "name": "web",
    "image": "nginx",
    "version": "1.27",
    "replicas": 2,
    "env": {"MODE": "store"},
    "ports": [80],
    "config": {"greeting": "hello", "limits": {"rps": 5}},
}
CACHE = {
    "name": "cache",
    "manifests": [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "redis"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "redis"}},
                "template": {
                    "metadata": {"labels": {"app": "redis"}},
                    "spec": {"containers": [{"name": "redis", "image": "redis:7"}]},
                },
            },
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "redis"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "redis-reader"},
        },
    ],
}


def desired(*components: dict[str, Any], drift_policy: str | None = None, name: str = "shop") -> DesiredState:
    spec: dict[str, Any] = {"components": list(components)}
    if drift_policy:
        spec["driftPolicy"] = drift_policy
    profile = Profile.model_validate({"name": name, "revision": 1, "spec": spec})
    return compute([profile], {}, edge=SITE, now=NOW)


def outcomes(objects: list[ObjectResult]) -> dict[str, str]:
    return {f"{o.kind} {o.namespace or ''}/{o.name}": o.outcome.value for o in objects}


@pytest.fixture
async def standin() -> AsyncIterator[KubeStandIn]:
    api = KubeStandIn()
    await api.start()
    api.add_node("edge-node-1")
    api.add_node("edge-node-2", ready=False, cpu="2", memory="4010000Ki")
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
async def kube(standin: KubeStandIn, tmp_path: Path) -> AsyncIterator[KubeApi]:
    config = standin.write_kubeconfig(tmp_path / "kubeconfig")
    api = await connect(kubeconfig=config, context=None, in_cluster=False, timeout=2.0)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
def driver(kube: KubeApi, tmp_path: Path) -> KubernetesDriver:
    return KubernetesDriver(kube, site=SITE, state_dir=tmp_path / "state", rollout_timeout=5.0)


# -- rendering (pure) ----------------------------------------------------------------------------


def test_render_short_form_labels_and_namespace_per_profile():
    rendering = render(desired(WEB), site=SITE)
    assert not rendering.failed
    by_kind = {o.ref.kind: o for o in rendering.objects}
    assert sorted(by_kind) == ["ConfigMap", "Deployment", "Namespace", "Service"]
    deployment = by_kind["Deployment"].body
    assert deployment["metadata"]["namespace"] == "fleetbus-shop"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "nginx:1.27"
    assert container["env"] == [{"name": "MODE", "value": "store"}]
    assert container["ports"] == [{"name": "p80", "containerPort": 80, "protocol": "TCP"}]
    assert by_kind["ConfigMap"].body["data"] == {"greeting": "hello", "limits": '{"rps": 5}'}
    assert by_kind["Service"].body["spec"]["ports"][0]["port"] == 80
    for obj in rendering.objects:
        labels = obj.body["metadata"]["labels"]
        assert labels[MANAGED_BY] == "fleetbus"
        assert labels[SITE_LABEL] == SITE
        assert labels[PROFILE_LABEL] == "shop"
        assert len(labels[HASH_LABEL]) == 16
    # The content hash is the object's own: changing the version changes only the Deployment's.
    bumped = render(desired({**WEB, "version": "1.28"}), site=SITE)
    hashes = {o.ref.kind: o.body["metadata"]["labels"][HASH_LABEL] for o in rendering.objects}
    changed = {
        o.ref.kind for o in bumped.objects if o.body["metadata"]["labels"][HASH_LABEL] != hashes[o.ref.kind]
    }
    assert changed == {"Deployment"}


def test_render_names_that_kubernetes_would_refuse_fail_their_component_only():
    assert profile_namespace("shop") == "fleetbus-shop"
    folded = profile_namespace("Shop.EU_west")
    assert folded.startswith("fleetbus-shop-eu-west-")
    assert folded != profile_namespace("shop-eu-west")
    assert len(profile_namespace("p" * 200)) <= 63
    assert label_value("x" * 80 + ".") == "x" * 63
    rendering = render(
        desired(WEB, {**WEB, "name": "Web_2"}, {**WEB, "name": "odd", "config": {"a b": 1}}), site=SITE
    )
    assert set(rendering.failed) == {"Web_2", "odd"}
    assert "RFC 1123" in rendering.failed["Web_2"]
    assert "'a b'" in rendering.failed["odd"]
    assert {o.component for o in rendering.objects} == {"web", None}  # None: the namespace


# -- apply, prune, outcomes ------------------------------------------------------------------------


async def test_short_form_and_raw_manifests_apply_with_labels_and_outcomes(driver, standin):
    applied = await driver.apply(desired(WEB, CACHE))
    assert applied.changed
    assert outcomes(applied.objects) == {
        "Namespace /fleetbus-shop": "created",
        "ServiceAccount fleetbus-shop/redis": "created",
        "ConfigMap fleetbus-shop/web-config": "created",
        "ClusterRole /redis-reader": "created",  # cluster-scoped by discovery: no namespace
        "Service fleetbus-shop/web": "created",
        "Deployment fleetbus-shop/redis": "created",
        "Deployment fleetbus-shop/web": "created",
    }
    web = standin.get("apps/v1", "Deployment", "fleetbus-shop", "web")
    assert web is not None
    assert web["spec"]["replicas"] == 2
    assert web["metadata"]["labels"][COMPONENT_LABEL] == "web"
    assert web["metadata"]["managedFields"][0]["manager"] == "fleetbus"
    redis = standin.get("apps/v1", "Deployment", "fleetbus-shop", "redis")
    assert redis is not None
    assert redis["spec"]["template"]["metadata"]["labels"] == {"app": "redis"}  # as the manifest says
    assert redis["metadata"]["labels"][COMPONENT_LABEL] == "cache"
    assert standin.get("rbac.authorization.k8s.io/v1", "ClusterRole", None, "redis-reader") is not None
    state = await driver.applied()
    assert state is not None
    assert state.driver == "kubernetes"

    again = await driver.apply(desired(WEB, CACHE))
    assert not again.changed
    assert set(outcomes(again.objects).values()) == {"unchanged"}

    bumped = await driver.apply(desired({**WEB, "version": "1.28"}, CACHE))
    changed = {k: v for k, v in outcomes(bumped.objects).items() if v != "unchanged"}
    assert changed == {"Deployment fleetbus-shop/web": "configured"}


async def test_a_referenced_secret_becomes_a_secret_mounted_in_the_pods_and_rolls_them(driver, standin):
    web = {**WEB, "config": {"greeting": "hi", "password": {"secretRef": "db-password"}}}

    def with_secret(version: int, value: bytes) -> DesiredState:
        state = desired(web)
        document, _ = pin(state.document, {"db-password": version})
        return replace(state, document=document, hash=content_hash(document), secrets={"db-password": value})

    applied = await driver.apply(with_secret(1, b"s3cret-1"))
    assert outcomes(applied.objects)["Secret fleetbus-shop/web-secrets"] == "created"
    secret = standin.get("v1", "Secret", "fleetbus-shop", "web-secrets")
    assert secret is not None
    assert base64.b64decode(secret["data"]["password"]) == b"s3cret-1"
    config = standin.get("v1", "ConfigMap", "fleetbus-shop", "web-config")
    assert config is not None
    assert json.loads(config["data"]["password"]) == {"secretRef": "db-password", "version": 1}  # no value
    pod = standin.get("apps/v1", "Deployment", "fleetbus-shop", "web")["spec"]["template"]
    assert {"name": "fleetbus-secrets", "mountPath": SECRETS_MOUNT, "readOnly": True} in (
        pod["spec"]["containers"][0]["volumeMounts"]
    )
    rotated = await driver.apply(with_secret(2, b"s3cret-2"))
    changed = {k for k, v in outcomes(rotated.objects).items() if v != "unchanged"}
    assert changed == {
        "Secret fleetbus-shop/web-secrets",
        "ConfigMap fleetbus-shop/web-config",
        "Deployment fleetbus-shop/web",  # its config hash changed: the pods roll
    }
    secret = standin.get("v1", "Secret", "fleetbus-shop", "web-secrets")
    assert base64.b64decode(secret["data"]["password"]) == b"s3cret-2"
    assert b"s3cret" not in driver.path.read_bytes()  # the driver's own record holds no value
    with pytest.raises(DriverError, match="references secret 'db-password', which this edge has not opened"):
        await driver.apply(replace(with_secret(3, b"x"), secrets={}))
    # Anywhere but as a whole config value, this driver has nowhere to put it: refused.
    nested = {**WEB, "config": {"db": {"password": {"secretRef": "db-password"}}}}
    state = desired(nested)
    with pytest.raises(DriverError, match=r"referenced at config\.db\.password"):
        await driver.apply(replace(state, secrets={"db-password": b"x"}))


async def test_removing_a_component_prunes_exactly_its_objects(driver, standin, kube):
    await driver.apply(desired(WEB, CACHE))
    # Not fleetbus's: created by someone else in the same namespace, and one another site owns.
    await kube.request(
        "POST",
        "/api/v1/namespaces/fleetbus-shop/configmaps",
        body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hand-made"}, "data": {"a": "1"}},
    )
    foreign = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "other-site",
            "namespace": "fleetbus-shop",
            "labels": {MANAGED_BY: "fleetbus", SITE_LABEL: "r1-e2", COMPONENT_LABEL: "cache"},
        },
    }
    await kube.apply(foreign)
    before = standin.names("ConfigMap") | standin.names("Deployment")

    pruned = await driver.apply(desired(WEB))
    gone = {k for k, v in outcomes(pruned.objects).items() if v == "pruned"}
    assert gone == {
        "ServiceAccount fleetbus-shop/redis",
        "Deployment fleetbus-shop/redis",
        "ClusterRole /redis-reader",
    }
    assert standin.get("apps/v1", "Deployment", "fleetbus-shop", "redis") is None
    assert standin.names("Pod") == {p for p in standin.names("Pod") if "/web-" in p}  # redis's pods went too
    assert standin.get("v1", "ServiceAccount", "fleetbus-shop", "redis") is None
    assert standin.get("rbac.authorization.k8s.io/v1", "ClusterRole", None, "redis-reader") is None
    left = standin.names("ConfigMap") | standin.names("Deployment")
    assert before - left == {"fleetbus-shop/redis"}
    assert {"fleetbus-shop/hand-made", "fleetbus-shop/other-site", "fleetbus-shop/web"} <= left
    assert standin.get("v1", "Namespace", None, "fleetbus-shop") is not None  # never pruned


async def test_prune_remembers_kinds_across_a_restart(driver, standin, kube, tmp_path):
    await driver.apply(desired(WEB, CACHE))
    restarted = KubernetesDriver(kube, site=SITE, state_dir=tmp_path / "state", rollout_timeout=5.0)
    pruned = await restarted.apply(desired(WEB))
    assert "ClusterRole /redis-reader" in {k for k, v in outcomes(pruned.objects).items() if v == "pruned"}


# -- failures --------------------------------------------------------------------------------------


async def test_an_invalid_object_fails_alone_with_the_apis_message(driver, standin):
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}, "data": {"k": "v"}}
    with pytest.raises(DriverError) as caught:
        await driver.apply(desired(WEB, {"name": "extra", "manifests": [bad]}))
    results = outcomes(caught.value.objects)
    assert results["ConfigMap fleetbus-shop/Bad_Name"] == "failed"
    failed = next(o for o in caught.value.objects if o.name == "Bad_Name")
    assert failed.message is not None
    assert failed.message.startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"'
    )
    assert "1 of 5 objects failed" in str(caught.value)
    assert results["Deployment fleetbus-shop/web"] == "created"
    assert standin.get("apps/v1", "Deployment", "fleetbus-shop", "web") is not None
    assert await driver.applied() is None  # nothing fully applied yet: no applied state


async def test_an_unknown_kind_fails_its_component_and_leaves_its_objects(driver, standin):
    await driver.apply(desired(WEB, CACHE))
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    broken_cache = {**CACHE, "manifests": [*CACHE["manifests"], widget]}
    with pytest.raises(DriverError) as caught:
        await driver.apply(desired(WEB, broken_cache))
    failed = [o for o in caught.value.objects if o.outcome is ObjectOutcome.FAILED]
    assert [(o.kind, o.name) for o in failed] == [("Component", "cache")]
    assert "no API example.com/v1" in (failed[0].message or "")
    # The component's live objects are its last state: not pruned, not touched.
    assert standin.get("apps/v1", "Deployment", "fleetbus-shop", "redis") is not None
    assert "pruned" not in outcomes(caught.value.objects).values()


async def test_a_deployment_that_never_becomes_available_fails_after_the_timeout(kube, standin, tmp_path):
    standin.stuck_images.add("nginx:broken")
    driver = KubernetesDriver(kube, site=SITE, state_dir=tmp_path / "state", rollout_timeout=1.0)
    with pytest.raises(DriverError) as caught:
        await driver.apply(desired({**WEB, "version": "broken"}))
    web = next(o for o in caught.value.objects if o.kind == "Deployment")
    assert web.outcome is ObjectOutcome.FAILED
    assert web.message == "created, but not available after 1 s (0/2 replicas available)"


async def test_api_down_retries_then_fails_and_keeps_the_last_applied_state(driver, standin):
    await driver.apply(desired(WEB))
    first = await driver.applied()
    assert first is not None
    seen = await driver.inventory()
    assert seen.error is None

    await standin.stop()
    requests = len(standin.requests)
    with pytest.raises(DriverError, match=r"unreachable.*\(tried 3 times\)"):
        await driver.apply(desired({**WEB, "version": "1.28"}))
    assert len(standin.requests) == requests  # nothing reached it
    assert await driver.applied() == first
    stale = await driver.inventory()
    assert stale.error is not None
    assert "unreachable" in stale.error
    assert stale.nodes == seen.nodes  # the last reading, marked with why it is old
    with pytest.raises(UnreachableError):  # watch_drift logs it and tries at the next period
        await driver.check_drift()

    await standin.start()  # the API server is back, state intact
    back = await driver.apply(desired({**WEB, "version": "1.28"}))
    assert outcomes(back.objects)["Deployment fleetbus-shop/web"] == "configured"
    latest = await driver.applied()
    assert latest is not None
    assert latest.desired_hash != first.desired_hash


# -- drift -----------------------------------------------------------------------------------------


async def merge_patch(
    standin: KubeStandIn, path: str, patch: dict[str, Any], manager: str = "kubectl-edit"
) -> None:
    """What `kubectl edit/scale` does: a merge patch under another field manager."""
    await raw_request(
        standin, "PATCH", f"{path}?fieldManager={manager}", patch, "application/merge-patch+json"
    )


async def raw_request(
    standin: KubeStandIn, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> None:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {standin.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{standin.url}{path}", json=body, headers=headers) as answer,
    ):
        assert answer.status == 200, await answer.text()


async def test_drift_is_reported_once_and_left_alone_by_default(driver, standin):
    await driver.apply(desired(WEB, CACHE))
    assert await driver.check_drift() == []  # server defaults are not drift

    await merge_patch(
        standin, "/apis/apps/v1/namespaces/fleetbus-shop/deployments/web", {"spec": {"replicas": 5}}
    )
    found = await driver.check_drift()
    assert [(d.object, d.fields, d.action) for d in found] == [
        ("Deployment fleetbus-shop/web", ["spec.replicas"], "reported")
    ]
    assert found[0].component == "web"
    assert await driver.check_drift() == []  # the same drift is reported once
    web = standin.get("apps/v1", "Deployment", "fleetbus-shop", "web")
    assert web is not None
    assert web["spec"]["replicas"] == 5  # report only: left as the operator made it


async def test_drift_is_corrected_under_drift_policy_correct(driver, standin):
    await driver.apply(desired(WEB, CACHE, drift_policy="correct"))
    await merge_patch(
        standin, "/apis/apps/v1/namespaces/fleetbus-shop/deployments/web", {"spec": {"replicas": 5}}
    )
    await merge_patch(
        standin, "/api/v1/namespaces/fleetbus-shop/configmaps/web-config", {"data": {"greeting": "hacked"}}
    )
    await raw_request(standin, "DELETE", "/api/v1/namespaces/fleetbus-shop/serviceaccounts/redis")

    found = {d.object: (d.fields, d.action) for d in await driver.check_drift()}
    assert found == {
        "Deployment fleetbus-shop/web": (["spec.replicas"], "corrected"),
        "ConfigMap fleetbus-shop/web-config": (["data.greeting"], "corrected"),
        "ServiceAccount fleetbus-shop/redis": (["<missing>"], "corrected"),
    }
    web = standin.get("apps/v1", "Deployment", "fleetbus-shop", "web")
    config = standin.get("v1", "ConfigMap", "fleetbus-shop", "web-config")
    assert web is not None
    assert config is not None
    assert web["spec"]["replicas"] == 2
    assert config["data"]["greeting"] == "hello"
    assert standin.get("v1", "ServiceAccount", "fleetbus-shop", "redis") is not None
    assert await driver.check_drift() == []


# -- inventory and configuration -----------------------------------------------------------------


async def test_inventory_has_nodes_pods_by_phase_and_owned_deployments(driver, standin):
    standin.add_pod("kube-system", "coredns-1")
    standin.add_pod("kube-system", "helm-install-1", phase="Succeeded")
    await driver.apply(desired(WEB))
    seen = await driver.inventory()
    assert seen.error is None
    assert seen.server == standin.url
    nodes = {n.name: n for n in seen.nodes}
    assert nodes["edge-node-1"].ready
    assert not nodes["edge-node-2"].ready
    assert nodes["edge-node-2"].capacity["cpu"] == "2"
    assert nodes["edge-node-1"].allocatable["memory"] == "8029876Ki"
    assert nodes["edge-node-1"].kubelet_version == "v1.31.4+k3s1"
    assert nodes["edge-node-1"].architecture == "amd64"
    assert seen.pods == {"fleetbus-shop": {"Running": 2}, "kube-system": {"Running": 1, "Succeeded": 1}}
    assert [
        (d.namespace, d.name, d.ready_replicas, d.desired_replicas, d.available) for d in seen.deployments
    ] == [("fleetbus-shop", "web", 2, 2, True)]


async def test_a_bad_kubeconfig_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot load the Kubernetes client configuration.*set kubeconfig"):
        await connect(kubeconfig=tmp_path / "missing", context=None, in_cluster=False, timeout=1)
    with pytest.raises(ConfigError, match="in-cluster service account"):
        await connect(kubeconfig=None, context=None, in_cluster=True, timeout=1)


async def test_a_wrong_token_fails_with_the_apis_answer(standin, tmp_path):
    wrong = KubeStandIn(token="other")  # noqa: S106
    wrong.port = standin.port
    api = await connect(
        kubeconfig=wrong.write_kubeconfig(tmp_path / "kc"), context=None, in_cluster=False, timeout=2
    )
    try:
        driver = KubernetesDriver(api, site=SITE, state_dir=tmp_path / "s", rollout_timeout=1)
        with pytest.raises(DriverError) as caught:
            await driver.apply(desired(WEB))
        assert {o.message for o in caught.value.objects} == {"Unauthorized"}
    finally:
        await api.close()


# -- a real edge daemon ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_edge_daemon_with_the_kubernetes_driver_in_a_fleet(tmp_path, standin):
    standin.add_pod("kube-system", "coredns-1")
    kubeconfig = standin.write_kubeconfig(tmp_path / "kubeconfig")
    settings: dict[Tier, dict[str, object]] = {
        Tier.EDGE: {
            "driver": "kubernetes",
            "kubeconfig": str(kubeconfig),
            "kube_drift_interval": 0.5,
            "kube_rollout_timeout": 10.0,
            "inventory_scan_interval": 0.5,
        }
    }
    async with running_fleet(tmp_path, regions=1, edges=1, settings=settings) as fleet:
        client = await fleet_client(fleet)
        try:
            profile = Profile.model_validate(
                {"name": "shop", "spec": {"driftPolicy": "correct", "components": [WEB, CACHE]}}
            )
            await client.profiles.apply(profile)

            async def applied() -> Any:
                report = await client.report(SITE)
                result = report.apply_result if report else None
                return result if result and result.status.value == "applied" else None

            result = await eventually(applied, timeout=30, what="the edge's ApplyResult at the hub")
            assert result.driver == "kubernetes"
            assert set(outcomes(result.objects).values()) == {"created"}
            assert len(result.objects) == 7

            async def cluster_inventory() -> Any:
                snapshot = await client.get_inventory(SITE)
                k8s = snapshot.kubernetes
                return k8s if k8s and k8s.deployments and all(d.available for d in k8s.deployments) else None

            k8s = await eventually(
                cluster_inventory, timeout=30, what="nodes and pods in the hub's inventory"
            )
            assert sorted(n.name for n in k8s.nodes) == ["edge-node-1", "edge-node-2"]
            assert k8s.pods["kube-system"] == {"Running": 1}
            assert k8s.pods["fleetbus-shop"] == {"Running": 3}

            await merge_patch(
                standin, "/apis/apps/v1/namespaces/fleetbus-shop/deployments/web", {"spec": {"replicas": 7}}
            )
            drift = await eventually(
                lambda: first_drift(client), timeout=30, what="the drift event at the hub"
            )
            assert drift.data["fields"] == ["spec.replicas"]
            assert drift.data["action"] == "corrected"
            web = standin.get("apps/v1", "Deployment", "fleetbus-shop", "web")
            assert web is not None
            assert web["spec"]["replicas"] == 2
            assert "fleetbus_drift_total" in CHECKED_ELSEWHERE
            scrape = await Metrics(fleet).scrape(SITE)
            assert scrape.value("fleetbus_drift_total", action="corrected") >= 1

            # The API server goes away: the edge retries, reports failed, keeps running.
            edge = fleet.daemons[SITE]
            pid = edge.pid
            await standin.stop()
            await client.profiles.apply(
                profile.model_copy(update={"spec": profile.spec.model_copy(update={"components": [
                    profile.spec.components[0].model_copy(update={"version": "1.28"})
                ]})}),
            )  # fmt: skip

            async def status(wanted: str) -> Any:
                report = await client.report(SITE)
                result = report.apply_result if report else None
                return result if result and result.status.value == wanted else None

            failed = await eventually(lambda: status("failed"), timeout=30, what="a failed ApplyResult")
            assert "unreachable" in (failed.error or "")
            assert "(tried 3 times)" in (failed.error or "")
            assert edge.running
            assert edge.pid == pid  # no crash, no restart
            stale = (await client.get_inventory(SITE)).kubernetes
            assert stale is not None
            assert sorted(n.name for n in stale.nodes) == ["edge-node-1", "edge-node-2"]  # the last reading

            await standin.start()  # back: the edge's own retry applies the new revision
            done = await eventually(
                lambda: status("applied"), timeout=90, what="the apply after the API returned"
            )
            assert outcomes(done.objects)["Deployment fleetbus-shop/web"] == "configured"
            assert outcomes(done.objects)["Deployment fleetbus-shop/redis"] == "pruned"
        finally:
            await client.close()


def test_edge_refuses_an_unreadable_kubeconfig_before_starting(tmp_path):
    result = subprocess.run(
        [
            sys.executable, "-m", "edge", "--site", "r1-e1", "--region", "r1", "--driver", "kubernetes",
            "--kubeconfig", str(tmp_path / "missing"), "--state-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot load the Kubernetes client configuration from the kubeconfig" in result.stderr
    assert "Traceback" not in result.stderr


async def fleet_client(fleet: Any) -> FleetClient:
    return await FleetClient.connect(fleet.plan.site("hub").server.client_url, creds=admin_creds(fleet.plan))


async def first_drift(client: FleetClient) -> Any:
    async def one() -> Any:
        async for event in client.watch_events(["drift"]):
            return event
        return None

    try:
        return await asyncio.wait_for(one(), 2)
    except TimeoutError:
        return None
