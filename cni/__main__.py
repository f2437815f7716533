"""``python -m cni`` (what the installed /opt/cni/bin/nodemesh-cni wrapper execs)."""

import sys

from cni.plugin import main

if __name__ == "__main__":
    sys.exit(main())
