"""Local mode: the whole mesh on one machine (embedded NATS, local API server, simulated nodes)."""
