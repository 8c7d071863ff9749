"""`fleetbus dev`: a whole fleet on this machine, and fault injection on its links."""

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fleetbus.cli.kit import Fresh, StateDir, check_range, err, out, start_fresh
from fleetbus.devfleet import identities
from fleetbus.devfleet import plan as fleet_plan
from fleetbus.devfleet import state as fleet_state
from fleetbus.devfleet import status as fleet_status
from fleetbus.devfleet.netutil import free_ports
from fleetbus.devfleet.servers import find_binary
from fleetbus.devfleet.supervisor import DevFleet, run_foreground
from fleetbus.errors import ConfigError

dev_app = typer.Typer(
    help="A whole fleet on this machine: real nats-servers and daemons.", no_args_is_help=True
)
link_app = typer.Typer(
    help=(
        "Fault injection on a running dev fleet's leaf links. SITE names a link by the site "
        "below it: r1-e1 is r1-e1's link to its regional, r1 is r1's link to the hub."
    ),
    no_args_is_help=True,
)
dev_app.add_typer(link_app, name="link")


@dev_app.command("up")
def dev_up(
    regions: Annotated[int, typer.Option(help="Number of regionals.")] = 2,
    edges: Annotated[int, typer.Option(help="Edges per region.")] = 3,
    state_dir: StateDir = None,
    base_port: Annotated[
        int | None, typer.Option(help="Use consecutive ports from here instead of free ones.")
    ] = None,
    heartbeat_interval: Annotated[float, typer.Option(help="Heartbeat period, seconds.")] = 5.0,
    mqtt: Annotated[bool, typer.Option(help="Give every edge an MQTT listener for its devices.")] = True,
    fresh: Fresh = False,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="DEBUGGING ONLY: no identities, no permissions; anyone who reaches a port "
            "may read and change everything.",
        ),
    ] = False,
    mqtt_anonymous: Annotated[
        bool,
        typer.Option(
            "--mqtt-anonymous",
            help="UNSAFE: admit MQTT devices without credentials; any of them may then publish "
            "as any other device (never a fleet subject). Default: `fleetbus device add`.",
        ),
    ] = False,
    client_tls: Annotated[
        bool,
        typer.Option(
            "--client-tls",
            help="Client ports take only TLS too, as where other machines reach them (leaf "
            "links and MQTT always do); clients verify with the fleet CA (`dev creds`).",
        ),
    ] = False,
    hub_nodes: Annotated[
        int,
        typer.Option(
            "--hub-nodes",
            help="Run the hub as a JetStream cluster of this many nodes (3 survives losing one), "
            "a daemon beside each; buckets and streams are replicated on every node.",
        ),
    ] = 1,
) -> None:
    """Start hub, regionals and edges (servers + daemons) in the foreground; Ctrl-C stops all."""
    check_range("--regions", regions, 1, 50)
    check_range("--hub-nodes", hub_nodes, 1, 5)
    check_range("--edges", edges, 0, 500)
    if heartbeat_interval <= 0:
        raise ConfigError(f"--heartbeat-interval must be > 0, got {heartbeat_interval}")
    find_binary()  # fail now, with the install hint, not after half a fleet started
    directory = fleet_state.ensure_writable(state_dir or fleet_state.default_state_dir())
    fleet_state.refuse_if_running(directory)
    if fresh:
        start_fresh(directory)
    count = fleet_plan.ports_needed(regions, edges, mqtt=mqtt, links=True, hub_nodes=hub_nodes)
    if base_port is not None:
        check_range("--base-port", base_port, 1024, 65535 - count)
        ports = iter(range(base_port, base_port + count))
    else:
        ports = iter(free_ports(count))
    plan = fleet_plan.plan_fleet(directory, regions, edges, ports, mqtt=mqtt, links=True, hub_nodes=hub_nodes)
    hub = "1 hub" if hub_nodes == 1 else f"1 hub of {hub_nodes} nodes"
    out.print(f"starting dev fleet in {directory}: {hub}, {regions} region(s) x {edges} edge(s)")
    if insecure:
        warn_insecure()
        if client_tls:
            msg = "--client-tls needs identities and the fleet CA: drop --insecure"
            raise ConfigError(msg)
    if mqtt_anonymous:
        err.print(
            "[bold red]UNSAFE[/]: --mqtt-anonymous admits MQTT devices without credentials: any "
            "device on a store's LAN may publish as any other.",
            soft_wrap=True,
        )
    fleet = DevFleet(
        plan,
        heartbeat_interval=heartbeat_interval,
        progress=out.print,
        insecure=insecure,
        mqtt_anonymous=mqtt_anonymous,
        client_tls=client_tls,
    )
    asyncio.run(run_foreground(fleet, _print_fleet))


