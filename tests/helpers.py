"""Test helpers: poll until a condition holds (never a bare sleep), run the CLI."""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
FLEETBUS = [sys.executable, "-c", "from fleetbus.cli.app import main; main()"]


async def eventually(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 15.0, what: str = "condition"
) -> T:
    """Call `probe` until it returns a truthy value without raising; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = await probe()
            if result:
                return result
        except Exception as exc:  # the probe may fail until the system is ready
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last error: {last!r})")
        await asyncio.sleep(0.05)  # poll interval


def wait_until(probe: Callable[[], object], *, timeout: float = 15.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)  # poll interval


def start_in_group(argv: list[str]) -> subprocess.Popen[str]:
    """A CLI process in its own process group, so a test can send Ctrl-C the way a terminal
    does (to the group)."""
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(), cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETBUS_")}
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEETBUS, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        cwd=ROOT,
        check=False,
    )


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line contains `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z" and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def arun_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> CliResult:
    """`run_cli` without blocking the event loop (tests that host link proxies need it)."""
    proc = await asyncio.create_subprocess_exec(
        *FLEETBUS,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or cli_env(),
        cwd=ROOT,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    return CliResult(proc.returncode or 0, stdout.decode(), stderr.decode())


def require_tool(path: str, package: str) -> str:
    """`path` if it exists; else skip the test, or fail it where CI promises the tool
    (`FLEETBUS_CI=1`, set by .ci/run, which installs `package`)."""
    if Path(path).exists():
        return path
    hint = f"{path} is missing: install it with `apt-get install {package}`"
    if os.environ.get("FLEETBUS_CI"):
        pytest.fail(hint)
    pytest.skip(hint)
