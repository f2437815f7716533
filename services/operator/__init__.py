"""The operator: Gateway/Ingress LoadBalancer Services and LB-IPAM, written through the watcher."""
