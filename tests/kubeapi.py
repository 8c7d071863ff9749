"""An in-process stand-in for the Kubernetes API server: the subset the kubernetes driver uses.

No real API server can run on the test machines (no kind, k3s or Docker), so the driver is
tested against this aiohttp app. It answers like the real one, bodies included:

- discovery: `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>` (APIResourceList);
- GET one object, LIST (all namespaces or one) with equality/existence label selectors; list
  items carry no apiVersion/kind, as the real server's do not;
- server-side apply: `PATCH` `application/apply-patch+yaml` with `fieldManager` (required),
  `force`, `dryRun=All`: fields are owned per manager, fields a manager stops applying are
  removed, a field another manager owns with another value is a 409 conflict unless forced;
  201 when it created the object; `resourceVersion` moves only when something changed;
- merge patch (`application/merge-patch+json`, as `kubectl edit/scale` do), POST (409
  AlreadyExists), DELETE (404 NotFound; a Deployment's pods and a namespace's objects go too);
- 404 for a namespaced object in a missing namespace; 422 Invalid for invalid names and
  Deployments whose selector does not match their template; 401 without the bearer token;
- defaulting of a few fields (Deployment strategy fields, imagePullPolicy, Service type and
  clusterIP), so comparisons with what the driver sent see server-side defaults as they would;
- a Deployment "controller": after each write, status (observedGeneration, replicas,
  updated/ready/availableReplicas, Available condition) and pods (Running, or Pending for
  images in `stuck_images`).

Simplifications (the driver does not depend on them): lists are atomic fields for field
ownership (the real server merges associative lists like containers by key); managedFields
are reported per manager but not in full FieldsV1 detail.
"""

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

Key = tuple[str, str, str | None, str]  # api_version, kind, namespace, name
Leaf = tuple[str, ...]

RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("Namespace", "namespaces", False),
        ("Node", "nodes", False),
        ("Pod", "pods", True),
        ("ConfigMap", "configmaps", True),
        ("Secret", "secrets", True),
        ("Service", "services", True),
        ("ServiceAccount", "serviceaccounts", True),
    ],
    "apps/v1": [
        ("Deployment", "deployments", True),
        ("StatefulSet", "statefulsets", True),
        ("DaemonSet", "daemonsets", True),
    ],
    "rbac.authorization.k8s.io/v1": [
        ("ClusterRole", "clusterroles", False),
        ("Role", "roles", True),
    ],
}
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SUBDOMAIN_HELP = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


class StatusError(Exception):
    def __init__(
        self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, dict(details or {})

    def response(self) -> web.Response:
        return web.json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": self.message,
                "reason": self.reason,
                "details": self.details,
                "code": self.code,
            },
            status=self.code,
        )


def _group(api_version: str) -> str:
    return api_version.partition("/")[0] if "/" in api_version else ""


def _qualified(plural: str, api_version: str) -> str:
    group = _group(api_version)
    return f"{plural}.{group}" if group else plural


def _leaves(doc: Any, path: Leaf = ()) -> dict[Leaf, Any]:
    if isinstance(doc, Mapping) and doc:
        out: dict[Leaf, Any] = {}
        for key, value in doc.items():
            out |= _leaves(value, (*path, key))
        return out
    return {path: doc}


def _get(doc: Any, path: Leaf) -> Any:
    for key in path:
        if not isinstance(doc, Mapping) or key not in doc:
            return None
        doc = doc[key]
    return doc


def _set(doc: dict[str, Any], path: Leaf, value: Any) -> None:
    for key in path[:-1]:
        child = doc.get(key)
        if not isinstance(child, dict):
            child = doc[key] = {}
        doc = child
    doc[path[-1]] = copy.deepcopy(value)


