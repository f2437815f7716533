"""Kubernetes mode: the endpoint socket the nodemesh-cni plugin hands pods to (docs/kubernetes.md)."""
