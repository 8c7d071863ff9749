"""What every message type shares: a schema name, a major version, tolerant reading."""

import re
from datetime import UTC, datetime
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

# One NATS subject token, also valid as a JetStream domain, stream-name part and KV key
# part: lower-case so ids never differ only by case across tools.
TOKEN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_token(value: str) -> str:
    if not TOKEN.match(value):
        msg = (
            f"{value!r} is not a valid id: use 1-63 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
        raise ValueError(msg)
    return value


SiteId = Annotated[str, AfterValidator(check_token)]
"""Id of a hub, region or edge: one subject token, unique in the fleet (it is also a domain)."""

Name = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
"""Name of a profile, component or label key: no spaces, no wildcards."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every message on the bus.

    Readers accept unknown fields (a newer minor version may add some) and keep them, so a
    relay re-encodes what it received. A breaking change is a new major version: a new type.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    SCHEMA: ClassVar[str]
    VERSION: ClassVar[int] = 1

    @classmethod
    def schema_id(cls) -> str:
        """`fleet.<family>.v<major>`: the CloudEvents `ce-type` of this message type."""
        return f"{cls.SCHEMA}.v{cls.VERSION}"
