"""Kubernetes objects from an edge's desired state: pure rendering, labels and comparison.

The kubernetes driver (`edge.drivers.kubernetes`) applies what this module renders; nothing
here talks to an API server, so it is tested on its own and knows nothing of the client.

Per component of the desired document:

- short form (`image`, `version`, optional `replicas`, `env`, `ports`, `resources`): a
  Deployment `<component>` (+ a Service `<component>` when it has ports);
- `manifests`: those objects, as given;
- either form: a ConfigMap `<component>-config` holding the site's `config` overlaid with the
  component's own (strings as given, other values as JSON), mounted read-only at
  `/etc/fleetbus/config` in a short-form Deployment; a change rolls its pods;
- config values that reference a secret (`{secretRef, version}`, docs/security.md#sealed-
  secrets): also a Secret `<component>-secrets` holding, under the same key, the value the
  edge opened, mounted read-only at `/etc/fleetbus/secrets` in a short-form Deployment (the
  ConfigMap keeps the reference and its version, so a rotation rolls the pods too).

Objects without a namespace go to the component's (`namespace` of the component or its
profile), else `fleetbus-<profile>` of the profile that introduced the component, else
`fleetbus`; fleetbus creates the namespaces it chose. Every object is labelled as fleetbus's
(managed-by, site, profile, component, and a hash of its own content).
"""

import base64
import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fleetbus.core.desired import DesiredState
from fleetbus.core.secrets import REF as SECRET_REF
from fleetbus.core.secrets import located
from schemas.event import ObjectOutcome, ObjectResult
from schemas.profile import DriftPolicy

MANAGED_BY = "app.kubernetes.io/managed-by"
FLEETBUS = "fleetbus"
APP_NAME = "app.kubernetes.io/name"
SITE_LABEL = "fleetbus.io/site"
PROFILE_LABEL = "fleetbus.io/profile"
COMPONENT_LABEL = "fleetbus.io/component"
HASH_LABEL = "fleetbus.io/content-hash"
CONFIG_HASH_ANNOTATION = "fleetbus.io/config-hash"
DEFAULT_NAMESPACE = "fleetbus"
CONFIG_MOUNT = "/etc/fleetbus/config"
SECRETS_MOUNT = "/etc/fleetbus/secrets"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# Apply order: what others refer to first (as kubectl and Helm do).
_KIND_ORDER = [
    "Namespace",
    "CustomResourceDefinition",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "PersistentVolumeClaim",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
]


@dataclass(frozen=True, order=True)
class Ref:
    """Which object: what the API server addresses it by."""

    api_version: str
    kind: str
    namespace: str | None
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"

    def result(
        self, outcome: ObjectOutcome, component: str | None, message: str | None = None
    ) -> ObjectResult:
        return ObjectResult(
            api_version=self.api_version,
            kind=self.kind,
            namespace=self.namespace,
            name=self.name,
            component=component,
            outcome=outcome,
            message=message,
        )

    @classmethod
    def of_result(cls, result: ObjectResult) -> "Ref":
        return cls(result.api_version, result.kind, result.namespace, result.name)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> "Ref":
        metadata = body.get("metadata") or {}
        return cls(
            str(body["apiVersion"]), str(body["kind"]), metadata.get("namespace"), str(metadata["name"])
        )


@dataclass
class Rendered:
    """One object to apply, with the component it belongs to."""

    ref: Ref
    body: dict[str, Any]
    component: str | None
    drift_policy: DriftPolicy = DriftPolicy.REPORT


@dataclass
class Rendering:
    objects: list[Rendered] = field(default_factory=list)
    # Components that could not be rendered, with why: their live objects are left alone.
    failed: dict[str, str] = field(default_factory=dict)

    def ordered(self) -> list[Rendered]:
        return sorted(self.objects, key=lambda o: (_kind_rank(o.ref.kind), o.ref))


class RenderError(ValueError):
    pass


def _kind_rank(kind: str) -> int:
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def label_value(text: str) -> str:
    """`text` as a valid label value (63 characters of [-A-Za-z0-9_.], alphanumeric ends)."""
    value = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[:63].strip("-_.")
    return value if _LABEL_VALUE.match(value) else ""


