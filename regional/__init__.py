"""Regional daemon: aggregates a region's edges and heartbeats the hub."""
