"""Gateway API conformance: the corpus runner (``python -m conformance``) and its harness."""