def profile_namespace(profile: str) -> str:
    """`fleetbus-<profile>` as an RFC 1123 label; a hash keeps long or folded names distinct."""
    name = "fleetbus-" + re.sub(r"[^a-z0-9]+", "-", profile.lower()).strip("-")
    if len(name) <= 63 and name == f"fleetbus-{profile}":
        return name
    digest = hashlib.sha256(profile.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def content_label(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def owner_selector(site: str) -> str:
    """The label selector of every object this site's driver owns."""
    return f"{MANAGED_BY}={FLEETBUS},{SITE_LABEL}={label_value(site)}"


def render(
    desired: DesiredState, *, site: str, cluster_scoped: Callable[[str, str], bool] = lambda _v, _k: False
) -> Rendering:
    """Every object `desired` calls for. `cluster_scoped(api_version, kind)` says which kinds
    take no namespace (the driver asks the API server's discovery)."""
    out = Rendering()
    components = desired.document.get("components")
    site_config = desired.document.get("config")
    site_config = site_config if isinstance(site_config, Mapping) else {}
    namespaces: dict[str, str | None] = {}
    for name, spec in sorted(components.items()) if isinstance(components, Mapping) else []:
        profile = desired.origins.get(name)
        if not isinstance(spec, Mapping):
            out.failed[name] = f"component {name}: not an object"
            continue
        try:
            namespace = _component_namespace(spec, profile)
            bodies = _component_objects(name, spec, namespace, site_config, cluster_scoped, desired.secrets)
            _refuse_unplaced_secrets(spec, site_config)
        except RenderError as exc:
            out.failed[name] = f"component {name}: {exc}"
            continue
        if not isinstance(spec.get("namespace"), str):
            namespaces.setdefault(namespace, profile)
        try:
            policy = DriftPolicy(spec.get("drift_policy", DriftPolicy.REPORT.value))
        except ValueError:
            policy = DriftPolicy.REPORT
        for body in bodies:
            out.objects.append(_owned(body, site=site, profile=profile, component=name, policy=policy))
    for namespace, profile in sorted(namespaces.items()):
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        out.objects.append(
            _owned(body, site=site, profile=profile, component=None, policy=DriftPolicy.REPORT)
        )
    _refuse_duplicates(out)
    return out


def _component_namespace(spec: Mapping[str, Any], profile: str | None) -> str:
    namespace = spec.get("namespace")
    if namespace is None:
        return profile_namespace(profile) if profile else DEFAULT_NAMESPACE
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        msg = f"namespace {namespace!r} is not a valid Kubernetes namespace name"
        raise RenderError(msg)
    return namespace


def _component_objects(
    name: str,
    spec: Mapping[str, Any],
    namespace: str,
    site_config: Mapping[str, Any],
    cluster_scoped: Callable[[str, str], bool],
    secrets: Mapping[str, bytes] = MappingProxyType({}),
) -> list[dict[str, Any]]:
    if not _DNS_LABEL.match(name) or len(name) > 56:
        msg = "a Kubernetes component name must be a lowercase RFC 1123 label of at most 56 characters"
        raise RenderError(msg)
    config = _config_data(site_config, spec.get("config"))
    secret_data = _secret_data(site_config, spec.get("config"), secrets)
    objects: list[dict[str, Any]] = []
    if secret_data:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{name}-secrets", "namespace": namespace},
                "type": "Opaque",
                "data": secret_data,
            }
        )
    if config:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"{name}-config", "namespace": namespace},
                "data": config,
            }
        )
    manifests = spec.get("manifests")
    if manifests:
        if spec.get("image") or spec.get("version"):
            msg = "has both manifests and image/version (set by different layers); keep one form"
            raise RenderError(msg)
        if not isinstance(manifests, list):
            msg = "manifests must be a list of objects"
            raise RenderError(msg)
        objects.extend(_raw(manifest, i, namespace, cluster_scoped) for i, manifest in enumerate(manifests))
        return objects
    image, version = spec.get("image"), spec.get("version")
    if not isinstance(image, str) or not isinstance(version, str):
        msg = "needs image and version, or manifests"
        raise RenderError(msg)
    ports = _ports(spec.get("ports") or [])
    objects.append(_deployment(name, namespace, spec, image, version, ports, config, bool(secret_data)))
    if ports:
        objects.append(_service(name, namespace, ports))
    return objects


