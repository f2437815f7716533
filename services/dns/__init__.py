"""Cluster DNS for local mode: Services and EndpointSlices from the K8S stream → DNS answers.

In Kubernetes, CoreDNS does this and this service is not deployed (docs/dns.md).
"""
