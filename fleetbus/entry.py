"""`python -m hub|regional|edge`: parse flags, load settings, run, exit cleanly.

Every settings field is a flag (`--heartbeat-interval 2`); `--config FILE` reads TOML.
User errors print one clear message and exit 2 without a traceback (`--debug` shows it).
"""

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from fleetbus import log
from fleetbus.daemon import DaemonFailedError
from fleetbus.errors import FleetbusError
from fleetbus.settings import DaemonSettings, load_settings

S = TypeVar("S", bound=DaemonSettings)

EXIT_USAGE = 2
EXIT_FAILED = 1


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
    if "labels" in flags:  # --labels a=b,c=d
        flags["labels"] = dict(p.split("=", 1) for p in flags["labels"].split(",") if "=" in p)
    try:
        settings = load_settings(cls, args.config, **flags)
        log.configure(settings.log_format, settings.log_level, site=settings.site, tier=prog)
        asyncio.run(run(settings))
    except FleetbusError as exc:
        if args.debug:
            raise
        print(f"fleetbus {prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DaemonFailedError as exc:
        if args.debug:
            raise
        print(f"fleetbus {prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return 0