def _remove(doc: dict[str, Any], path: Leaf) -> None:
    parents = [doc]
    for key in path[:-1]:
        child = parents[-1].get(key)
        if not isinstance(child, dict):
            return
        parents.append(child)
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):  # drop objects left empty
        if parents[depth] == {}:
            parents[depth - 1].pop(path[depth - 1], None)


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _selected(labels: Mapping[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class KubeStandIn:
    def __init__(self, *, token: str = "standin-token") -> None:  # noqa: S107 - a test token
        self.token = token
        self.objects: dict[Key, dict[str, Any]] = {}
        self.owners: dict[Key, dict[str, set[Leaf]]] = {}  # field manager -> leaves it owns
        self.operations: dict[Key, dict[str, str]] = {}  # field manager -> Apply or Update
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.stuck_images: set[str] = set()  # Deployments with these images never become available
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- running -------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        """The API server goes away (connections refused until `start()` again; state kept)."""
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, context: str = "standin") -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "fleetbus", "user": {"token": self.token}}],
                    "contexts": [{"name": context, "context": {"cluster": "standin", "user": "fleetbus"}}],
                    "current-context": context,
                }
            )
        )
        return path

    # -- seeding and looking ---------------------------------------------------------------------

    def add_node(self, name: str, *, ready: bool = True, cpu: str = "4", memory: str = "8029876Ki") -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {
                "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
                "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                "conditions": [
                    {"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady"}
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.31.4+k3s1",
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "architecture": "amd64",
                },
            },
        }
        self._store(("v1", "Node", None, name), body, created=True)

    def add_pod(self, namespace: str, name: str, phase: str = "Running") -> None:
        self._ensure_namespace(namespace)
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": phase},
        }
        self._store(("v1", "Pod", namespace, name), body, created=True)

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((api_version, kind, namespace, name))

    def names(self, kind: str) -> set[str]:
        """`namespace/name` (or `name`) of every stored object of `kind`."""
        return {f"{k[2]}/{k[3]}" if k[2] else k[3] for k in self.objects if k[1] == kind}

    # -- HTTP ----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        try:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise StatusError(401, "Unauthorized", "Unauthorized")
            return await self._route(request)
        except StatusError as failure:
            return failure.response()

    async def _route(self, request: web.Request) -> web.StreamResponse:  # noqa: PLR0911 - one per route
        parts = [p for p in request.path.split("/") if p]
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis"]:
            return web.json_response(self._groups())
        if parts[:1] == ["api"] and len(parts) >= 2:
            api_version, rest = parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        if api_version not in RESOURCES:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return web.json_response(self._resources(api_version))
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, name = rest[0], (rest[1] if len(rest) > 1 else None)
        kind, namespaced = self._kind(api_version, plural)
        if namespaced is False:
            namespace = None
        if name is None:
            if request.method == "GET":
                return web.json_response(self._list(api_version, kind, namespace, request.query))
            if request.method == "POST":
                return await self._create(request, api_version, kind, plural, namespace)
            raise StatusError(405, "MethodNotAllowed", f"{request.method} is not supported on a collection")
        key: Key = (api_version, kind, namespace, name)
        if request.method == "GET":
            return web.json_response(self._read(key, plural))
        if request.method == "PATCH":
            return await self._patch(request, key, plural, namespaced)
        if request.method == "DELETE":
            return web.json_response(self._delete(key, plural))
        raise StatusError(405, "MethodNotAllowed", f"{request.method} is not supported here")

    def _groups(self) -> dict[str, Any]:
        groups = [
            {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}]}
            for gv in RESOURCES
            if "/" in gv
        ]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resources(self, api_version: str) -> dict[str, Any]:
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources = []
        for kind, plural, namespaced in RESOURCES[api_version]:
            resources.append(
                {
                    "name": plural,
                    "singularName": kind.lower(),
                    "namespaced": namespaced,
                    "kind": kind,
                    "verbs": verbs,
                }
            )
            if kind in ("Deployment", "Pod", "Node", "Namespace"):
                resources.append(
                    {
                        "name": f"{plural}/status",
                        "singularName": "",
                        "namespaced": namespaced,
                        "kind": kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": api_version,
            "resources": resources,
        }

    def _kind(self, api_version: str, plural: str) -> tuple[str, bool]:
        for kind, name, namespaced in RESOURCES[api_version]:
            if name == plural:
                return kind, namespaced
        raise StatusError(404, "NotFound", "the server could not find the requested resource")

    def _not_found(self, key: Key, plural: str) -> StatusError:
        api_version, _, _, name = key
        return StatusError(
            404,
            "NotFound",
            f'{_qualified(plural, api_version)} "{name}" not found',
            {"name": name, "group": _group(api_version), "kind": plural},
        )

    def _read(self, key: Key, plural: str) -> dict[str, Any]:
        if key not in self.objects:
            raise self._not_found(key, plural)
        return copy.deepcopy(self.objects[key])

    def _list(
        self, api_version: str, kind: str, namespace: str | None, query: Mapping[str, str]
    ) -> dict[str, Any]:
        selector = query.get("labelSelector", "")
        items = []
        for key, body in sorted(self.objects.items(), key=lambda kv: (kv[0][2] or "", kv[0][3])):
            if key[:2] != (api_version, kind) or (namespace is not None and key[2] != namespace):
                continue
            if _selected(body.get("metadata", {}).get("labels") or {}, selector):
                item = copy.deepcopy(body)
                item.pop("apiVersion", None)  # as the real server: list items carry neither
                item.pop("kind", None)
                items.append(item)
        return {
            "kind": f"{kind}List",
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": items,
        }

    async def _create(
        self, request: web.Request, api_version: str, kind: str, plural: str, namespace: str | None
    ) -> web.Response:
        body = await request.json()
        name = str(body.get("metadata", {}).get("name", ""))
        key: Key = (api_version, kind, namespace, name)
        if key in self.objects:
            raise StatusError(
                409,
                "AlreadyExists",
                f'{_qualified(plural, api_version)} "{name}" already exists',
                {"name": name, "group": _group(api_version), "kind": plural},
            )
        manager = request.query.get("fieldManager", "kubectl-create")
        return web.json_response(self._write(key, plural, body, manager, "Update", force=True), status=201)

    async def _patch(self, request: web.Request, key: Key, plural: str, namespaced: bool) -> web.Response:
        content_type = request.headers.get("Content-Type", "")
        dry_run = request.query.get("dryRun") == "All"
        manager = request.query.get("fieldManager")
        text = await request.text()
        if content_type.startswith("application/apply-patch"):
            if not manager:
                raise StatusError(400, "BadRequest", "fieldManager is required for apply requests")
            try:
                applied = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise StatusError(400, "BadRequest", f"error decoding YAML: {exc}") from exc
            self._check_identity(applied, key, namespaced)
            existed = key in self.objects
            body = self._write(
                key,
                plural,
                applied,
                manager,
                "Apply",
                force=request.query.get("force") == "true",
                dry_run=dry_run,
            )
            return web.json_response(body, status=200 if existed else 201)
        if content_type.startswith("application/merge-patch+json"):
            if key not in self.objects:
                raise self._not_found(key, plural)
            merged = _merge_patch(self.objects[key], json.loads(text))
            patch_leaves = set(_leaves(json.loads(text)))
            body = self._write(
                key,
                plural,
                merged,
                manager or "kubectl-edit",
                "Update",
                force=True,
                dry_run=dry_run,
                only=patch_leaves,
            )
            return web.json_response(body)
        raise StatusError(
            415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
        )

    def _check_identity(self, applied: Any, key: Key, namespaced: bool) -> None:
        api_version, kind, namespace, name = key
        if not isinstance(applied, dict):
            raise StatusError(400, "BadRequest", "the body of an apply request must be an object")
        metadata = applied.get("metadata") or {}
        if applied.get("apiVersion") != api_version or applied.get("kind") != kind:
            msg = (
                f"the API version in the data ({applied.get('apiVersion')}) does not match "
                f"the expected API version ({api_version})"
            )
            raise StatusError(400, "BadRequest", msg)
        if metadata.get("name") != name:
            raise StatusError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if namespaced and metadata.get("namespace", namespace) != namespace:
            msg = "the namespace of the provided object does not match the namespace sent on the request"
            raise StatusError(400, "BadRequest", msg)

    def _delete(self, key: Key, plural: str) -> dict[str, Any]:
        if key not in self.objects:
            raise self._not_found(key, plural)
        self._drop(key)
        api_version, kind, namespace, name = key
        if kind == "Deployment":
            for pod in self._pods_of(namespace, name):
                self._drop(pod)
        if kind == "Namespace":
            for other in [k for k in self.objects if k[2] == name]:
                self._drop(other)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": _group(api_version), "kind": plural},
        }

    # -- the store -----------------------------------------------------------------------------

    def _ensure_namespace(self, namespace: str) -> None:
        key: Key = ("v1", "Namespace", None, namespace)
        if key not in self.objects:
            self._store(
                key, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, created=True
            )

    def _drop(self, key: Key) -> None:
        self.objects.pop(key, None)
        self.owners.pop(key, None)
        self.operations.pop(key, None)

    def _write(
        self,
        key: Key,
        plural: str,
        config: dict[str, Any],
        manager: str,
        operation: str,
        *,
        force: bool,
        dry_run: bool = False,
        only: set[Leaf] | None = None,
    ) -> dict[str, Any]:
        """Apply (`operation` Apply: `config` is the manager's whole intent) or update (`only`:
        the leaves the manager touched) and return the stored object."""
        api_version, kind, namespace, name = key
        if namespace is not None and ("v1", "Namespace", None, namespace) not in self.objects:
            raise StatusError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        self._validate(key, config, plural)
        old = self.objects.get(key)
        owners = copy.deepcopy(self.owners.get(key, {}))
        mine = {p: v for p, v in _leaves(_user_fields(config)).items() if only is None or p in only}
        if operation == "Apply" and old is not None and not force:
            conflicts = [
                p for p, v in mine.items()
                for other, paths in owners.items()
                if other != manager and p in paths and _get(old, p) != v
            ]  # fmt: skip
            if conflicts:
                listed = "\n".join(
                    f'- conflict with "{m}": .{".".join(p)}'
                    for m in owners
                    for p in conflicts
                    if p in owners[m]
                )
                raise StatusError(
                    409, "Conflict", f"Apply failed with {len(conflicts)} conflict(s):\n{listed}"
                )
        if operation == "Apply":
            body = (
                copy.deepcopy(old)
                if old is not None
                else {"apiVersion": api_version, "kind": kind, "metadata": {}}
            )
            for path in owners.get(manager, set()) - set(mine):
                if not any(path in paths for other, paths in owners.items() if other != manager):
                    _remove(body, path)
            for path, value in mine.items():
                _set(body, path, value)
            owners[manager] = set(mine)
        else:  # an update: `config` is the whole new object
            body = copy.deepcopy(config)
            owners[manager] = owners.get(manager, set()) | set(mine)
        for other in owners:
            if other != manager:
                owners[other] -= set(mine)
        owners = {m: paths for m, paths in owners.items() if paths}
        operations = self.operations.get(key, {}) | {manager: operation}
        _default(body, old)
        changed = old is None or _user_fields(old) != _user_fields(body)
        metadata = body.setdefault("metadata", {})
        metadata.update(name=name, **({"namespace": namespace} if namespace else {}))
        if old is None:
            metadata["uid"] = f"00000000-0000-4000-8000-{next(self._uids):012d}"
            metadata["creationTimestamp"] = "2026-11-21T00:00:00Z"
        if "spec" in body and (old is None or old.get("spec") != body.get("spec")):
            metadata["generation"] = int(metadata.get("generation", 0)) + 1
        metadata["managedFields"] = [
            {"manager": m, "operation": operations.get(m, "Update"),
             "apiVersion": api_version, "fieldsType": "FieldsV1",
             "fieldsV1": {"f:" + ".".join(p): {} for p in sorted(paths)}}
            for m, paths in sorted(owners.items())
        ]  # fmt: skip
        if changed or old is None:
            metadata["resourceVersion"] = str(next(self._versions))
        if dry_run:
            return body
        self.objects[key] = body
        self.owners[key] = owners
        self.operations[key] = operations
        answer = copy.deepcopy(body)  # as written: the controller reacts after the answer
        if kind == "Deployment" and changed:
            self._reconcile_deployment(key)
        return answer

    def _store(self, key: Key, body: dict[str, Any], *, created: bool) -> None:
        metadata = body.setdefault("metadata", {})
        metadata["resourceVersion"] = str(next(self._versions))
        if created:
            metadata["uid"] = f"00000000-0000-4000-8000-{next(self._uids):012d}"
            metadata["creationTimestamp"] = "2026-11-21T00:00:00Z"
        self.objects[key] = body

    def _validate(self, key: Key, body: Mapping[str, Any], plural: str) -> None:
        api_version, kind, _, name = key
        errors: list[tuple[str, str, Any]] = []
        if not _SUBDOMAIN.match(name) or len(name) > 253:
            errors.append(("metadata.name", _SUBDOMAIN_HELP, name))
        if kind == "Deployment":
            spec = body.get("spec") or {}
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if not selector:
                errors.append(("spec.selector", "Required value", None))
            elif any(labels.get(k) != v for k, v in selector.items()):
                errors.append(
                    ("spec.template.metadata.labels", "`selector` does not match template `labels`", labels)
                )
            replicas = spec.get("replicas", 1)
            if not isinstance(replicas, int) or replicas < 0:
                errors.append(("spec.replicas", "must be greater than or equal to 0", replicas))
            for i, container in enumerate(
                ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
            ):
                if not container.get("image"):
                    errors.append((f"spec.template.spec.containers[{i}].image", "Required value", None))
        if not errors:
            return
        shown = "; ".join(
            f"{field}: Invalid value: {json.dumps(value)}: {why}" if value is not None else f"{field}: {why}"
            for field, why, value in errors
        )
        qualified = f"{kind}.{_group(api_version)}" if _group(api_version) else kind
        raise StatusError(
            422,
            "Invalid",
            f'{qualified} "{name}" is invalid: {shown}',
            {
                "name": name,
                "group": _group(api_version),
                "kind": kind,
                "causes": [
                    {"reason": "FieldValueInvalid", "message": why, "field": field}
                    for field, why, _ in errors
                ],
            },
        )

    # -- the Deployment controller ---------------------------------------------------------------

    def _pods_of(self, namespace: str | None, deployment: str) -> list[Key]:
        prefix = f"{deployment}-"
        return [k for k in self.objects if k[1] == "Pod" and k[2] == namespace and k[3].startswith(prefix)]

    def _reconcile_deployment(self, key: Key) -> None:
        body = self.objects[key]
        spec = body.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        stuck = any(c.get("image") in self.stuck_images for c in containers)
        template_hash = hashlib.sha256(json.dumps(spec.get("template"), sort_keys=True).encode()).hexdigest()[
            :10
        ]
        for pod in self._pods_of(key[2], key[3]):
            self._drop(pod)
        for i in range(replicas):
            pod = f"{key[3]}-{template_hash}-{i}"
            self.objects[("v1", "Pod", key[2], pod)] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod,
                    "namespace": key[2],
                    "labels": dict(((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}),
                    "resourceVersion": str(next(self._versions)),
                },
                "spec": copy.deepcopy((spec.get("template") or {}).get("spec") or {}),
                "status": {"phase": "Pending" if stuck else "Running"},
            }
        available = 0 if stuck else replicas
        body["status"] = {
            "observedGeneration": body["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": available,
            "availableReplicas": available,
            **({"unavailableReplicas": replicas} if stuck and replicas else {}),
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if available >= replicas else "False",
                    "reason": "MinimumReplicasAvailable"
                    if available >= replicas
                    else "MinimumReplicasUnavailable",
                }
            ],
        }
        body["metadata"]["resourceVersion"] = str(next(self._versions))


def _user_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a manager can own: everything but status and server-kept metadata."""
    out = {k: copy.deepcopy(v) for k, v in body.items() if k != "status"}
    metadata = out.get("metadata")
    if isinstance(metadata, dict):
        for key in _SERVER_METADATA:
            metadata.pop(key, None)
    return out


def _default(body: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    """A few of the defaults the real server fills in."""
    kind, spec = body.get("kind"), body.get("spec")
    if not isinstance(spec, dict):
        return
    if kind == "Deployment":
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault(
            "strategy",
            {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
        )
        pod = (spec.get("template") or {}).get("spec")
        if isinstance(pod, dict):
            pod.setdefault("restartPolicy", "Always")
            for container in pod.get("containers") or []:
                container.setdefault("imagePullPolicy", "IfNotPresent")
    if kind == "Service":
        spec.setdefault("type", "ClusterIP")
        kept = ((old or {}).get("spec") or {}).get("clusterIP")
        spec.setdefault("clusterIP", kept or f"10.43.0.{len(body['metadata'].get('name', '')) + 10}")
