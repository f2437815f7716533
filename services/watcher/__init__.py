"""The watcher: nodemesh's only Kubernetes API client (list/watch → stream K8S; status patches → API)."""
