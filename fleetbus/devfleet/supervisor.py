"""Run a dev fleet in the foreground: servers tier by tier, then daemons; stop in reverse.

Start order is hub, regionals, edges (each tier's servers staggered with jitter so many
edges do not hit one regional at once), then the daemons. Stop order is daemons first (they
drain into a live server), then edges, regionals, hub. SIGINT/SIGTERM trigger the stop;
children also die with this process (see `fleetbus.devfleet.process`).
"""

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleetbus.devfleet import identities
from fleetbus.devfleet.control import ControlServer
from fleetbus.devfleet.hollow import HollowPlan
from fleetbus.devfleet.linkproxy import LinkProxy, LinkSet
from fleetbus.devfleet.netutil import http_get
from fleetbus.devfleet.plan import HOST, FleetPlan, SitePlan
from fleetbus.devfleet.process import SupervisedProcess
from fleetbus.devfleet.servers import NatsServer, check_ports_free
from fleetbus.devfleet.state import STATE_FILE, FleetRecord, SiteRecord
from fleetbus.errors import ConfigError, ServerError
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff
from fleetbus.runtime.retry import retry
from fleetbus.runtime.settings import DaemonSettings
from fleetbus.sdk.client import FleetClient
from schemas.heartbeat import Tier

DASHBOARD_LOGIN = 30 * 24 * 3600  # s the login URL `dev up` prints stays valid
DESK_WAIT = 60.0  # s `dev up` waits for the hub's desk to answer
LINKS_BACK = 15.0  # s a restart waits for the restarted server's leaf links
LINK_POLL = 0.1  # s between two looks at its /leafz
HTTP_OK = 200

if TYPE_CHECKING:
    from pathlib import Path

logger = log.get_logger(__name__)

Progress = Callable[[str], None]


def toml_text(values: dict[str, object]) -> str:
    """Just enough TOML for daemon settings files (strings, numbers, booleans, one table)."""
    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append(
                f"\n[{key}]\n" + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in value.items())
            )
        elif isinstance(value, str | bool):
            lines.append(f"{key} = {json.dumps(value)}")  # JSON strings and booleans are TOML too
        else:
            lines.append(f"{key} = {value}")
    text = "\n".join(lines) + "\n" + "".join(tables)
    tomllib.loads(text)  # what we write must read back
    return text


