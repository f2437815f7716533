"""Datapath benchmark: tc eBPF policy vs no programs vs iptables; map apply time; flow events/s."""
