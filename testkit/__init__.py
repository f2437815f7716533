"""Helpers that start real components for tests and benchmarks (nats-server, Envoy)."""
