"""Per-node datapath: pod plumbing, BPF tc programs and maps, flows, auth-map writes (docs/datapath.md)."""
