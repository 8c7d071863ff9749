"""The README's five-minute tour, typed as written, in an 80-column terminal.

Every `$ ` line of the tour's console blocks (from "A five-minute tour" up to "Scale") runs
through bash in a scratch directory against a default dev fleet (`fleetbus dev up`, what
`make dev` runs), with `fleetbus` on PATH as the README says to put it. Placeholders the
reader fills in from `dev up`'s output (`<dashboard port>`, `<daemon port>`, `<r1-e1 mqtt
port>`) are filled in from the fleet's record; the README's default state dir is this test's.
Each command must exit 0 and print nothing wider than 80 columns (JSON for scripts aside);
the commands that follow changes until Ctrl-C get a Ctrl-C after a few seconds. The yaml
block that opens with `# base.yaml` is the file the tour applies."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fleetbus.devfleet.state import FleetRecord
from tests.helpers import ROOT, cli_env, require_tool, start_in_group, wait_until

pytestmark = pytest.mark.slow
README = ROOT / "README.md"
FOLLOWS = ("fleetbus watch",)  # run until Ctrl-C
DEFAULT_STATE = "~/.local/state/fleetbus/dev"


def tour() -> tuple[list[str], str]:
    """The tour's commands, in order, and the base.yaml it applies."""
    text = README.read_text()
    section = text[text.index("## A five-minute tour") : text.index("### Scale")]
    commands: list[str] = []
    for block in re.findall(r"```console\n(.*?)```", section, flags=re.DOTALL):
        commands += [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    base = next(
        b for b in re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL) if b.startswith("# base.yaml")
    )
    return commands, base


def fill(command: str, record: FleetRecord, state_dir: Path) -> str:
    regional = next(s for s in record.sites if s.name == "r1")
    edge = next(s for s in record.sites if s.name == "r1-e1")
    port = lambda url: url.split(":")[2].split("/")[0]  # noqa: E731 - http://host:PORT/...
    return (
        command.replace("<dashboard port>", port(record.hub.dashboard_url or ""))
        .replace("<daemon port>", port(regional.daemon_health_url))
        .replace("<r1-e1 mqtt port>", str(edge.mqtt_port))
        .replace(DEFAULT_STATE, str(state_dir))
    )


def test_the_tour_parses_into_the_commands_a_reader_types():
    commands, base = tour()
    assert commands[0] == "make dev"
    assert any(c.startswith("fleetbus profile diff base 1 2") for c in commands)
    assert "name: base" in base


def test_the_readme_tour_works_as_written(tmp_path: Path):
    for tool in ("jq", "curl", "mosquitto_pub"):
        require_tool(f"/usr/bin/{tool}", {"mosquitto_pub": "mosquitto-clients"}.get(tool, tool))
    commands, base = tour()
    state_dir = tmp_path / "state"
    work = tmp_path / "work"
    work.mkdir()
    (work / "base.yaml").write_text(base)
    env = cli_env(
        FLEETBUS_STATE_DIR=str(state_dir),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        COLUMNS="80",
    )
    # `make dev` is `fleetbus dev up` in the foreground; here it runs beside the tour.
    assert commands[0] == "make dev"
    up = start_in_group(
        [
            sys.executable,
            "-c",
            "from fleetbus.cli.app import main; main()",
            "dev",
            "up",
            "--state-dir",
            str(state_dir),
        ]
    )
    try:

        def ready() -> FleetRecord | None:
            record = FleetRecord.load(state_dir)
            return record if record is not None and record.ready else None

        record = wait_until(ready, timeout=90, what="dev up ready")
        assert isinstance(record, FleetRecord)
        for command in commands[1:]:
            if command.startswith("fleetbus dev down"):
                continue  # the tour's way out: run last
            line = fill(command, record, state_dir)
            follows = line.startswith(FOLLOWS)
            proc = subprocess.Popen(
                ["bash", "-c", line], cwd=work, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
            try:
                out, err = proc.communicate(timeout=4 if follows else 60)
            except subprocess.TimeoutExpired:
                if not follows:
                    raise
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as the README says
                out, err = proc.communicate(timeout=10)
            ok = (0, 130, -signal.SIGINT) if follows else (0,)
            assert proc.returncode in ok, f"$ {line}\nexit {proc.returncode}\n{out}\n{err}"
            assert "Traceback" not in err, f"$ {line}\n{err}"
            if line.startswith("fleetbus") and "--json" not in line:  # what fleetbus prints
                wide = [w for w in out.splitlines() if len(w) > 80]
                assert wide == [], f"$ {line}: wider than 80 columns:\n" + "\n".join(wide)
        down = subprocess.run(
            ["bash", "-c", "fleetbus dev down"],
            check=False,
            cwd=work,
            env=env,
            text=True,
            capture_output=True,
            timeout=90,
        )
        assert down.returncode == 0, down.stderr
        up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
