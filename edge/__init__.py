"""Edge daemon: runs at each site, beside the site's own nats-server."""
