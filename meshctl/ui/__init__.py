"""``nodemesh ui``: the service map page (workloads, connections, live flows) over the FLOWS stream."""
