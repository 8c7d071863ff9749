"""Driver `kubernetes`: apply the desired state to the site's cluster, report what runs there.

The only module that imports kubernetes-asyncio. It speaks to the API server with the
client's configuration and transport (kubeconfig or in-cluster service account) and plain
REST paths found by discovery, so one code path serves every kind, raw manifests included:

- **apply**: server-side apply (`PATCH`, `application/apply-patch+yaml`, field manager
  `fleetbus`, `force=true`) of every object `edge.drivers.manifests` renders, namespaces and
  config first; each object's outcome (created / configured / unchanged / failed with the
  API's message) goes into the ApplyResult. A failing object does not stop the others.
- **prune**: objects labelled as this site's (`app.kubernetes.io/managed-by=fleetbus`,
  `fleetbus.io/site=<edge>`) that the desired state no longer has are deleted, in every kind
  it has ever applied; never namespaces (they may hold what fleetbus does not own), never
  objects of a component that failed to render (its last state is kept).
- **wait**: Deployments must become available within `rollout_timeout`.
- **drift**: `check_drift()` dry-runs each applied object against the live one; a difference
  is reported once per distinct set of fields, and re-applied under `driftPolicy: correct`.
- **inventory**: nodes, pods by phase per namespace, and the Deployments it owns.

The API unreachable is temporary: an apply retries a few times with back-off, then fails with
the reason (the reconciler retries later); the last applied state stays what `applied()`
reports; the inventory keeps its last reading and says why it is old.
"""

import asyncio
import json
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException
from pydantic import ValidationError

from edge.drivers import Applied, Drift, DriverError
from edge.drivers.local import read_applied, write_atomic
from edge.drivers.manifests import (
    COMPONENT_LABEL,
    FLEETBUS,
    Ref,
    Rendered,
    Rendering,
    comparable,
    differences,
    owner_selector,
    render,
)
from fleetbus.core.desired import DesiredState
from fleetbus.errors import ConfigError
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff
from schemas.base import utcnow
from schemas.event import ObjectOutcome, ObjectResult
from schemas.inventory import AppliedState, KubeNode, KubernetesInventory, OwnedDeployment
from schemas.profile import DriftPolicy

logger = log.get_logger(__name__)

