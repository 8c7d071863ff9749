"""Leases: which of a clustered hub's daemons does the duties only one may do at a time
(docs/clustering.md#leases)."""

from datetime import datetime
from typing import ClassVar

from pydantic import Field

from schemas.base import Message


class Lease(Message):
    """The holder of a lease, in the hub's `leases` bucket under the duty's name. The record's
    revision is the fencing token: the holder renews with compare-and-set on it, and the
    bucket's age limit removes a record its holder stopped renewing."""

    SCHEMA: ClassVar[str] = "fleet.lease"

    holder: str = Field(min_length=1, description="The daemon holding it: its hub node (`hub-n2`).")
    since: datetime = Field(description="When this holder took it.")
    ttl_seconds: float = Field(gt=0, description="A holder that stops renewing loses it after this.")
