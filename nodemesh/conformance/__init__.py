"""Gateway API conformance: the corpus runner (``python -m nodemesh.conformance``) and its harness."""