def _config_data(site_config: Mapping[str, Any], own: Any) -> dict[str, str]:
    merged = dict(site_config) | (dict(own) if isinstance(own, Mapping) else {})
    data = {}
    for key, value in sorted(merged.items()):
        if not _CONFIG_KEY.match(key):
            msg = f"config key {key!r} cannot be a ConfigMap key (letters, digits, '-', '_', '.')"
            raise RenderError(msg)
        data[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return data


def _secret_data(site_config: Mapping[str, Any], own: Any, secrets: Mapping[str, bytes]) -> dict[str, str]:
    """Config keys whose value references a secret -> that secret's value (base64), from the
    plaintext the edge opened; RenderError if one was not."""
    merged = dict(site_config) | (dict(own) if isinstance(own, Mapping) else {})
    data = {}
    for key, value in sorted(merged.items()):
        if isinstance(value, Mapping) and isinstance(name := value.get(SECRET_REF), str):
            if name not in secrets:
                msg = f"config key {key!r} references secret {name!r}, which this edge has not opened"
                raise RenderError(msg)
            data[key] = base64.b64encode(secrets[name]).decode()
    return data


def _refuse_unplaced_secrets(spec: Mapping[str, Any], site_config: Mapping[str, Any]) -> None:
    """RenderError for a secret referenced anywhere but as a whole config value: this driver
    puts values only into the component's Secret, by config key."""
    merged = dict(site_config) | (dict(spec["config"]) if isinstance(spec.get("config"), Mapping) else {})
    everywhere = {k: v for k, v in spec.items() if k != "config"} | {"config": merged}
    for path, ref in located(everywhere):
        if len(path) != 2 or path[0] != "config":
            msg = (
                f"secret {ref!r} is referenced at {'.'.join(path)}; the kubernetes driver takes a "
                "secret only as a whole config value (config: {KEY: {secretRef: NAME}})"
            )
            raise RenderError(msg)


def _raw(
    manifest: Any, index: int, namespace: str, cluster_scoped: Callable[[str, str], bool]
) -> dict[str, Any]:
    if not isinstance(manifest, Mapping):
        msg = f"manifests[{index}] is not an object"
        raise RenderError(msg)
    body = copy.deepcopy(dict(manifest))
    metadata = body.get("metadata")
    if not isinstance(body.get("apiVersion"), str) or not isinstance(body.get("kind"), str):
        msg = f"manifests[{index}] needs apiVersion and kind"
        raise RenderError(msg)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        msg = f"manifests[{index}] needs metadata.name"
        raise RenderError(msg)
    if cluster_scoped(body["apiVersion"], body["kind"]):
        metadata.pop("namespace", None)
    else:
        metadata.setdefault("namespace", namespace)
    return body


def _ports(ports: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for port in ports:
        entry = {"port": port} if isinstance(port, int) else port
        if not isinstance(entry, Mapping) or not isinstance(entry.get("port"), int):
            msg = f"port {port!r} is neither a number nor an object with a port"
            raise RenderError(msg)
        out.append(
            {
                "name": entry.get("name") or f"p{entry['port']}",
                "port": entry["port"],
                "protocol": entry.get("protocol") or "TCP",
                "target_port": entry.get("target_port") or entry["port"],
            }
        )
    return out


def _image(image: str, version: str) -> str:
    return f"{image}@{version}" if version.startswith("sha256:") else f"{image}:{version}"


def _deployment(
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    image: str,
    version: str,
    ports: list[dict[str, Any]],
    config: Mapping[str, str],
    has_secrets: bool = False,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": _image(image, version)}
    env = spec.get("env")
    if isinstance(env, Mapping) and env:
        container["env"] = [{"name": k, "value": str(v)} for k, v in sorted(env.items())]
    if ports:
        container["ports"] = [
            {"name": p["name"], "containerPort": p["target_port"], "protocol": p["protocol"]} for p in ports
        ]
    resources = spec.get("resources")
    if isinstance(resources, Mapping):
        container["resources"] = {
            part: {k: str(v) for k, v in values.items()}
            for part, values in resources.items()
            if isinstance(values, Mapping) and values
        }
    template: dict[str, Any] = {"metadata": {"labels": {APP_NAME: name}}, "spec": {"containers": [container]}}
    if config:
        template["metadata"]["annotations"] = {CONFIG_HASH_ANNOTATION: content_label(config)}
        container["volumeMounts"] = [{"name": "fleetbus-config", "mountPath": CONFIG_MOUNT, "readOnly": True}]
        template["spec"]["volumes"] = [{"name": "fleetbus-config", "configMap": {"name": f"{name}-config"}}]
    if has_secrets:
        container.setdefault("volumeMounts", []).append(
            {"name": "fleetbus-secrets", "mountPath": SECRETS_MOUNT, "readOnly": True}
        )
        template["spec"].setdefault("volumes", []).append(
            {"name": "fleetbus-secrets", "secret": {"secretName": f"{name}-secrets", "defaultMode": 0o400}}
        )
    replicas = spec.get("replicas")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas if isinstance(replicas, int) else 1,
            "selector": {"matchLabels": {APP_NAME: name}},
            "template": template,
        },
    }


def _service(name: str, namespace: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {APP_NAME: name},
            "ports": [
                {
                    "name": p["name"],
                    "port": p["port"],
                    "targetPort": p["target_port"],
                    "protocol": p["protocol"],
                }
                for p in ports
            ],
        },
    }


