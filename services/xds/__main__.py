"""``python -m services.xds --grpc-addr 127.0.0.1:18000``: Gateway API/Ingress/CEC → Envoy over ADS."""

from __future__ import annotations

from nodemesh.leanimports import without_nats_websocket


def main() -> None:
    without_nats_websocket()  # before anything imports nats
    from nodemesh.runtime import service_main
    from services.xds.app import main as app_main
    from services.xds.config import XdsConfig

    service_main("xds", XdsConfig, app_main, description="nodemesh xDS control plane for per-node Envoys")


if __name__ == "__main__":
    main()
