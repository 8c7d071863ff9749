"""`<state dir>/fleet.json`: how `dev status`, `dev down` and other CLI calls find a dev fleet."""

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fleetbus.errors import ConfigError

STATE_FILE = "fleet.json"
STATE_DIR_ENV = "FLEETBUS_STATE_DIR"


def default_state_dir() -> Path:
    """$FLEETBUS_STATE_DIR, else $XDG_STATE_HOME/fleetbus/dev, else ~/.local/state/fleetbus/dev."""
    if env := os.environ.get(STATE_DIR_ENV):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fleetbus" / "dev"


def ensure_writable(state_dir: Path) -> Path:
    """Create `state_dir` if needed and prove we can write there, or raise `ConfigError`."""
    probe = state_dir / ".write-probe"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        msg = (
            f"state dir {state_dir} is not writable ({exc.strerror or exc}); "
            f"choose another with --state-dir or {STATE_DIR_ENV}"
        )
        raise ConfigError(msg) from exc
    return state_dir.resolve()


@dataclass
class SiteRecord:
    name: str
    tier: str
    region: str
    client_url: str
    server_health_url: str
    daemon_health_url: str
    leaf_url: str | None = None
    mqtt_port: int | None = None
    server_pid: int | None = None
    daemon_pid: int | None = None
    dashboard_url: str | None = None
    creds: str | None = None  # the site's identity (nkey seed file), None if insecure
    ca: str | None = None  # the fleet CA, which verifies this site's certificate; None if insecure
    client_tls: bool = False  # its client port takes only TLS (`dev up --client-tls`)
    node: str | None = None  # a clustered site's node (`hub-n2`); None for a site of one server

    @property
    def mqtt_url(self) -> str | None:
        """mqtts:// on a secured fleet (the listener is TLS only), mqtt:// on an --insecure one."""
        if self.mqtt_port is None:
            return None
        scheme = "mqtt" if self.creds is None else "mqtts"
        return f"{scheme}://{urlsplit(self.client_url).hostname}:{self.mqtt_port}"

    def urls(self) -> list[tuple[str, str]]:
        """(what, URL) of everything this site serves, for people: one URL per line."""
        found = [
            ("nats", self.client_url),
            ("monitoring", self.server_health_url.split("/healthz")[0]),
            ("daemon", self.daemon_health_url.removesuffix("/healthz") + "  (/healthz /metrics)"),
        ]
        if self.mqtt_url:
            found.append(("mqtt", self.mqtt_url))
        if self.dashboard_url:
            found.append(("dashboard", self.dashboard_url + "  (API: /api, /docs)"))
        return found


@dataclass
class FleetRecord:
    supervisor_pid: int
    state_dir: str
    sites: list[SiteRecord] = field(default_factory=list)
    ready: bool = False  # True once every process started and its PID is recorded
    control_path: str | None = None  # unix socket of `dev link|kill|restart` (see control.py)
    insecure: bool = False  # started with --insecure: no identities, anyone may do anything
    dashboard_login: str | None = None  # the dashboard's URL with the local admin's token

    @property
    def hub(self) -> SiteRecord:
        return next(s for s in self.sites if s.tier == "hub")

    @property
    def hub_url(self) -> str:
        """What clients dial: the hub's client URL, or every node's, comma-separated."""
        return ",".join(s.client_url for s in self.hubs)

    @property
    def hubs(self) -> list[SiteRecord]:
        """Every node of the hub (one unless clustered: `dev up --hub-nodes 3`)."""
        return [s for s in self.sites if s.tier == "hub"]

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)  # atomic: readers never see half a file

    @classmethod
    def load(cls, state_dir: Path) -> "FleetRecord | None":
        try:
            data = json.loads((state_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            msg = f"cannot read {state_dir / STATE_FILE}: {exc}"
            raise ConfigError(msg) from exc
        sites = [SiteRecord(**s) for s in data.pop("sites", [])]
        return cls(sites=sites, **data)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with Path(f"/proc/{pid}/stat").open() as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


# What a dev fleet or a simulation keeps in its state dir; `empty()` deletes only these.
FLEET_ENTRIES = ("sites", "hollow", "operators", STATE_FILE)


def empty(directory: Path) -> list[Path]:
    """Delete every site's JetStream data, settings and logs, and the fleet record, from
    `directory` (anything else there is left alone); returns what was deleted. The caller
    has checked that no fleet runs from it (`refuse_if_running`)."""
    deleted = []
    for name in FLEET_ENTRIES:
        path = directory / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
        except OSError as exc:
            msg = f"cannot empty {directory}: {path}: {exc.strerror or exc}"
            raise ConfigError(msg) from exc
        deleted.append(path)
    return deleted


def refuse_if_running(directory: Path) -> None:
    """`ConfigError` if a fleet (dev or sim) already runs from `directory`."""
    running = running_fleet(directory)
    if running is not None:
        msg = (
            f"a fleet is already running from {directory} (pid {running.supervisor_pid}); "
            "stop it with `fleetbus dev down` or use another --state-dir"
        )
        raise ConfigError(msg)


def running_fleet(state_dir: Path) -> FleetRecord | None:
    """The fleet recorded in `state_dir` if its supervisor is still alive."""
    record = FleetRecord.load(state_dir)
    if record is None or not pid_alive(record.supervisor_pid):
        return None
    return record
