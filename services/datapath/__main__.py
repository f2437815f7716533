"""``python -m services.datapath`` / ``nodemesh-datapath``: the per-node datapath service."""

from __future__ import annotations

from nodemesh.leanimports import without_nats_websocket


def main() -> None:
    without_nats_websocket()  # before anything imports nats
    from services.datapath.netlinkimports import core_only

    core_only()  # before anything imports pyroute2
    from nodemesh.runtime import service_main
    from services.datapath.app import main as app_main
    from services.datapath.config import DatapathConfig

    service_main("datapath", DatapathConfig, app_main, description="eBPF L3/L4 policy, pod plumbing, flows")


if __name__ == "__main__":
    main()
