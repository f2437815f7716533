"""nodemesh's core: the contracts every service agrees on and the domain code several share.

Contracts: :mod:`nodemesh.subjects` (every NATS subject), :mod:`nodemesh.messages` (every payload),
:mod:`nodemesh.streams` (every stream, KV bucket and key), :mod:`nodemesh.cell` (what a service
touches), :mod:`nodemesh.runtime` (the service lifecycle). Shared domain: :mod:`nodemesh.policy`
(the policy engine), :mod:`nodemesh.labels` (identity label rules), :mod:`nodemesh.netns`.
The core imports nothing of ours above it (``make check`` enforces it). Nothing here does I/O at
import time.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
