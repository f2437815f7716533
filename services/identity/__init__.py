"""The identity service: security identities (Cilium numbering), the ipcache, and the SPIFFE CA."""