def warn_insecure() -> None:
    err.print(
        "[bold red]INSECURE[/]: --insecure starts every server with no identities and no "
        "permissions: anyone who reaches a port may read and change everything. For "
        "debugging only; never on a network others reach.",
        soft_wrap=True,
    )


def _print_fleet(record: fleet_state.FleetRecord) -> None:
    _print_urls(record)
    if record.insecure:
        warn_insecure()
    else:
        out.print(
            f"you are admin: {identities.operator_creds(Path(record.state_dir))}  (`fleetbus dev creds`)"
        )
        if record.dashboard_login:
            out.print(f"dashboard login (30 days): {record.dashboard_login}", soft_wrap=True)
    out.print(f"fleetbus commands find this fleet from {record.state_dir}")
    out.print("leaf links run through proxies: `fleetbus dev link --help`")
    out.print("all sites healthy; Ctrl-C (or `fleetbus dev down`) stops everything")


def _print_urls(record: fleet_state.FleetRecord) -> None:
    """Every URL of every site on a line of its own: whole, and clickable, at 80 columns."""
    for s in record.sites:
        where = f" in {s.region}" if s.tier == "edge" else f", node of {s.name}" if s.node else ""
        out.print(f"[bold]{s.node or s.name}[/] ({s.tier}{where})", highlight=False)
        for what, url in s.urls():
            out.print(f"  {what:<12}{url}", highlight=False, soft_wrap=True)