def _owned(
    body: dict[str, Any], *, site: str, profile: str | None, component: str | None, policy: DriftPolicy
) -> Rendered:
    labels = body["metadata"].setdefault("labels", {})
    if not isinstance(labels, dict):
        labels = body["metadata"]["labels"] = {}
    labels[HASH_LABEL] = content_label(body)
    labels |= {MANAGED_BY: FLEETBUS, SITE_LABEL: label_value(site)}
    if profile:
        labels[PROFILE_LABEL] = label_value(profile)
    if component:
        labels[COMPONENT_LABEL] = label_value(component)
    return Rendered(Ref.of(body), body, component, policy)


def _refuse_duplicates(out: Rendering) -> None:
    """Two components rendering the same object would fight over it: fail both."""
    owners: dict[Ref, set[str | None]] = {}
    for obj in out.objects:
        owners.setdefault(obj.ref, set()).add(obj.component)
    clashes = {ref: names for ref, names in owners.items() if len(names) > 1}
    for ref, names in clashes.items():
        named = sorted(n for n in names if n)
        for name in named:
            others = ", ".join(n for n in named if n != name)
            out.failed[name] = f"component {name}: {ref} is also rendered by {others}"
    bad = {n for names in clashes.values() for n in names}
    out.objects = [o for o in out.objects if o.component not in bad]


IGNORED_METADATA = ("resourceVersion", "generation", "managedFields", "creationTimestamp", "uid", "selfLink")


def comparable(body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` without what the server maintains (status, bookkeeping metadata)."""
    out = {k: v for k, v in body.items() if k != "status"}
    metadata = out.get("metadata")
    if isinstance(metadata, Mapping):
        out["metadata"] = {k: v for k, v in metadata.items() if k not in IGNORED_METADATA}
    return out


def differences(want: Any, have: Any, path: str = "") -> list[str]:
    """Paths (`spec.replicas`, `spec.template.spec.containers[0].image`) where two documents differ."""
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        out: list[str] = []
        for key in sorted(set(want) | set(have)):
            child = f"{path}.{key}" if path else str(key)
            if key not in want or key not in have:
                out.append(child)
            else:
                out.extend(differences(want[key], have[key], child))
        return out
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        return [
            d
            for i, (w, h) in enumerate(zip(want, have, strict=True))
            for d in differences(w, h, f"{path}[{i}]")
        ]
    return [] if want == have else [path or "<root>"]
