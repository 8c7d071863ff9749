"""The `fleetbus` command line.

Errors print one clear line, without a traceback (`--debug` or FLEETBUS_DEBUG=1 shows it),
and exit with a documented code (docs/operations.md): 2 for what the user gave (bad
settings or input, a missing binary, a taken port, an unwritable directory), 3 when the hub
(or an edge) cannot be reached within the deadline (`--timeout`, default 5 s): a retry may
work.
"""

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

import fleetbus
from fleetbus.cli import dev, device, operators, profiles, rollouts, sim, sites, view
from fleetbus.cli.kit import Creds, HubUrl, StateDir, check_range, connect, err, out
from fleetbus.deploy.compose import HA_NODES, compose_file, init_compose, private_dir, write_compose
from fleetbus.devfleet import identities
from fleetbus.devfleet import state as fleet_state
from fleetbus.errors import EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, ConflictError, FleetbusError, exit_code
from fleetbus.runtime import pki
from fleetbus.sdk.client import CA_ENV, CREDS_ENV, DEFAULT_TIMEOUT, TIMEOUT_ENV
from schemas.export import write_json_schemas

app = typer.Typer(
    help="Manage fleets of edge sites over NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
schema_app = typer.Typer(help="The wire contract.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
app.add_typer(dev.dev_app, name="dev")
app.add_typer(profiles.profile_app, name="profile")
app.add_typer(profiles.override_app, name="override")
app.add_typer(rollouts.rollout_app, name="rollout")
app.command("explain")(profiles.explain)
app.command("status")(view.status)
app.add_typer(view.watch_app, name="watch")
app.command("sim")(sim.sim)
app.add_typer(device.device_app, name="device")
app.add_typer(sites.edge_app, name="edge")
app.add_typer(sites.region_app, name="region")
app.add_typer(operators.operator_app, name="operator")
app.add_typer(operators.secret_app, name="secret")
app.command("audit")(operators.audit)
app.add_typer(operators.token_app, name="token")
app.add_typer(operators.keys_app, name="keys")
compose_app = typer.Typer(
    help="The container fleet: docker-compose.yml, and each site's identity and configs.",
    no_args_is_help=True,
)
app.add_typer(compose_app, name="compose")
pki_app = typer.Typer(help="The fleet's certificate authority (TLS on the leaf links).", no_args_is_help=True)
app.add_typer(pki_app, name="pki")


def _show_version(wanted: bool) -> None:
    if wanted:
        out.print(f"fleetbus {fleetbus.__version__}")
        raise typer.Exit


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    _version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            envvar=TIMEOUT_ENV,
            help=f"Seconds to reach the hub, and for each request to it (default {DEFAULT_TIMEOUT:g}).",
            show_default=False,
        ),
    ] = None,
    creds: Annotated[
        Path | None,
        typer.Option(
            "--creds",
            envvar=CREDS_ENV,
            help="Your identity: an nkey seed file or a JWT .creds file, the formats the nats "
            "CLI reads (default: the running dev fleet's admin).",
            show_default=False,
        ),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(
            "--ca",
            envvar=CA_ENV,
            help="The fleet CA's certificate, which verifies the hub's where its client port "
            "takes only TLS (default: the running dev fleet's).",
            show_default=False,
        ),
    ] = None,
) -> None:
    if creds is not None:
        os.environ[CREDS_ENV] = str(creds)  # read by `FleetClient.connect`, like the timeout
    if ca is not None:
        os.environ[CA_ENV] = str(ca)
    if debug:
        os.environ["FLEETBUS_DEBUG"] = "1"
    if timeout is not None:
        check_range(f"--timeout (env {TIMEOUT_ENV})", timeout, 0.1, 3600)
        # Commands reach the hub through `FleetClient`, which reads it from the environment.
        os.environ[TIMEOUT_ENV] = str(timeout)


@schema_app.command("export")
def schema_export(directory: Annotated[Path, typer.Argument(help="Where to write the files.")]) -> None:
    """Write a JSON Schema file per message type."""
    _write_files(f"schemas to {directory}", lambda: write_json_schemas(directory))


def _write_files(what: str, write: Callable[[], list[Path]]) -> None:
    try:
        paths = write()
    except OSError as exc:
        msg = f"cannot write {what}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    for path in paths:
        out.print(f"wrote {path}")


@compose_app.command("render")
def compose_render(
    root: Annotated[Path, typer.Option("--root", help="Repository root to write into.")] = Path(),
) -> None:
    """Render docker-compose.yml, docker-compose.ha.yml (a 3-node hub) and the monitoring
    configs (committed, no secrets)."""
    _write_files(f"compose files under {root}", lambda: write_compose(root))