FIELD_MANAGER = FLEETBUS
APPLY_PATCH = "application/apply-patch+yaml"
STATE_FILE = "kubernetes-applied.json"
# Kinds the short form renders: always looked at for pruning, even before the first apply.
SHORT_FORM_KINDS = frozenset({("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "Deployment")})
_OK = {200: "object", 201: "object", 202: "object"}


class ApiError(Exception):
    """The API server answered with an error status; `message` is its own words."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message

    @classmethod
    def of(cls, exc: ApiException) -> "ApiError":
        message = str(exc.reason or "")
        reason = str(exc.reason or "")
        try:
            status = json.loads(exc.body or "{}")
        except ValueError:
            status = {}
        if isinstance(status, dict):
            message = str(status.get("message") or message)
            reason = str(status.get("reason") or reason)
        return cls(int(exc.status or 0), reason, message)


class UnreachableError(Exception):
    """The API server did not answer (refused, timed out, connection lost)."""


@dataclass(frozen=True)
class Resource:
    plural: str
    namespaced: bool


class KubeApi:
    """The subset of the Kubernetes REST API the driver uses, over kubernetes-asyncio."""

    def __init__(self, api_client: k8s.ApiClient, *, timeout: float) -> None:
        self.client = api_client
        self.timeout = timeout
        self._discovered: dict[str, dict[str, Resource]] = {}

    @property
    def server(self) -> str:
        return str(self.client.configuration.host)

    async def close(self) -> None:
        await self.client.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        try:
            data, status, _ = await self.client.call_api(
                path,
                method,
                query_params=list(query),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                response_types_map=_OK,
                auth_settings=["BearerToken"],
                _return_http_data_only=False,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            raise ApiError.of(exc) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            msg = f"Kubernetes API at {self.server} unreachable: {exc!r}"
            raise UnreachableError(msg) from exc
        return int(status), data if isinstance(data, dict) else {}

    async def resource(self, api_version: str, kind: str) -> Resource:
        """What the API calls `kind` (its plural, whether namespaced), by discovery."""
        known = self._discovered.get(api_version)
        if known is None or kind not in known:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                _, listing = await self.request("GET", base)
            except ApiError as exc:
                if exc.status == 404:
                    msg = f"this cluster serves no API {api_version}"
                    raise ApiError(404, "NotFound", msg) from exc
                raise
            known = {
                r["kind"]: Resource(r["name"], bool(r.get("namespaced")))
                for r in listing.get("resources", [])
                if "/" not in r.get("name", "/")  # not a subresource (deployments/status)
            }
            self._discovered[api_version] = known
        if kind not in known:
            msg = f"this cluster has no kind {kind} in {api_version}"
            raise ApiError(404, "NotFound", msg)
        return known[kind]

    async def path(self, ref: Ref, *, named: bool = True) -> str:
        resource = await self.resource(ref.api_version, ref.kind)
        base = "/api/v1" if ref.api_version == "v1" else f"/apis/{ref.api_version}"
        if resource.namespaced and ref.namespace:
            base += f"/namespaces/{ref.namespace}"
        return f"{base}/{resource.plural}/{ref.name}" if named else f"{base}/{resource.plural}"

    async def get(self, ref: Ref) -> dict[str, Any] | None:
        try:
            return (await self.request("GET", await self.path(ref)))[1]
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def apply(self, body: Mapping[str, Any], *, dry_run: bool = False) -> tuple[int, dict[str, Any]]:
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        return await self.request(
            "PATCH", await self.path(Ref.of(body)), query=query, body=dict(body), content_type=APPLY_PATCH
        )

    async def delete(self, ref: Ref) -> None:
        await self.request("DELETE", await self.path(ref), query=[("propagationPolicy", "Background")])

    async def list(self, api_version: str, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind in all namespaces; items get the apiVersion and kind a real
        API server leaves out of list items."""
        query = [("labelSelector", selector)] if selector else []
        _, listing = await self.request(
            "GET", await self.path(Ref(api_version, kind, None, ""), named=False), query=query
        )
        return [{**item, "apiVersion": api_version, "kind": kind} for item in listing.get("items", [])]


async def connect(
    *, kubeconfig: Path | None, context: str | None, in_cluster: bool | None, timeout: float
) -> KubeApi:
    """A client for the site's cluster: the pod's service account when running in one (or
    `in_cluster`), else `kubeconfig` (default `$KUBECONFIG`, then ~/.kube/config) and `context`."""
    configuration = k8s.Configuration()
    use_cluster = in_cluster if in_cluster is not None else (kubeconfig is None and _in_pod())
    try:
        if use_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await k8s_config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig else None,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        where = "in-cluster service account" if use_cluster else f"kubeconfig {kubeconfig or '(default)'}"
        msg = (
            f"cannot load the Kubernetes client configuration from the {where}: {exc}; "
            "set kubeconfig (and kube_context), or run the edge in a pod"
        )
        raise ConfigError(msg) from exc
    return KubeApi(k8s.ApiClient(configuration), timeout=timeout)


def _in_pod() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


class KubernetesDriver:
    name = "kubernetes"

    def __init__(
        self,
        api: KubeApi,
        *,
        site: str,
        state_dir: Path,
        rollout_timeout: float = 120.0,
        attempts: int = 3,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.api, self.site = api, site
        self.path = state_dir / STATE_FILE
        self.rollout_timeout, self.attempts = rollout_timeout, attempts
        self.clock = clock
        self._lock = asyncio.Lock()  # one apply or drift check at a time
        self._applied, self._kinds = self._load()
        self._objects: list[Rendered] = []  # what the last apply applied: drift is checked on these
        self._drift_seen: dict[Ref, tuple[str, ...]] = {}
        self._inventory: KubernetesInventory | None = None

    def _load(self) -> tuple[AppliedState | None, set[tuple[str, str]]]:
        record = read_applied(self.path) or {}
        kinds = {tuple(k) for k in record.get("kinds", []) if isinstance(k, list) and len(k) == 2}
        try:
            state = AppliedState.model_validate(record["applied"])
        except (KeyError, ValidationError):
            state = None
        return state, {(str(v), str(k)) for v, k in kinds} | SHORT_FORM_KINDS

    async def applied(self) -> AppliedState | None:
        return self._applied

    async def apply(self, desired: DesiredState) -> Applied:
        retry = Backoff(0.5, cap=4.0)
        attempt = 1
        async with self._lock:
            while True:
                try:
                    return await self._apply(desired)
                except UnreachableError as exc:
                    if attempt >= self.attempts:
                        msg = f"{exc} (tried {attempt} times)"
                        raise DriverError(msg) from exc
                    logger.warning("Kubernetes API unreachable; retrying", error=str(exc), attempt=attempt)
                    attempt += 1
                    await retry.wait()

    async def _apply(self, desired: DesiredState) -> Applied:
        rendering = await self._render(desired)
        results = [
            ObjectResult(
                api_version=FLEETBUS, kind="Component", name=name, component=name,
                outcome=ObjectOutcome.FAILED, message=reason,
            )
            for name, reason in sorted(rendering.failed.items())
        ]  # fmt: skip
        kinds = self._kinds | {(o.ref.api_version, o.ref.kind) for o in rendering.objects}
        live = await self._owned(kinds)
        results += [await self._apply_one(obj, live.get(obj.ref)) for obj in rendering.ordered()]
        wanted = {o.ref for o in rendering.objects}
        for ref, body in sorted(live.items()):
            component = (body.get("metadata", {}).get("labels") or {}).get(COMPONENT_LABEL)
            if ref in wanted or ref.kind == "Namespace" or component in rendering.failed:
                continue
            results.append(await self._prune(ref, component))
        results = await self._wait_available(results)
        applied_ok = {Ref.of_result(r) for r in results if r.outcome is not ObjectOutcome.FAILED}
        self._objects = [o for o in rendering.objects if o.ref in applied_ok]
        self._kinds = kinds
        changed = any(
            r.outcome in (ObjectOutcome.CREATED, ObjectOutcome.CONFIGURED, ObjectOutcome.PRUNED)
            for r in results
        )
        failed = [r for r in results if r.outcome is ObjectOutcome.FAILED]
        if failed:
            await self._save()  # the kinds it touched, for later prunes; not a new applied state
            first = failed[0]
            msg = f"{len(failed)} of {len(results)} objects failed; first: {first.kind} {first.name}: "
            msg += str(first.message)
            raise DriverError(msg, results)
        self._applied = AppliedState(
            desired_hash=desired.hash,
            profile_revisions=desired.profile_revisions,
            applied_at=self.clock(),
            driver=self.name,
        )
        await self._save()
        return Applied(changed=changed, objects=results)

    async def _render(self, desired: DesiredState) -> Rendering:
        """Render, after asking discovery whether each raw manifest's kind is namespaced."""
        scopes: dict[tuple[str, str], bool] = {}
        unknown: dict[tuple[str, str], str] = {}
        for component in (desired.document.get("components") or {}).values():
            manifests = component.get("manifests") if isinstance(component, Mapping) else None
            for manifest in manifests if isinstance(manifests, list) else []:
                if not isinstance(manifest, Mapping):
                    continue
                key = (str(manifest.get("apiVersion")), str(manifest.get("kind")))
                if key in scopes or key in unknown:
                    continue
                try:
                    scopes[key] = not (await self.api.resource(*key)).namespaced
                except ApiError as exc:
                    unknown[key] = exc.message
        rendering = render(desired, site=self.site, cluster_scoped=lambda v, k: scopes.get((v, k), False))
        for obj in list(rendering.objects):
            reason = unknown.get((obj.ref.api_version, obj.ref.kind))
            if reason and obj.component:
                rendering.failed[obj.component] = f"component {obj.component}: {obj.ref}: {reason}"
        rendering.objects = [o for o in rendering.objects if o.component not in rendering.failed]
        return rendering

    async def _owned(self, kinds: Iterable[tuple[str, str]]) -> dict[Ref, dict[str, Any]]:
        """This site's live objects of `kinds` (kinds the cluster no longer serves are skipped)."""
        out: dict[Ref, dict[str, Any]] = {}
        for api_version, kind in sorted(kinds):
            try:
                items = await self.api.list(api_version, kind, owner_selector(self.site))
            except ApiError as exc:
                logger.warning(
                    "cannot list owned objects", kind=kind, api_version=api_version, error=exc.message
                )
                continue
            for item in items:
                out[Ref.of(item)] = item
        return out

    async def _apply_one(self, obj: Rendered, before: Mapping[str, Any] | None) -> ObjectResult:
        try:
            status, after = await self.api.apply(obj.body)
        except ApiError as exc:
            return obj.ref.result(ObjectOutcome.FAILED, obj.component, exc.message)
        if status == 201:
            outcome = ObjectOutcome.CREATED
        elif before is not None and _version(before) == _version(after):
            outcome = ObjectOutcome.UNCHANGED
        else:
            outcome = ObjectOutcome.CONFIGURED
        self._drift_seen.pop(obj.ref, None)
        return obj.ref.result(outcome, obj.component)

    async def _prune(self, ref: Ref, component: str | None) -> ObjectResult:
        try:
            await self.api.delete(ref)
        except ApiError as exc:
            if exc.status != 404:  # already gone is pruned too
                return ref.result(ObjectOutcome.FAILED, component, exc.message)
        return ref.result(ObjectOutcome.PRUNED, component)

    async def _wait_available(self, results: list[ObjectResult]) -> list[ObjectResult]:
        waits = [
            self._rollout(r)
            if r.kind == "Deployment" and r.outcome not in (ObjectOutcome.FAILED, ObjectOutcome.PRUNED)
            else _same(r)
            for r in results
        ]
        return list(await asyncio.gather(*waits))

    async def _rollout(self, result: ObjectResult) -> ObjectResult:
        """`result`, or a failure if the Deployment is not available within the timeout."""
        ref = Ref.of_result(result)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.rollout_timeout
        poll = Backoff(0.2, cap=2.0)
        body: dict[str, Any] | None = None
        while True:
            try:
                body = await self.api.get(ref)
            except ApiError as exc:
                return result.model_copy(update={"outcome": ObjectOutcome.FAILED, "message": exc.message})
            verdict = _rollout_state(body)
            if verdict is True:
                return result
            if isinstance(verdict, str) or loop.time() >= deadline:
                why = verdict if isinstance(verdict, str) else _progress(body, self.rollout_timeout)
                message = f"{result.outcome.value}, but {why}"
                return result.model_copy(update={"outcome": ObjectOutcome.FAILED, "message": message})
            await asyncio.sleep(min(poll.next_delay(), max(0.0, deadline - loop.time())))

    async def _save(self) -> None:
        record = {
            "applied": self._applied.model_dump(mode="json") if self._applied else None,
            "kinds": sorted([list(k) for k in self._kinds]),
        }
        try:
            await asyncio.to_thread(write_atomic, self.path, json.dumps(record, indent=2, sort_keys=True))
        except OSError as exc:
            logger.warning("cannot record the applied state", path=str(self.path), error=str(exc))

    # -- drift ---------------------------------------------------------------------------------

    async def check_drift(self) -> list[Drift]:
        """Compare every object of the last apply with the live one (an apply dry run shows what
        applying would change); correct it when its component's policy says so."""
        found: list[Drift] = []
        async with self._lock:
            for obj in self._objects:
                try:
                    fields = await self._drifted_fields(obj)
                except ApiError as exc:
                    logger.warning("cannot check drift", object=str(obj.ref), error=exc.message)
                    continue
                if not fields:
                    self._drift_seen.pop(obj.ref, None)
                    continue
                if obj.drift_policy is DriftPolicy.CORRECT:
                    found.append(await self._correct(obj, fields))
                elif self._drift_seen.get(obj.ref) != tuple(fields):  # once per distinct drift
                    self._drift_seen[obj.ref] = tuple(fields)
                    found.append(self._drift(obj, fields, "reported"))
        return found

    async def _drifted_fields(self, obj: Rendered) -> list[str]:
        live = await self.api.get(obj.ref)
        if live is None:
            return ["<missing>"]
        _, would_be = await self.api.apply(obj.body, dry_run=True)
        return differences(comparable(would_be), comparable(live))

    async def _correct(self, obj: Rendered, fields: list[str]) -> Drift:
        try:
            await self.api.apply(obj.body)
        except ApiError as exc:
            return self._drift(obj, fields, "correction_failed", exc.message)
        return self._drift(obj, fields, "corrected")

    def _drift(self, obj: Rendered, fields: list[str], action: str, error: str | None = None) -> Drift:
        ref = obj.ref
        return Drift(
            object=str(ref),
            ref={
                "api_version": ref.api_version,
                "kind": ref.kind,
                "namespace": ref.namespace,
                "name": ref.name,
            },
            component=obj.component,
            fields=fields,
            action=action,
            error=error,
        )

    async def watch_drift(self, interval: float, report: Callable[[Drift], Awaitable[None]]) -> None:
        """Check for drift every `interval` seconds until cancelled; report each finding."""
        while True:
            await asyncio.sleep(interval)  # a period, not a wait for something
            try:
                drifts = await self.check_drift()
            except UnreachableError as exc:
                logger.warning("cannot check drift; the API is unreachable", error=str(exc))
                continue
            for drift in drifts:
                await report(drift)

    # -- inventory -----------------------------------------------------------------------------

    async def inventory(self) -> KubernetesInventory:
        """Nodes, pods by phase per namespace, and the Deployments this site owns; when the API
        cannot be read, the last reading with the reason."""
        try:
            nodes = await self.api.list("v1", "Node")
            pods = await self.api.list("v1", "Pod")
            deployments = await self.api.list("apps/v1", "Deployment", owner_selector(self.site))
        except (ApiError, UnreachableError) as exc:
            last = self._inventory or KubernetesInventory(server=self.api.server)
            return last.model_copy(update={"error": str(exc)})
        phases: dict[str, Counter[str]] = {}
        for pod in pods:
            namespace = pod.get("metadata", {}).get("namespace", "")
            phases.setdefault(namespace, Counter())[pod.get("status", {}).get("phase", "Unknown")] += 1
        self._inventory = KubernetesInventory(
            server=self.api.server,
            nodes=[_node(n) for n in nodes],
            pods={ns: dict(sorted(c.items())) for ns, c in sorted(phases.items())},
            deployments=[_owned_deployment(d) for d in deployments],
            read_at=self.clock(),
        )
        return self._inventory


async def _same(result: ObjectResult) -> ObjectResult:
    return result


def _version(body: Mapping[str, Any]) -> str | None:
    value = (body.get("metadata") or {}).get("resourceVersion")
    return str(value) if value is not None else None


def _rollout_state(body: Mapping[str, Any] | None) -> bool | str:
    """True when available; a reason when it cannot become so; False while it may."""
    if body is None:
        return "it disappeared while waiting for it"
    spec, status = body.get("spec") or {}, body.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return str(condition.get("message") or "its progress deadline was exceeded")
    wanted = int(spec.get("replicas", 1))
    observed = int(status.get("observedGeneration", 0)) >= int(body.get("metadata", {}).get("generation", 0))
    updated = int(status.get("updatedReplicas", 0)) >= wanted
    available = int(status.get("availableReplicas", 0)) >= wanted
    return observed and updated and available


def _progress(body: Mapping[str, Any] | None, timeout: float) -> str:
    spec, status = (body or {}).get("spec") or {}, (body or {}).get("status") or {}
    return (
        f"not available after {timeout:g} s "
        f"({status.get('availableReplicas', 0)}/{spec.get('replicas', 1)} replicas available)"
    )


def _node(body: Mapping[str, Any]) -> KubeNode:
    status = body.get("status") or {}
    info = status.get("nodeInfo") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return KubeNode(
        name=body.get("metadata", {}).get("name", ""),
        ready=ready,
        capacity={k: str(v) for k, v in (status.get("capacity") or {}).items()},
        allocatable={k: str(v) for k, v in (status.get("allocatable") or {}).items()},
        kubelet_version=info.get("kubeletVersion", ""),
        os_image=info.get("osImage", ""),
        architecture=info.get("architecture", ""),
    )


def _owned_deployment(body: Mapping[str, Any]) -> OwnedDeployment:
    metadata, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    return OwnedDeployment(
        namespace=metadata.get("namespace", ""),
        name=metadata.get("name", ""),
        component=(metadata.get("labels") or {}).get(COMPONENT_LABEL),
        desired_replicas=int(spec.get("replicas", 1)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        available=_rollout_state(body) is True,
    )
