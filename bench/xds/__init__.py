"""xds benchmarks (not a test)."""
