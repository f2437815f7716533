"""nodemesh: a sidecarless service mesh — the contract package shared by every service.

Nothing here does I/O at import time. Start with :mod:`nodemesh.subjects` (every NATS subject),
:mod:`nodemesh.messages` (every payload), :mod:`nodemesh.streams` (every stream and KV bucket) and
:mod:`nodemesh.runtime` (the service lifecycle every service shares).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
