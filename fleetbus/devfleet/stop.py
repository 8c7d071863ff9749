"""`fleetbus dev down`: stop a dev fleet from another terminal."""

import contextlib
import os
import signal
import time
from collections.abc import Callable

from fleetbus.devfleet.state import FleetRecord, pid_alive


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if pid_alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)  # poll interval while processes exit


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_fleet(record: FleetRecord, *, timeout: float, progress: Callable[[str], None]) -> list[int]:
    """Ask the supervisor to stop (it stops children in order); clean up stragglers.

    Returns the pids still alive at the end (empty on success).
    """
    children = [p for s in record.sites for p in (s.daemon_pid, s.server_pid) if p]
    if pid_alive(record.supervisor_pid):
        progress(f"stopping dev fleet (supervisor pid {record.supervisor_pid}) ...")
        _signal([record.supervisor_pid], signal.SIGTERM)
        _wait_gone([record.supervisor_pid], timeout)
    # Children die with the supervisor; these are only for a supervisor killed by SIGKILL
    # on a system without PDEATHSIG.
    _signal([p for p in children if pid_alive(p)], signal.SIGTERM)
    left = _wait_gone([*children, record.supervisor_pid], 10)
    _signal(left, signal.SIGKILL)
    return _wait_gone(left, 5)
