"""The identities of a dev fleet: one nkey per site, generated in that site's own directory,
an admin and a viewer operator, and one simulator per region for `fleetbus sim`.

`secure(plan)` generates what is missing (`fleetbus.runtime.identity`) and returns the plan
with every server's `authorization` filled in from `fleetbus.core.permissions`: each server
learns only public keys; a seed is read only by its own site's server (its leaf link) and
daemon.
"""

from dataclasses import dataclass, replace
from pathlib import Path

from fleetbus.core import permissions
from fleetbus.devfleet.natsconf import Authorization, LinkTls
from fleetbus.devfleet.plan import FleetPlan, SitePlan
from fleetbus.runtime import identity, pki
from fleetbus.runtime.admission import User
from fleetbus.runtime.identity import Identity
from schemas.heartbeat import Tier

OPERATORS_DIR = "operators"
PKI_DIR = "pki"
ADMIN = "admin"
VIEWER = "viewer"
SITE_KEY = "site"
# What an MQTT client that presents no credentials is taken for (docs/security.md#devices).
DEVICES_USER = "devices"
JOIN_USER = "join"
# A clustered site's route login (its nodes present and accept it; kept beside its identity).
ROUTES_USER = "route"
ROUTES_SECRET_FILE = "routes.password"  # noqa: S105 - a file name
DEVICES = permissions.gateway()


def simulator_workdir(state_dir: Path, region: str) -> Path:
    """Where `fleetbus sim` keeps the hollow edges of `region` (and their identity)."""
    return state_dir / "hollow" / region


def simulator_name(region: str) -> str:
    return f"{region}-hollow"


@dataclass(frozen=True)
class FleetIdentities:
    sites: dict[str, Identity]
    admin: Identity
    viewer: Identity
    simulators: dict[str, Identity]  # by region
    tls: dict[str, pki.CertFiles]  # by site
    systems: dict[str, Identity]  # regional and edge daemons' system-account identities, by site
    signing: Identity  # the hub's desired-state signing key


def _ensure(path: Path) -> Path:
    identity.ensure(path.parent, path.name.removesuffix(identity.SEED_SUFFIX))
    return path


def ca_cert(state_dir: Path) -> Path:
    """The fleet CA's certificate (`fleetbus pki init`), created on first use."""
    return pki.ensure_ca(state_dir / PKI_DIR)


def simulator_creds(state_dir: Path, region: str) -> Path:
    return simulator_workdir(state_dir, region) / "identity" / f"{SITE_KEY}{identity.SEED_SUFFIX}"


def _hosts(plan: FleetPlan, site: SitePlan) -> tuple[str, ...]:
    """What the tier below (and a cluster's other nodes) may dial to reach `site` (directly or
    through a proxy here): every node's host, for a site whose nodes share one certificate."""
    return tuple(dict.fromkeys([*(n.server.host for n in plan.nodes(site.name)), "localhost", site.name]))


def ensure_identities(plan: FleetPlan) -> FleetIdentities:
    """Every identity `plan` needs, generated where it is used if not there yet."""
    operators = plan.state_dir / OPERATORS_DIR
    ca = ca_cert(plan.state_dir)
    return FleetIdentities(
        sites={s.name: identity.load(_ensure(s.creds_path), name=s.name) for s in plan.sites},
        admin=identity.ensure(operators, ADMIN),
        viewer=identity.ensure(operators, VIEWER),
        simulators={
            s.region: identity.load(_ensure(simulator_creds(plan.state_dir, s.region)))
            for s in plan.by_tier(Tier.REGIONAL)
        },
        tls={
            s.name: pki.ensure_site_cert(ca, s.creds_path.parent, s.name, _hosts(plan, s)) for s in plan.sites
        },
        systems={s.name: identity.load(_ensure(s.system_creds_path)) for s in plan.sites if _has_system(s)},
        signing=identity.load(_ensure(plan.by_tier(Tier.HUB)[0].signing_key_path)),
    )


def _has_system(site: SitePlan) -> bool:
    """The hub (its operators), regionals (their edges) and edges with an MQTT listener (their
    devices) keep users in admission files, which their daemons reload through the system
    account."""
    return site.tier in (Tier.HUB, Tier.REGIONAL) or site.server.mqtt_port is not None