@dev_app.command("status")
def dev_status(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Health of every site; exit 0 only when every site is healthy."""
    directory = state_dir or fleet_state.default_state_dir()
    record = fleet_state.running_fleet(directory)
    if record is None:
        if as_json:
            out.print_json(json.dumps({"running": False, "state_dir": str(directory), "sites": []}))
        else:
            err.print(f"no dev fleet running in {directory}")
        raise typer.Exit(1)
    health = asyncio.run(fleet_status.check(record))
    # A fleet still starting is not healthy, even once every site answers: its record is
    # only complete (PIDs included) when `up` marks it ready.
    healthy = record.ready and all(h.ok for h in health)
    if as_json:
        print(
            json.dumps(
                {
                    "running": True,
                    "ready": record.ready,
                    "healthy": healthy,
                    "insecure": record.insecure,
                    "state_dir": record.state_dir,
                    "sites": [h.as_dict() for h in health],
                },
                indent=2,
            )
        )
    else:
        table = Table(title=f"dev fleet in {record.state_dir}", title_justify="left")
        for col in ("site", "tier", "region", "nats-server", "daemon"):
            table.add_column(col)
        for h in health:
            table.add_row(
                h.site.node or h.site.name,
                h.site.tier,
                h.site.region,
                "[green]ok[/]" if h.server_ok else "[red]down[/]",
                "[green]ok[/]" if h.daemon_ok else "[red]down[/]",
            )
        out.print(table)
        _print_urls(record)
        if record.insecure:
            warn_insecure()
        if not record.ready:
            out.print("still starting")
    raise typer.Exit(0 if healthy else 1)


@dev_app.command("creds")
def dev_creds(
    site: Annotated[
        str | None, typer.Argument(help="A site (hub, r1, r1-e1); omit with --operator/--viewer.")
    ] = None,
    operator: Annotated[bool, typer.Option("--operator", help="The fleet's admin operator.")] = False,
    viewer: Annotated[bool, typer.Option("--viewer", help="The read-only identity, at the hub.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    state_dir: StateDir = None,
) -> None:
    """Print how to act as a site, the admin or the viewer of the running dev fleet: the
    nats URL and the nkey seed file (what `nats --nkey FILE` and `fleetbus --creds FILE` take)."""
    if (site is not None) + operator + viewer != 1:
        msg = "name one SITE, or pass --operator or --viewer"
        raise ConfigError(msg)
    directory = state_dir or fleet_state.default_state_dir()
    record = fleet_state.running_fleet(directory)
    if record is None:
        msg = f"no dev fleet running in {directory}; start one with `fleetbus dev up`"
        raise ConfigError(msg)
    if record.insecure:
        msg = "this dev fleet runs --insecure: it has no identities"
        raise ConfigError(msg)
    if site is None:
        name = identities.ADMIN if operator else identities.VIEWER
        found = record.hub
        nkey = identities.operator_creds(Path(record.state_dir), name)
    else:
        match = next((s for s in record.sites if s.name == site), None)
        if match is None or match.creds is None:
            known = ", ".join(s.name for s in record.sites)
            msg = f"no site {site!r} in this dev fleet; sites: {known}"
            raise ConfigError(msg)
        found, nkey = match, Path(match.creds)
    url = found.client_url
    ca = found.ca if found.client_tls else None  # what a client needs: the port takes only TLS
    if as_json:
        out.print_json(json.dumps({"url": url, "nkey": str(nkey), "ca": ca}))
    else:
        out.print(f"url   {url}\nnkey  {nkey}", soft_wrap=True, highlight=False)
        tls = f" --tlsca {ca}" if ca else ""
        if ca:
            out.print(f"ca    {ca}", soft_wrap=True, highlight=False)
        out.print(f"try   nats --server {url} --nkey {nkey}{tls} ...", soft_wrap=True, highlight=False)


@dev_app.command("down")
def dev_down(
    state_dir: StateDir = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean stop.")] = 60.0,
) -> None:
    """Stop the dev fleet running from the state dir (from any terminal)."""
    directory = state_dir or fleet_state.default_state_dir()
    record = fleet_state.FleetRecord.load(directory)
    if record is None:
        out.print(f"no dev fleet running in {directory}")
        return
    from fleetbus.devfleet.stop import stop_fleet  # noqa: PLC0415 - keeps `dev up` import light

    left = stop_fleet(record, timeout=timeout, progress=out.print)
    if left:
        err.print(f"could not stop pids {left}")
        raise typer.Exit(1)
    out.print("dev fleet stopped")


SiteArg = Annotated[
    str,
    typer.Argument(
        help="The site whose uplink is meant (r1-e1: its link to r1; r1: r1's link to the hub); "
        "'all': every link."
    ),
]
ProcessSiteArg = Annotated[str, typer.Argument(help="Site id: hub, a region (r1) or an edge (r1-e1).")]
NodeOpt = Annotated[
    int | None,
    typer.Option("--node", help="Of a clustered hub (`dev up --hub-nodes`), only node N (1-based).", min=1),
]
LinkNodeOpt = Annotated[
    int | None,
    typer.Option(
        "--node",
        help="With SITE = hub of a clustered hub: every regional's link to its node N (1-based).",
        min=1,
    ),
]


def _control(state_dir: Path | None, request: dict[str, object]) -> dict[str, object]:
    directory = state_dir or fleet_state.default_state_dir()
    record = fleet_state.running_fleet(directory)
    if record is None:
        msg = f"no dev fleet running in {directory}; start one with `fleetbus dev up`"
        raise ConfigError(msg)
    from fleetbus.devfleet.control import call  # noqa: PLC0415 - keeps other commands light

    return call(record.control_path, request)


def _print_links(reply: dict[str, object]) -> None:
    table = Table(title="leaf links", title_justify="left")
    for col in ("uplink of", "state", "delay ms", "throttle KiB/s", "connections"):
        table.add_column(col)
    links = reply.get("links")
    for link in links if isinstance(links, list) else []:
        table.add_row(
            str(link["name"]).replace(" uplink", ""),
            _link_state(link),
            f"{link['delay_ms']:g}" if link["delay_ms"] else "-",
            f"{link['rate_kbps']:g}" if link["rate_kbps"] else "-",
            str(link["connections"]),
        )
    out.print(table)


def _link_state(link: dict[str, object]) -> str:
    if link["cut"]:
        return "[red]cut[/]"
    return "[red]blackhole[/]" if link.get("blackhole") else "[green]up[/]"


@link_app.command("show")
def link_show(state_dir: StateDir = None) -> None:
    """Every leaf link of the dev fleet and what is done to it."""
    _print_links(_control(state_dir, {"op": "links"}))


@link_app.command("cut")
def link_cut(site: SiteArg, node: LinkNodeOpt = None, state_dir: StateDir = None) -> None:
    """Drop the link: open connections are reset, new ones refused until `heal`."""
    _print_links(_control(state_dir, {"op": "link", "site": site, "node": node, "action": "cut"}))


@link_app.command("blackhole")
def link_blackhole(site: SiteArg, node: LinkNodeOpt = None, state_dir: StateDir = None) -> None:
    """Drop the link silently: nothing passes and no one is told (sockets stay open), as on a
    real WAN failure; the servers notice only when their pings go unanswered. Until `heal`."""
    _print_links(_control(state_dir, {"op": "link", "site": site, "node": node, "action": "blackhole"}))


@link_app.command("heal")
def link_heal(site: SiteArg, node: LinkNodeOpt = None, state_dir: StateDir = None) -> None:
    """Let the link through again, with no delay or throttle."""
    _print_links(_control(state_dir, {"op": "link", "site": site, "node": node, "action": "heal"}))


@link_app.command("delay")
def link_delay(
    ms: Annotated[float, typer.Argument(help="Milliseconds added each way (0: none).", min=0)],
    site: SiteArg,
    node: LinkNodeOpt = None,
    state_dir: StateDir = None,
) -> None:
    """Add latency to every byte, each way."""
    request: dict[str, object] = {"op": "link", "site": site, "node": node, "action": "delay", "value": ms}
    _print_links(_control(state_dir, request))


@link_app.command("throttle")
def link_throttle(
    kbps: Annotated[float, typer.Argument(help="KiB/s each way (0: unlimited).", min=0)],
    site: SiteArg,
    node: LinkNodeOpt = None,
    state_dir: StateDir = None,
) -> None:
    """Cap the link's bandwidth, each way."""
    request: dict[str, object] = {
        "op": "link",
        "site": site,
        "node": node,
        "action": "throttle",
        "value": kbps,
    }
    _print_links(_control(state_dir, request))


ServerOnly = Annotated[bool, typer.Option("--server", help="Only the site's nats-server.")]
DaemonOnly = Annotated[bool, typer.Option("--daemon", help="Only the site's daemon.")]


@dev_app.command("kill")
def dev_kill(
    site: ProcessSiteArg,
    server: ServerOnly = False,
    daemon: DaemonOnly = False,
    node: NodeOpt = None,
    state_dir: StateDir = None,
) -> None:
    """SIGKILL a site's daemon and nats-server (or one of them); they stay down until `restart`."""
    _processes("kill", site, (server, daemon, node), state_dir=state_dir, done="killed (SIGKILL)")


@dev_app.command("restart")
def dev_restart(
    site: ProcessSiteArg,
    server: ServerOnly = False,
    daemon: DaemonOnly = False,
    node: NodeOpt = None,
    state_dir: StateDir = None,
) -> None:
    """Start a site's processes again (stopping them first if they run); waits until healthy."""
    _processes("restart", site, (server, daemon, node), state_dir=state_dir, done="restarted, healthy")


def _processes(
    op: str, site: str, which: tuple[bool, bool, int | None], *, state_dir: Path | None, done: str
) -> None:
    server, daemon, node = which
    reply = _control(state_dir, {"op": op, "site": site, "server": server, "daemon": daemon, "node": node})
    names = reply.get("processes")
    out.print(f"{done}: {', '.join(map(str, names if isinstance(names, list) else []))}")
