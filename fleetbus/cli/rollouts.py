"""`fleetbus rollout status|pause|resume|abort|promote`: staged rollouts from a terminal
(docs/rollouts.md).

`status --wait` prints each wave's progress line whenever it changes and exits 0 when the
rollout completes, 1 when it halted, rolled back or was aborted (its failing edges and their
errors listed), 124 when `--timeout` passed first. `profile apply --wait` waits the same way.
"""

import asyncio
import json
import time
from dataclasses import replace
from typing import Annotated

import typer

from fleetbus.cli.kit import AsJson, Creds, HubUrl, Reason, StateDir, err, out, with_client
from fleetbus.errors import ConfigError, TemporaryError
from fleetbus.sdk.client import FleetClient
from fleetbus.sdk.desk import RolloutReport
from schemas.rollout import RolloutStatus, seconds

rollout_app = typer.Typer(
    help="Staged rollouts of profile revisions: progress, pause, resume, abort, promote.",
    no_args_is_help=True,
)

TIMED_OUT = 124  # like timeout(1)
POLL = 1.0  # s between two looks while waiting

Wait = Annotated[bool, typer.Option("--wait", help="Follow the rollout until it is done.")]
Timeout = Annotated[
    str | None,
    typer.Option("--timeout", help="With --wait: give up after this long (90, 30s, 10m); exit 124."),
]


def parse_timeout(text: str | None) -> float | None:
    if text is None:
        return None
    value = seconds(text)
    if not isinstance(value, float) or value <= 0:
        msg = f"--timeout {text!r}: a duration such as 90, 30s, 10m or 2h"
        raise ConfigError(msg)
    return value


def report_json(report: RolloutReport) -> dict[str, object]:
    return {
        "state": report.state.model_dump(mode="json"),
        "waves": [w.as_json() for w in report.waves],
        "exit_code": report.exit_code,
    }


def _header(report: RolloutReport) -> str:
    state = report.state
    under_way = state.status in (RolloutStatus.RUNNING, RolloutStatus.PAUSED)
    previous = f" (edges waiting keep revision {state.previous})" if state.previous and under_way else ""
    reason = f": {state.reason}" if state.reason else ""
    return f"rollout {state.key} {state.status.value}{reason}{previous}"


def _failures(report: RolloutReport) -> list[str]:
    return [
        f"  {edge} (wave {w.name}): {why}" for w in report.waves for edge, why in sorted(w.failed.items())
    ]


RECENT = 5  # steps `status` prints (--json has every step the state keeps)


def print_report(report: RolloutReport) -> None:
    out.print(_header(report), highlight=False, markup=False)
    for wave in report.waves:
        out.print(f"  {wave.line()}", highlight=False, markup=False)
    print_outcome(report)
    if report.state.steps:
        out.print("recent steps:")
        for step in report.state.steps[-RECENT:]:
            out.print(f"  {step.at:%Y-%m-%d %H:%M:%S} {step.message}", highlight=False, markup=False)


def print_outcome(report: RolloutReport) -> None:
    """How a rollback went, and the failing edges with their errors."""
    state = report.state
    if state.rollback is not None:
        out.print(f"  rolled back: revision {state.rollback} restores the previous content")
    elif state.restore_failed:
        out.print(f"  not rolled back: {state.restore_failed}", highlight=False, markup=False)
    failures = _failures(report)
    if failures:
        out.print("failing edges:")
        for line in failures:
            out.print(line, highlight=False, markup=False)


async def follow(
    fleet: FleetClient, name: str, *, revision: int | None, timeout: float | None, as_json: bool
) -> int:
    """Follow the rollout, printing what changed; the exit code (124: `timeout` passed)."""
    deadline = time.monotonic() + timeout if timeout is not None else None
    shown: list[str] = []
    report: RolloutReport | None = None
    while True:
        try:
            report = await fleet.rollouts.status(name, revision=revision)
        except TemporaryError as exc:  # the hub restarting: keep waiting, within the deadline
            err.print(f"{exc}; asking again", highlight=False, markup=False)
        if report is not None:
            # A change of phase or counts is shown, not each second of a soak's countdown.
            unchanged = [replace(w, soak_left=None).line() for w in report.waves]
            if not as_json and [_header(report), *unchanged] != shown:
                out.print(f"[{report.at:%H:%M:%S}] {_header(report)}", highlight=False, markup=False)
                for wave in report.waves:
                    out.print(f"  {wave.line()}", highlight=False, markup=False)
                shown = [_header(report), *unchanged]
            if report.done:
                if as_json:
                    out.print_json(json.dumps(report_json(report)))
                else:
                    print_outcome(report)
                return report.exit_code or 0
        if deadline is not None and time.monotonic() >= deadline:
            if as_json and report is not None:
                out.print_json(json.dumps(report_json(report)))
            err.print(f"rollout of {name!r} not done within --timeout; it goes on at the hub")
            return TIMED_OUT
        await asyncio.sleep(POLL)  # a polling period


@rollout_app.command("status")
def rollout_status(
    name: Annotated[str, typer.Argument(help="The profile.")],
    revision: Annotated[int | None, typer.Option("--revision", help="Its rollout of this revision.")] = None,
    wait: Wait = False,
    timeout: Timeout = None,
    as_json: AsJson = False,
    hub: HubUrl = None,
    _creds: Creds = None,
    state_dir: StateDir = None,
) -> None:
    """The newest rollout of a profile: each wave's progress (converged, failed, pending,
    offline, soak left) and the failing edges; with --wait, until it is done."""
    limit = parse_timeout(timeout)
    if limit is not None and not wait:
        msg = "--timeout is how long --wait waits: give --wait too"
        raise ConfigError(msg)

    async def work(fleet: FleetClient) -> int:
        if wait:
            return await follow(fleet, name, revision=revision, timeout=limit, as_json=as_json)
        report = await fleet.rollouts.status(name, revision=revision)
        if as_json:
            out.print_json(json.dumps(report_json(report)))
        else:
            print_report(report)
        return 0

    raise typer.Exit(with_client(hub, state_dir, work))


def _operator_command(op: str, doc: str) -> None:
    def command(
        name: Annotated[str, typer.Argument(help="The profile.")],
        reason: Reason = "",
        hub: HubUrl = None,
        _creds: Creds = None,
        state_dir: StateDir = None,
    ) -> None:
        async def work(fleet: FleetClient) -> str:
            state = await getattr(fleet.rollouts, op)(name, reason=reason)
            return f"rollout {state.key} is {state.status.value}" + (
                " (soak ended)" if op == "promote" else ""
            )

        out.print(with_client(hub, state_dir, work), highlight=False, markup=False)

    command.__doc__ = doc
    rollout_app.command(op)(command)


_operator_command("pause", "Pause the newest rollout of a profile: nothing moves, deadlines neither.")
_operator_command("resume", "Resume a paused rollout (its wave's deadlines move by the pause).")
_operator_command("abort", "Stop a rollout for good: edges keep what they run now.")
_operator_command("promote", "End the active wave's soak: it passes as soon as it converged.")