def _users(plan: FleetPlan, site: SitePlan, ids: FleetIdentities, *, mqtt_anonymous: bool) -> list[User]:
    own = User(who=f"{site.name} itself (its daemon)", nkey=ids.sites[site.name].public_key)
    below = [s for s in plan.sites if s.upstream == site.name]
    if site.tier is Tier.HUB:
        return [
            own,
            User(who="operator admin", nkey=ids.admin.public_key, permissions=permissions.admin()),
            User(who="viewer (read-only)", nkey=ids.viewer.public_key, permissions=permissions.viewer()),
            *(
                User(
                    who=f"regional {s.name}",
                    nkey=ids.sites[s.name].public_key,
                    permissions=permissions.regional_link(s.region),
                )
                for s in below
            ),
        ]
    if site.tier is Tier.REGIONAL:
        # Its edges are admitted through its admission files (`authorize`).
        return [
            own,
            User(
                who="new edges redeeming an enrollment token (no password; docs/security.md#enrollment)",
                name=JOIN_USER,
                permissions=permissions.joiner(site.region),
                connection_types=("STANDARD",),
            ),
            User(
                who=f"hollow-edge simulator {simulator_name(site.region)}",
                nkey=ids.simulators[site.region].public_key,
                permissions=permissions.simulator(site.region, simulator_name(site.region)),
            ),
        ]
    users = [own]
    if site.server.mqtt_port is not None and mqtt_anonymous:
        # Only on the MQTT listener: on the client port this name and an empty password
        # would otherwise be an anonymous login (tests/test_security.py).
        users.append(
            User(
                who="MQTT devices without credentials",
                name=DEVICES_USER,
                permissions=DEVICES,
                connection_types=("MQTT",),
            )
        )
    return users


def authorize(
    plan: FleetPlan, ids: FleetIdentities, *, mqtt_anonymous: bool = False, client_tls: bool = False
) -> FleetPlan:
    """`plan` with each server admitting exactly its identities; MQTT devices need their
    own credentials (`fleetbus device add`) unless `mqtt_anonymous` (unsafe: any device may
    then speak for any other). Leaf links are TLS; with `client_tls`, client ports too."""
    sites = []
    for site in plan.sites:
        tls = ids.tls[site.name]
        regional = site.tier is Tier.REGIONAL
        auth = Authorization(
            users=tuple(_users(plan, site, ids, mqtt_anonymous=mqtt_anonymous)),
            leaf_seed=ids.sites[site.name].seed() if site.upstream else None,
            mqtt_anonymous=DEVICES_USER if site.server.mqtt_port is not None and mqtt_anonymous else None,
            tls=LinkTls(cert=tls.cert, key=tls.key, ca=tls.ca),
            client_tls=client_tls,
            admission=(
                {s.name: ids.sites[s.name].public_key for s in plan.sites if s.upstream == site.name}
                if regional
                else None
            ),
            devices=site.server.mqtt_port is not None,
            system_nkey=ids.systems[site.name].public_key if _has_system(site) else None,
            enroll_issuers=(ids.admin.public_key,) if regional else (),
            operators=site.tier is Tier.HUB,
            admins={ADMIN: ids.admin.public_key} if site.tier is Tier.HUB else {},
            viewers={VIEWER: ids.viewer.public_key} if site.tier is Tier.HUB else {},
            trusted_keys=(ids.signing.public_key,) if site.tier is Tier.EDGE else (),
        )
        update: dict[str, object] = {"auth": auth}
        if site.server.cluster is not None:
            password = identity.ensure_secret(site.creds_path.parent / ROUTES_SECRET_FILE)
            update["cluster"] = site.server.cluster.model_copy(
                update={"user": ROUTES_USER, "password": password}
            )
        sites.append(replace(site, server=site.server.model_copy(update=update)))
    return replace(plan, sites=tuple(sites))


def secure(plan: FleetPlan, *, mqtt_anonymous: bool = False, client_tls: bool = False) -> FleetPlan:
    return authorize(plan, ensure_identities(plan), mqtt_anonymous=mqtt_anonymous, client_tls=client_tls)


def signing_key(plan: FleetPlan) -> Identity:
    """The hub's desired-state signing key (created with the fleet's identities)."""
    return identity.load(plan.by_tier(Tier.HUB)[0].signing_key_path)


def operator_creds(state_dir: Path, name: str = ADMIN) -> Path:
    return state_dir / OPERATORS_DIR / f"{name}{identity.SEED_SUFFIX}"
