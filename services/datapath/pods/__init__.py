"""Pod networking (the CNI role) and, in local mode, running a pod's first container in its netns."""