@compose_app.command("init")
def compose_init(
    root: Annotated[Path, typer.Option("--root", help="Repository root to write into.")] = Path(),
    hub_nodes: Annotated[
        int,
        typer.Option(
            "--hub-nodes",
            help=f"1: docker-compose.yml's fleet (deploy/compose/); {HA_NODES}: docker-compose.ha.yml's "
            "(deploy/compose-ha/, a fleet of its own).",
        ),
    ] = 1,
) -> None:
    """Make the container fleet's CA, keys and certificates (kept if there) and write each
    site's nats-server config, admission files and daemon settings under deploy/compose/
    (not committed); then `docker compose up`."""
    if hub_nodes not in (1, HA_NODES):
        msg = f"--hub-nodes {hub_nodes}: the compose files have a hub of 1 or {HA_NODES} nodes; pick one"
        raise ConfigError(msg)
    _write_files(f"the compose fleet's sites under {root}", lambda: init_compose(root, hub_nodes=hub_nodes))
    private, file = private_dir(hub_nodes), compose_file(hub_nodes)
    hubs = ",".join(f"nats://localhost:{4222 + n}" for n in range(hub_nodes))
    project = "fleetbus" if hub_nodes == 1 else "fleetbus-ha"
    out.print(
        f"next: docker compose -p {project} -f {file} up --build; "
        f"the operator's key: {private}/operators/admin.nk, the CA: {private}/pki/ca.pem; "
        f"e.g. fleetbus --hub {hubs} --creds {private}/operators/admin.nk --ca {private}/pki/ca.pem status",
        soft_wrap=True,
    )


@pki_app.command("init")
def pki_init(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where the CA lives. [default: <state dir>/pki, what `dev up` uses]"),
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Create the fleet's CA (kept if it exists): its certificate verifies every site's, its
    key (mode 0600) signs them. `fleetbus dev up` does this by itself."""
    where = directory or (state_dir or fleet_state.default_state_dir()) / identities.PKI_DIR
    existed = (where / pki.CA_CERT).exists()
    cert = pki.ensure_ca(where)
    out.print(f"{'kept' if existed else 'created'} the fleet CA: {cert}", soft_wrap=True, highlight=False)
    out.print(f"its key: {where / pki.CA_KEY} (keep it off the sites)", soft_wrap=True, highlight=False)


@app.command("info")
def info(hub: HubUrl = None, _creds: Creds = None, state_dir: StateDir = None) -> None:
    """Connect to the hub and show its JetStream domain and buckets."""

    async def fetch() -> None:
        async with await connect(hub, state_dir) as fleet:
            hub_info = await fleet.hub_info()
        # Printed after `async with`: a hub lost mid-command raises there, not half a report.
        out.print(
            f"hub {hub_info.url}: JetStream domain {hub_info.domain!r}, "
            f"{hub_info.streams} stream(s), {hub_info.storage_bytes} bytes stored"
        )
        out.print("buckets: " + (", ".join(hub_info.buckets) or "(none)"))

    asyncio.run(fetch())


run_app = typer.Typer(
    help="Run a daemon in this process (as a container entry point does); `--help` after the "
    "role lists its flags.",
    no_args_is_help=True,
)
app.add_typer(run_app, name="run")


def _daemon_command(role: str) -> None:
    """`fleetbus run hub|regional|edge [FLAGS]`: run that daemon (`python -m <role>`) here."""

    def command(ctx: typer.Context) -> None:
        # exec, not import: the daemons sit above this package, and the process becomes the
        # daemon (signals, exit code) as a container entry point expects.
        os.execv(sys.executable, [sys.executable, "-m", role, *ctx.args])  # noqa: S606

    command.__doc__ = f"Run the {role} daemon; every setting is a flag (--help lists them)."
    run_app.command(
        role,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    )(command)


for _role in ("hub", "regional", "edge"):
    _daemon_command(_role)


def main() -> None:
    """Console-script entry: turn user errors into one line and an exit code."""
    try:
        # Without standalone mode click returns (not raises) the code of a `typer.Exit`.
        code = app(standalone_mode=False, prog_name="fleetbus")
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: bad option values, unknown commands
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"error: {exc}")
        sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
    except FleetbusError as exc:
        if os.environ.get("FLEETBUS_DEBUG"):
            raise
        label = "conflict" if isinstance(exc, ConflictError) else "error"
        err.print(f"[red]{label}:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exit_code(exc))
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
