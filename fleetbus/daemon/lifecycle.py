"""Daemon lifecycle shared by hub, regional and edge.

    async with Daemon(settings, tier=Tier.EDGE) as d:
        d.on_start(provision)            # run in order, after connecting
        d.add_task("heartbeat", beat)    # long-running, named
        await d.run()

`run()` starts the named tasks and waits for the first of: a task failing, SIGINT/SIGTERM,
or `request_stop()`. It then cancels the tasks, gives them `shutdown_timeout` seconds to
finish, drains the NATS connection, and re-raises the first real error. `shutdown()` is
idempotent and also runs on leaving the `async with`.
"""

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from fleetbus.errors import DaemonFailedError, PermanentError
from fleetbus.nats.bus import Bus, connect
from fleetbus.nats.heartbeat import send_heartbeats
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff
from fleetbus.runtime.httpd import HealthServer
from fleetbus.runtime.metrics import DaemonMetrics
from fleetbus.runtime.retry import retry
from fleetbus.runtime.settings import DaemonSettings
from fleetbus.runtime.tasks import cancel_and_wait
from schemas.heartbeat import Tier

logger = log.get_logger(__name__)

TaskFactory = Callable[[], Awaitable[None]]

STARTUP_DEADLINE = 60.0  # seconds a startup step may keep failing before the daemon gives up


