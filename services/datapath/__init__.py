"""Per-node datapath: pod plumbing, BPF tc programs and maps, flows, auth-map writes (see docs/datapath.md)."""
