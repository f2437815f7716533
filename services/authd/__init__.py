"""authd: per-node SPIFFE mutual authentication for nodemesh (see docs/authd.md)."""
