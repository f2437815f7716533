"""The five nodemesh services; each runs as `python -m services.<name>`."""
