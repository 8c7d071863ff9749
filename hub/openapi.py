"""`python -m hub.openapi [FILE]`: write the hub API's OpenAPI document (docs/api/openapi.json).

A test checks that the committed file is current (`make schemas` regenerates it).
"""

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hub.web import create_app

if TYPE_CHECKING:
    from hub.fleetview import FleetView

DEFAULT = Path("docs/api/openapi.json")


def document() -> dict[str, Any]:
    # The schema comes from the routes and models; no route runs, so no fleet is needed.
    return create_app(cast("FleetView", None), tokens=None).openapi()


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