class Daemon:
    def __init__(self, settings: DaemonSettings, *, tier: Tier) -> None:
        self.settings = settings
        self.tier = tier
        self.site = settings.site
        self.metrics = DaemonMetrics(tier.value, settings.site)
        self.started_at = time.monotonic()
        self._bus: Bus | None = None
        self._factories: dict[str, TaskFactory] = {}
        self._startup: list[Callable[[], Awaitable[Any]]] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._beat_now = asyncio.Event()
        self.uplink_returns = 0  # sent in heartbeats: see `uplink_returned()`
        self._failed: str | None = None
        self._running = False  # startup steps done, tasks started: /healthz says ready
        self._closed = False
        self.http = HealthServer(settings.http_host, settings.http_port, self.metrics.registry, self._health)

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            msg = "daemon is not connected; use `async with Daemon(...)`"
            raise RuntimeError(msg)
        return self._bus

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def on_start(self, step: Callable[[], Awaitable[Any]]) -> None:
        """Run `step` after connecting and before the tasks (e.g. provisioning)."""
        self._startup.append(step)

    def add_task(self, name: str, factory: TaskFactory) -> None:
        if name in self._factories:
            msg = f"task {name!r} added twice"
            raise ValueError(msg)
        self._factories[name] = factory

    def add_heartbeat(
        self,
        subject: str,
        *,
        region: str,
        interval: float,
        after: asyncio.Event | None = None,
        hello: str | None = None,
    ) -> None:
        """Heartbeat the tier above on `subject` every `interval` seconds, as this site
        (starting once `after` is set, if given; at once on a message on `hello`)."""

        async def beat() -> None:
            await send_heartbeats(
                self.bus,
                tier=self.tier,
                site=self.site,
                region=region,
                subject=subject,
                interval=interval,
                uptime=lambda: self.uptime,
                wake=self._beat_now,
                after=after,
                uplink_returns=lambda: self.uplink_returns,
                hello=hello,
            )

        self.add_task("heartbeat", beat)

    def uplink_returned(self) -> None:
        """The link to the tier above is back: say so in a heartbeat sent now, so the tier
        above kicks this site's sources at once (`HeartbeatLog.returned`)."""
        self.uplink_returns += 1
        self._beat_now.set()

    def request_stop(self) -> None:
        self._stop.set()

    async def __aenter__(self) -> Self:
        await self.http.start()
        try:
            self._bus = await connect(
                self.settings.nats_url,
                name=f"fleetbus-{self.tier.value}-{self.site}",
                source=f"/fleet/{self.tier.value}/{self.site}",
                metrics=self.metrics,
                creds=self.settings.nats_creds,
                ca=self.settings.nats_ca,
                site=self.site,
            )
        except BaseException:
            await self.http.stop()  # __aexit__ does not run when __aenter__ fails
            raise
        logger.info("daemon connected", url=self.settings.nats_url, http_port=self.http.port)
        if self.settings.heal_acceleration:
            self._bus.reconnect_listeners.append(self._own_server_back)
        return self

    def _own_server_back(self) -> None:
        """This site's server may have restarted, and with it every consumer that the tier
        above sources this site's streams through: have it kick them now, not after its own
        retry back-off (~10 s; a restart shorter than a probe period was seen to wait that)."""
        self.uplink_returned()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            for step in self._startup:
                await self._start_step(step)
            for name, factory in self._factories.items():
                self._tasks[name] = asyncio.create_task(self._guard(name, factory), name=name)
            self._running = True
            logger.info("daemon running", tasks=sorted(self._tasks))
            await self._wait_first()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self._cancel_tasks()
        if self._failed is not None:
            task = self._tasks[self._failed]
            cause = task.exception() if task.done() and not task.cancelled() else None
            raise DaemonFailedError(self._failed, cause or RuntimeError("cancelled")) from cause

    async def _start_step(self, step: Callable[[], Awaitable[Any]]) -> None:
        """Run a startup step, retrying transient failures (JetStream still starting after a
        server restart) with jittered back-off until `STARTUP_DEADLINE`."""
        name = getattr(step, "__name__", "startup")
        loop = asyncio.get_running_loop()

        def worth_retrying(exc: BaseException) -> bool:
            return not isinstance(exc, PermanentError) and not self._stop.is_set()

        try:
            await retry(
                step,
                what=f"startup step {name}",
                backoff=Backoff(0.1, cap=5.0),
                transient=worth_retrying,
                deadline=loop.time() + STARTUP_DEADLINE,
                clock=loop.time,
            )
        except Exception as exc:
            raise DaemonFailedError(name, exc) from exc

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.info("stop requested", signal=sig.name)
        self._stop.set()

    async def _guard(self, name: str, factory: TaskFactory) -> None:
        try:
            await factory()
        except asyncio.CancelledError:
            raise
        except BaseException:
            logger.exception("task failed", task=name)
            if self._failed is None:
                self._failed = name
            self._stop.set()
            raise

    async def _wait_first(self) -> None:
        stop = asyncio.create_task(self._stop.wait(), name="stop-signal")
        try:
            # A task that returns normally is done; the daemon runs on until a stop
            # request or a failure (`_guard` turns a failure into a stop request).
            pending: set[asyncio.Task[Any]] = set(self._tasks.values())
            while not self._stop.is_set():
                _, pending = await asyncio.wait(pending | {stop}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(stop)
        finally:
            stop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop

    async def _cancel_tasks(self) -> None:
        stuck = await cancel_and_wait(self._tasks.values(), self.settings.shutdown_timeout)
        for task in stuck:
            logger.error("task ignored cancellation past the deadline", task=task.get_name())

    async def shutdown(self) -> None:
        """Stop tasks, drain NATS within the deadline, stop serving health. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        await self._cancel_tasks()
        if self._bus is not None:
            await self._bus.close(timeout=self.settings.shutdown_timeout)
        await self.http.stop()
        logger.info("daemon stopped")

    def _health(self) -> tuple[bool, dict[str, Any]]:
        connected = self._bus is not None and self._bus.connected
        tasks = {name: ("running" if not t.done() else "stopped") for name, t in self._tasks.items()}
        ok = connected and self._running and self._failed is None and not self._stop.is_set()
        detail = {
            "tier": self.tier.value,
            "site": self.site,
            "nats": "connected" if connected else "down",
            "tasks": tasks,
            "uptime_seconds": round(self.uptime, 3),
        }
        return ok, detail
