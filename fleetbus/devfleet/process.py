"""A child process that is started, health-checked, supervised and stopped.

Used for nats-servers and daemons alike. Children run in their own session (a terminal's
Ctrl-C reaches only the supervisor, which then stops them in order) and get SIGTERM if the
supervisor dies, however it dies, so nothing is left behind.
"""

import asyncio
import contextlib
import ctypes
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fleetbus.devfleet.netutil import healthy
from fleetbus.errors import ServerError
from fleetbus.runtime import log
from fleetbus.runtime.backoff import Backoff

logger = log.get_logger(__name__)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class SupervisedProcess:
    """`start()` returns once `health_url` answers 200; `supervise()` restarts on crashes.

    A process is either *wanted* (after `start()`) or not (after `stop()` or
    `kill(restart=False)`); `supervise()` restarts a wanted process that exits and counts
    that exit in `crashes`, while exits asked for (`stop`, `kill`) are not crashes.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        health_url: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.health_url = health_url
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        # Called after every healthy start, e.g. to record the new PID.
        self.on_start: Callable[[SupervisedProcess], None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._wanted = asyncio.Event()
        self._asked_exit: asyncio.subprocess.Process | None = None  # killed/stopped on purpose
        self._starting = asyncio.Lock()
        self.restarts = 0  # restarts after crashes
        self.crashes = 0  # exits nobody asked for

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def wanted(self) -> bool:
        return self._wanted.is_set()

    async def start(self, timeout: float = 20.0) -> None:
        """Start the process unless it runs; return once it is healthy."""
        async with self._starting:
            if not self.running:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with self.log_path.open("ab") as log_file:
                    self._proc = await asyncio.create_subprocess_exec(
                        *self.argv,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=log_file,
                        env=self.env,
                        start_new_session=True,
                        preexec_fn=_die_with_parent,
                    )
            self._wanted.set()  # after the new process exists: `supervise()` waits on that one
            await self.wait_healthy(timeout)
        if self.on_start is not None:
            self.on_start(self)

    async def wait_healthy(self, timeout: float) -> None:
        """Poll `health_url` until it answers 200, the process exits, or `timeout` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.02
        while True:
            if self._proc is None or self._proc.returncode is not None:
                msg = f"{self.name} exited during start{self.log_tail()}"
                raise ServerError(msg)
            if await healthy(self.health_url, timeout=1.0):
                return
            if loop.time() > deadline:
                msg = f"{self.name} not healthy after {timeout:.0f}s{self.log_tail()}"
                raise ServerError(msg)
            await asyncio.sleep(delay)  # poll interval, not synchronisation
            delay = min(delay * 2, 0.25)

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return (f" (log {self.log_path}):\n    " + "\n    ".join(text)) if text else ""

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Idempotent."""
        self._wanted.clear()
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        self._asked_exit = proc
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            logger.warning("process ignored SIGTERM; killing", process=self.name)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def kill(self, *, restart: bool = True) -> None:
        """SIGKILL, as a crash would; `supervise()` then restarts it, unless `restart=False`
        (the site stays down until `start()`)."""
        if not restart:
            self._wanted.clear()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._asked_exit = proc
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def restart(self, timeout: float = 20.0) -> None:
        await self.stop()
        await self.start(timeout)

    async def supervise(self, max_delay: float = 10.0) -> None:
        """Until cancelled: wait on the process and restart it, with jittered back-off, when
        it exits while wanted; while not wanted, wait for the next `start()`."""
        backoff = Backoff(0.5, cap=max_delay)
        while True:
            proc = self._proc
            if proc is None or not self.wanted:
                await self._wanted.wait()
                continue
            code = await proc.wait()
            if proc is not self._asked_exit:
                self.crashes += 1
                logger.warning("process exited unexpectedly", process=self.name, code=code)
            if not self.wanted or self._proc is not proc:  # stopped, or restarted meanwhile
                continue
            logger.warning("process exited; restarting", process=self.name, code=code)
            await backoff.wait()
            if not self.wanted or self._proc is not proc:  # someone else acted meanwhile
                continue
            try:
                await self.start()
                self.restarts += 1
                backoff.reset()
            except ServerError as exc:
                logger.error("restart failed", process=self.name, error=str(exc))  # noqa: TRY400