class DevFleet:
    """The processes of one dev fleet and the order they start and stop in."""

    def __init__(
        self,
        plan: FleetPlan,
        *,
        heartbeat_interval: float = 5.0,
        stagger: float = 0.05,
        progress: Progress = print,
        settings: dict[Tier, dict[str, object]] | None = None,
        hollow: list[HollowPlan] | None = None,
        hollow_settings: dict[str, object] | None = None,
        insecure: bool = False,
        mqtt_anonymous: bool = False,
        client_tls: bool = False,
    ) -> None:
        # Every server admits only its identities (generated now if missing), unless
        # `insecure`: then anyone who reaches a port may do anything (debugging only).
        self.insecure = insecure
        self.dashboard_token: str | None = None  # the local admin's (`login_url`), once started
        # `mqtt_anonymous`: MQTT devices need no credentials (unsafe; `dev up --mqtt-anonymous`).
        # `client_tls`: client ports take only TLS, as where other machines reach them.
        self.plan = (
            plan
            if insecure
            else identities.secure(plan, mqtt_anonymous=mqtt_anonymous, client_tls=client_tls)
        )
        plan = self.plan
        self.hollow_plan = hollow or []  # `fleetbus sim`: hollow-edge processes per regional
        self.hollow_settings = hollow_settings or {}
        self.heartbeat_interval = heartbeat_interval
        self.settings = settings or {}  # extra daemon settings per tier (e.g. presence windows)
        self.stagger = stagger
        self.progress = progress
        # By `SitePlan.key`: the site, or a clustered site's node (`hub-n2`).
        self.servers = {s.key: NatsServer(s.server, s.workdir) for s in plan.sites}
        self.daemons = {s.key: self._daemon(s) for s in plan.sites}
        self.hollow = {
            h.name: self._process(f"hollow edges {h.name}", "edge.hollow", h.workdir, h.health_url)
            for h in self.hollow_plan
        }
        self.ready = False  # every process started once; from then on fleet.json is kept current
        for proc in self._processes():
            proc.on_start = self._started
        # A proxy on the uplink of every site planned with one (`plan_fleet(links=True)`):
        # `r1` for r1's link to a hub of one server; `r1>hub-n2` for its link to node 2.
        self.links = {
            (s.name if len(s.links) == 1 else f"{s.name}>{link.node}"): LinkProxy(
                HOST,
                link.port,
                target=(HOST, link.target),
                name=f"{s.name} uplink" if len(s.links) == 1 else f"{s.name} uplink to {link.node}",
            )
            for s in plan.sites
            for link in s.links
        }
        self._supervisors: list[asyncio.Task[None]] = []
        self.control_path: Path | None = None  # the control socket, while `run_foreground` serves it

    def _daemon(self, site: SitePlan) -> SupervisedProcess:
        name = f"{site.tier.value} daemon {site.key}"
        return self._process(name, site.tier.value, site.workdir, site.daemon_health_url)

    def _process(self, name: str, module: str, workdir: "Path", health_url: str) -> SupervisedProcess:
        """`python -m module` with the settings in `workdir`/daemon.toml."""
        env = {**os.environ, "FLEETBUS_LOG_FORMAT": "json"}
        for field in DaemonSettings.model_fields:  # the TOML file is the whole truth here
            env.pop(f"FLEETBUS_{field.upper()}", None)
        return SupervisedProcess(
            name=name,
            argv=[sys.executable, "-m", module, "--config", str(workdir / "daemon.toml")],
            health_url=health_url,
            log_path=workdir / "daemon.log",
            env=env,
        )

    def _started(self, _proc: SupervisedProcess) -> None:
        """A process (re)started: keep fleet.json's PIDs current once the fleet is up."""
        if self.ready:
            self.record(ready=True).save()

    def preflight(self) -> None:
        """Fail before starting anything if a port is taken."""
        for site in self.plan.sites:
            check_ports_free(site.server)

    async def start(self) -> None:
        self.preflight()
        for tier in (Tier.HUB, Tier.REGIONAL, Tier.EDGE):
            await self._start_tier(tier)
        for site in self.plan.sites:
            values = site.daemon_settings(self.heartbeat_interval) | self.settings.get(site.tier, {})
            (site.workdir / "daemon.toml").write_text(toml_text(values))
        began = time.monotonic()
        await asyncio.gather(
            *(self._start_staggered(i, self.daemons[s.key]) for i, s in enumerate(self.plan.sites))
        )
        self.progress(f"  daemons     {len(self.daemons)} healthy in {time.monotonic() - began:.1f}s")
        self.dashboard_token = await self._dashboard_token()
        if self.hollow_plan:
            await self._start_hollow()
        for proc in self._processes():
            self._supervisors.append(asyncio.create_task(proc.supervise(), name=f"supervise {proc.name}"))

    def _processes(self) -> list[SupervisedProcess]:
        return [*self.servers.values(), *self.daemons.values(), *self.hollow.values()]

    async def _start_hollow(self) -> None:
        """One process per regional; each starts its edges at its own rate after this."""
        began = time.monotonic()
        for plan in self.hollow_plan:
            plan.workdir.mkdir(parents=True, exist_ok=True)
            values = plan.settings(self.heartbeat_interval, **self.hollow_settings)
            if not self.insecure:
                values["nats_creds"] = str(identities.simulator_creds(self.plan.state_dir, plan.region))
                values["nats_ca"] = str(identities.ca_cert(self.plan.state_dir))
                values.setdefault("trusted_keys", [identities.signing_key(self.plan).public_key])
            else:
                values["verify_desired_state"] = False
            (plan.workdir / "daemon.toml").write_text(toml_text(values))
        await asyncio.gather(*(p.start() for p in self.hollow.values()))
        count = sum(h.edges for h in self.hollow_plan)
        self.progress(
            f"  hollow      {len(self.hollow)} process(es) for {count} edges healthy in "
            f"{time.monotonic() - began:.1f}s (edges keep starting in the background)"
        )

    async def _start_tier(self, tier: Tier) -> None:
        sites = self.plan.by_tier(tier)
        for site in sites:
            for link in self.links_of(site.name):
                await link.start()
        began = time.monotonic()
        # A cluster's nodes start together: each is healthy only once they elected a leader.
        await asyncio.gather(*(self._start_staggered(i, self.servers[s.key]) for i, s in enumerate(sites)))
        self.progress(
            f"  {tier.value:<11} {len(sites)} nats-server(s) healthy in {time.monotonic() - began:.1f}s"
        )

    async def _start_staggered(self, index: int, proc: SupervisedProcess) -> None:
        # Rate limit, not synchronisation: spread connects so a regional is not stormed.
        await asyncio.sleep(index * self.stagger * random.uniform(0.5, 1.5))
        await proc.start()

    async def stop(self) -> None:
        """Daemons, then edge, regional and hub servers. Idempotent."""
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._supervisors.clear()
        await asyncio.gather(*(p.stop() for p in [*self.hollow.values(), *self.daemons.values()]))
        for tier in (Tier.EDGE, Tier.REGIONAL, Tier.HUB):
            await asyncio.gather(*(self.servers[s.key].stop() for s in self.plan.by_tier(tier)))
        await asyncio.gather(*(link.stop() for link in self.links.values()))

    # Fault controls: the same calls back `fleetbus dev link|kill|restart` and the tests.

    def links_of(self, site: str, *, node: str | None = None) -> list[LinkProxy]:
        """The proxies on `site`'s uplink (one per upstream node), or, for a clustered site
        and one of its nodes, every link that reaches that node."""
        if node is not None:
            return [p for key, p in self.links.items() if key.endswith(f">{node}")]
        return [p for key, p in self.links.items() if key.split(">")[0] == site]

    def link(self, site: str) -> LinkProxy | LinkSet:
        """The proxy on `site`'s uplink (the link to the tier above); to a clustered hub,
        the set of its links to every node, acting as one."""
        found = self.links_of(site)
        if not found:
            self._site(site)  # an unknown site is named as such
            known = (
                ", ".join(sorted({k.split(">")[0] for k in self.links}))
                or "none (started without link proxies)"
            )
            msg = f"site {site!r} has no uplink proxy (the hub has no uplink); sites with one: {known}"
            raise ConfigError(msg)
        return found[0] if len(found) == 1 and site in self.links else LinkSet(found)

    def node_links(self, node: str) -> LinkSet:
        """Every link that reaches the clustered site's node `node` (`hub-n2`)."""
        self._node(node)
        return LinkSet(self.links_of("", node=node))

    def processes(
        self, site: str, *, server: bool = True, daemon: bool = True, node: int | None = None
    ) -> list[SupervisedProcess]:
        """`site`'s nats-server and/or daemon (both when neither is chosen); of a clustered
        site, its node `node` (1-based), or of every node."""
        keys = self._keys(site, node)
        if not server and not daemon:
            server = daemon = True
        chosen = [(self.daemons[k], daemon) for k in keys] + [(self.servers[k], server) for k in keys]
        return [p for p, wanted in chosen if wanted]

    def node_key(self, site: str, node: int) -> str:
        """The name of the clustered `site`'s node `node` (1-based): `hub-n2`."""
        nodes = self._site_nodes(site)
        if nodes[0].server.cluster is None:
            msg = f"site {site!r} is not clustered: --node is for a hub started with --hub-nodes"
            raise ConfigError(msg)
        return self._keys(site, node)[0]

    def _keys(self, site: str, node: int | None) -> list[str]:
        if node is None and any(s.key == site != s.name for s in self.plan.sites):
            return [site]  # a clustered site's node, by its name (`hub-n2`)
        nodes = self._site_nodes(site)
        if node is None:
            return [s.key for s in nodes]
        if len(nodes) == 1 and node == 1:
            return [nodes[0].key]
        if not 1 <= node <= len(nodes) or nodes[0].server.cluster is None:
            msg = f"site {site!r} has {len(nodes)} node(s): --node takes 1..{len(nodes)}"
            raise ConfigError(msg)
        return [nodes[node - 1].key]

    async def kill(
        self, site: str, *, server: bool = True, daemon: bool = True, node: int | None = None
    ) -> list[str]:
        """SIGKILL `site`'s processes, as a crash would; they stay down until `restart`."""
        procs = self.processes(site, server=server, daemon=daemon, node=node)
        for proc in procs:
            await proc.kill(restart=False)
        return [p.name for p in procs]

    async def restart(
        self, site: str, *, server: bool = True, daemon: bool = True, node: int | None = None
    ) -> list[str]:
        """Stop (SIGTERM) what runs and start `site`'s processes again: servers first, then
        their links (a command that follows reaches through them), then the daemons."""
        procs = self.processes(site, server=server, daemon=daemon, node=node)
        for proc in procs:
            await proc.stop()
        servers = {id(self.servers[k]): k for k in self._keys(site, node)}
        restarted = [p for p in procs if id(p) in servers]
        await asyncio.gather(*(p.start() for p in restarted))  # a cluster's nodes need each other
        for proc in restarted:
            await self._links_back(servers[id(proc)])
        for proc in procs:
            if id(proc) not in servers:
                await proc.start()
        return [p.name for p in procs]

    async def _links_back(self, key: str, timeout: float = LINKS_BACK) -> None:
        """Until the restarted server `key` holds a leaf link to each neighbour that can
        reach it (its server running, the link's proxy passing traffic), as its `/leafz`
        counts them; after `timeout`, go on (they reconnect by themselves) and say so.
        A regional links to one node of a clustered hub: a hub node counts none."""
        plan = self._site(key)
        site = plan.name
        expected = 0
        if plan.server.cluster is None:
            for lower in (s for s in self.plan.sites if s.upstream == site):
                expected += int(self._uplink_passes(lower.name) and self.servers[lower.key].running)
        if plan.upstream:
            up = any(self.servers[s.key].running for s in self.plan.nodes(plan.upstream))
            expected += int(self._uplink_passes(site) and up)
        url = f"http://{HOST}:{plan.server.http_port}/leafz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                status, body = await http_get(url, 2.0)
                if status == HTTP_OK and json.loads(body).get("leafnodes", 0) >= expected:
                    return
            await asyncio.sleep(LINK_POLL)  # the poll interval
        self.progress(f"  {key}: not every leaf link is back {timeout:g}s after the restart")

    def _uplink_passes(self, site: str) -> bool:
        """Whether `site`'s uplink lets traffic through: no proxy, or one not cut or blackholed."""
        proxies = self.links_of(site)
        return not proxies or any(not (p.is_cut or p.is_blackholed) for p in proxies)

    def crashes(self) -> dict[str, int]:
        """Exits nobody asked for, per process (a kill or a stop is asked for)."""
        return {p.name: p.crashes for p in self._processes() if p.crashes}

    async def _dashboard_token(self) -> str | None:
        """A 30-day admin token for the hub's dashboard (the login URL `dev up` prints),
        asked of the hub's desk as the fleet's admin."""
        hub = self.plan.by_tier(Tier.HUB)[0]
        if self.insecure or hub.dashboard_port is None:
            return None
        creds = identities.operator_creds(self.plan.state_dir)
        ca = identities.ca_cert(self.plan.state_dir)
        async with await FleetClient.connect(self.plan.hub_url, creds=creds, ca=ca) as admin:
            # A clustered hub's desk answers once one of its daemons took the hub's lease.
            reply = await retry(
                lambda: admin.desk.call(
                    "token.create",
                    reason="dev up: the local admin's login",
                    role="admin",
                    expires_seconds=DASHBOARD_LOGIN,
                ),
                what="the hub's desk",
                backoff=Backoff(0.2, cap=2.0),
                deadline=time.monotonic() + DESK_WAIT,
            )
        return str(reply.result["token"])

    def _site(self, name: str) -> SitePlan:
        try:
            return self.plan.site(name)
        except KeyError:
            known = ", ".join(dict.fromkeys(s.name for s in self.plan.sites))
            msg = f"no site {name!r} in this dev fleet; sites: {known}"
            raise ConfigError(msg) from None

    def _site_nodes(self, name: str) -> list[SitePlan]:
        self._site(name)
        return self.plan.nodes(self.plan.site(name).name)

    def _node(self, key: str) -> SitePlan:
        for site in self.plan.sites:
            if site.key == key and site.server.cluster is not None:
                return site
        nodes = ", ".join(s.key for s in self.plan.sites if s.server.cluster is not None) or "none"
        msg = f"no clustered node {key!r} in this dev fleet; nodes: {nodes}"
        raise ConfigError(msg)

    def record(self, *, ready: bool) -> FleetRecord:
        sites = [
            SiteRecord(
                name=s.name,
                tier=s.tier.value,
                region=s.region,
                client_url=s.server.client_url,
                server_health_url=s.server.health_url,
                daemon_health_url=s.daemon_health_url,
                leaf_url=s.server.leaf_url,
                mqtt_port=s.server.mqtt_port,
                server_pid=self.servers[s.key].pid,
                daemon_pid=self.daemons[s.key].pid,
                dashboard_url=s.dashboard_url,
                creds=None if self.insecure else str(s.creds_path),
                ca=str(s.server.auth.tls.ca) if s.server.auth and s.server.auth.tls else None,
                client_tls=bool(s.server.auth and s.server.auth.client_tls),
                node=s.server.node,
            )
            for s in self.plan.sites
        ]
        return FleetRecord(
            supervisor_pid=os.getpid(),
            state_dir=str(self.plan.state_dir),
            sites=sites,
            ready=ready,
            control_path=str(self.control_path) if self.control_path else None,
            insecure=self.insecure,
            dashboard_login=self.login_url,
        )

    @property
    def login_url(self) -> str | None:
        """The hub's dashboard with the admin's token (it sets a cookie and drops it from the URL)."""
        url = self.plan.by_tier(Tier.HUB)[0].dashboard_url
        return f"{url}?token={self.dashboard_token}" if url and self.dashboard_token else None


async def run_foreground(fleet: DevFleet, on_ready: Callable[[FleetRecord], None]) -> None:
    """Start `fleet`, record it, call `on_ready`, then wait for SIGINT/SIGTERM and stop it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    record_path = fleet.plan.state_dir / STATE_FILE
    control = ControlServer(fleet)
    try:
        await control.start()
        # Recorded before starting, so `dev down` and a second `up` see a fleet that is
        # still starting; recorded again with the PIDs once everything is healthy, and on
        # every restart after that (`DevFleet._started`).
        fleet.record(ready=False).save()
        starting = asyncio.create_task(fleet.start())
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # Ctrl-C during start
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return
        waiter.cancel()
        starting.result()  # re-raise a start failure
        fleet.ready = True
        record = fleet.record(ready=True)
        record.save()
        on_ready(record)
        await stop.wait()
        fleet.progress("stopping dev fleet ...")
    except ServerError:
        fleet.progress("start failed; stopping what was started ...")
        raise
    finally:
        await control.stop()
        await fleet.stop()
        record_path.unlink(missing_ok=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        fleet.progress("dev fleet stopped")
