"""nodemesh xds: Kubernetes routing objects → Envoy resources, served to per-node Envoys over ADS."""
