"""fleetbus: manage fleets of edge sites from a hub over links that fail, on NATS JetStream."""

__version__ = "0.1.0"
