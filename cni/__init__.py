"""nodemesh-cni: the CNI plugin (a tool; it speaks to the node's datapath over a local socket only)."""
