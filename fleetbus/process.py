"""A child process that is started, health-checked, supervised and stopped.

Used for nats-servers and daemons alike. Children run in their own session (a terminal's
Ctrl-C reaches only the supervisor, which then stops them in order) and get SIGTERM if the
supervisor dies, however it dies, so nothing is left behind.
"""

import asyncio
import contextlib
import ctypes
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from fleetbus import log
from fleetbus.backoff import Backoff
from fleetbus.errors import ServerError
from fleetbus.netutil import healthy

logger = log.get_logger(__name__)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class SupervisedProcess:
    """`start()` returns once `health_url` answers 200; `supervise()` restarts on crashes."""

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
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, timeout: float = 20.0) -> None:
        self._stopping = False
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
        await self.wait_healthy(timeout)

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
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
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
            self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()

    async def restart(self, timeout: float = 20.0) -> None:
        await self.stop()
        await self.start(timeout)

    async def supervise(self, max_delay: float = 10.0) -> None:
        """Wait on the process; restart it with jittered back-off if it dies unexpectedly."""
        backoff = Backoff(0.5, cap=max_delay)
        while not self._stopping:
            proc = self._proc
            if proc is None:
                return
            code = await proc.wait()
            if self._stopping:
                return
            if self._proc is not proc:  # restarted by someone else meanwhile
                continue
            logger.warning("process exited; restarting", process=self.name, code=code)
            await backoff.wait()
            try:
                await self.start()
                self.restarts += 1
                backoff.reset()
            except ServerError as exc:
                logger.error("restart failed", process=self.name, error=str(exc))  # noqa: TRY400
