"""`fleetbus dev`: a whole fleet of real nats-servers and daemons on loopback."""
