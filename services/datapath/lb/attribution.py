"""Which Service a backend serves, for flows (pure): backend (ip, port, proto) → Service.

With the socket load-balancer a connection's packets carry the backend's address from the first
one (``connect()`` was rewritten), so the tc programs never see the ClusterIP and cannot say which
Service a flow went through. Hubble fills ``destination_service`` from the frontend; here the agent
keeps, from the same plans it writes into the maps, an index backend → frontends → Service, and the
flow builder names the Service of the destination backend (and, on replies, of the source).

One backend may serve several Services (two Services selecting the same pods, or a ClusterIP and a
NodePort of one Service): the answer is the smallest (namespace, name), so every flow of a backend
names the same Service, deterministically. The socket's own reverse-NAT entry would say which
frontend one connection used, but tc events have no socket cookie to find it by.
"""

from __future__ import annotations

from services.datapath.lb.model import Backend, Frontend, FrontendPlan

__all__ = ["BackendServices"]


class BackendServices:
    """backend → {frontend: (namespace, name)}, kept in step with the LB's desired plans."""

    def __init__(self) -> None:
        self._by_backend: dict[Backend, dict[Frontend, tuple[str, str]]] = {}
        self._best: dict[Backend, tuple[str, str]] = {}  # the answer, recomputed when a backend changes

    def set(self, fe: Frontend, old: FrontendPlan | None, new: FrontendPlan | None) -> None:
        """Frontend ``fe`` went from plan ``old`` to ``new`` (either may be None)."""
        changed: set[Backend] = set()
        if old is not None:
            for b in old.backends:
                refs = self._by_backend.get(b)
                if refs is not None and refs.pop(fe, None) is not None:
                    changed.add(b)
        if new is not None:
            svc = (new.service.namespace, new.service.name)
            for b in new.backends:
                self._by_backend.setdefault(b, {})[fe] = svc
                changed.add(b)
        for b in changed:
            refs = self._by_backend.get(b)
            if refs:
                self._best[b] = min(refs.values())
            else:
                self._by_backend.pop(b, None)
                self._best.pop(b, None)

    def lookup(self, ip: str, port: int, proto: int) -> tuple[str, str] | None:
        """(namespace, name) of the Service ``ip:port/proto`` is a backend of, or None."""
        return self._best.get(Backend(ip, port, proto))

    def __len__(self) -> int:
        return len(self._best)
