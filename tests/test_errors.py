"""Errors that decide: the exit-code table, the transient test at the NATS boundary, and the one
retry helper honouring `TemporaryError.delay`."""

import asyncio
import itertools

import nats.errors
import nats.js.errors
import pytest

from fleetbus import errors
from fleetbus.errors import (
    ConfigError,
    ConflictError,
    DaemonFailedError,
    DecodeError,
    FleetbusError,
    HubUnreachableError,
    MissingError,
    PermanentError,
    TemporaryError,
    exit_code,
)
from fleetbus.nats.errors import is_transient, translate
from fleetbus.runtime.backoff import Backoff
from fleetbus.runtime.retry import retry


def test_every_error_is_a_fleetbus_error():
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, Exception):
            assert issubclass(cls, FleetbusError), name


def test_one_table_gives_each_error_its_exit_code():
    assert exit_code(ConflictError("x")) == 4
    assert exit_code(HubUnreachableError("nats://h:1", "refused")) == 3
    assert exit_code(TemporaryError("x")) == 3
    assert exit_code(ConfigError("x")) == 2
    assert exit_code(MissingError("x")) == 2
    assert exit_code(DecodeError("s", "r")) == 2
    assert exit_code(DaemonFailedError("task", RuntimeError())) == 1
    assert exit_code(KeyboardInterrupt()) == 130


def test_the_nats_boundary_decides_what_is_transient():
    assert is_transient(nats.errors.TimeoutError())
    assert is_transient(nats.errors.NoRespondersError())
    assert is_transient(nats.errors.ConnectionClosedError())
    assert is_transient(nats.js.errors.ServiceUnavailableError())
    assert is_transient(TimeoutError())
    assert not is_transient(nats.js.errors.BadRequestError())
    assert not is_transient(nats.js.errors.NotFoundError())
    assert not is_transient(ValueError())
    assert isinstance(translate(nats.errors.TimeoutError(), "reading"), TemporaryError)
    assert isinstance(translate(nats.js.errors.NotFoundError(), "reading"), MissingError)
    assert isinstance(translate(nats.js.errors.BadRequestError(), "reading"), PermanentError)


async def test_retry_honours_the_delay_a_temporary_error_names():
    attempts = []

    async def flaky() -> str:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) < 3:
            raise TemporaryError("busy", delay=0.05)
        return "done"

    # The back-off alone would wait 100 s: only the error's own delay lets this finish.
    result = await asyncio.wait_for(retry(flaky, what="test", backoff=Backoff(100, cap=100)), 5)
    assert result == "done"
    assert len(attempts) == 3
    assert all(b - a >= 0.04 for a, b in itertools.pairwise(attempts))


async def test_retry_raises_a_permanent_error_at_once_and_a_transient_one_past_the_deadline():
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise ConfigError("bad")

    with pytest.raises(ConfigError):
        await retry(refused, what="test", backoff=Backoff(0.01, cap=0.01))
    assert calls == 1

    async def down() -> None:
        raise TemporaryError("down", delay=0.01)

    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        return now[0]

    with pytest.raises(TemporaryError):
        await retry(down, what="test", backoff=Backoff(0.01, cap=0.01), deadline=3.0, clock=clock)
