"""`python -m hub|regional|edge`: parse flags, load settings, run, exit cleanly.

Every settings field is a flag (`--heartbeat-interval 2`; a list as `--trusted-keys A,B`, a
mapping as `--labels a=b,c=d`); `--config FILE` reads TOML.
Errors print one clear message and exit with the code `fleetbus.errors.EXIT_CODES` gives
(2: settings, 1: a task failed), without a traceback (`--debug` shows it).
"""

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from fleetbus.errors import EXIT_OK, FleetbusError, exit_code
from fleetbus.runtime import log
from fleetbus.runtime.settings import DaemonSettings, load_settings

S = TypeVar("S", bound=DaemonSettings)


def _parser(prog: str, cls: type[DaemonSettings]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=f"Run the fleetbus {prog} daemon.")
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    for name, field in cls.model_fields.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            help=field.description or f"(env FLEETBUS_{name.upper()})",
        )
    return parser


def main(
    prog: str, cls: type[S], run: Callable[[S], Coroutine[Any, Any, None]], argv: list[str] | None = None
) -> int:
    args = _parser(prog, cls).parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "debug") and v is not None}
    for name, value in flags.items():
        shape = cls.model_fields[name].annotation
        if shape == dict[str, str]:  # --labels a=b,c=d
            flags[name] = dict(p.split("=", 1) for p in value.split(",") if "=" in p)
        elif shape == list[str]:  # --trusted-keys A,B
            flags[name] = [p for p in value.split(",") if p]
    try:
        settings = load_settings(cls, args.config, **flags)
        log.configure(settings.log_format, settings.log_level, site=settings.site, tier=prog)
        asyncio.run(run(settings))
    except (FleetbusError, KeyboardInterrupt) as exc:
        if args.debug and not isinstance(exc, KeyboardInterrupt):
            raise
        if isinstance(exc, FleetbusError):
            print(f"fleetbus {prog}: {exc}", file=sys.stderr)
        return exit_code(exc)
    return EXIT_OK
