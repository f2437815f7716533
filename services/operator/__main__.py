"""``python -m services.operator`` / ``nodemesh-operator``: LoadBalancer Services and LB-IPAM."""

from __future__ import annotations

from nodemesh.leanimports import without_nats_websocket


def main() -> None:
    without_nats_websocket()  # before anything imports nats
    from nodemesh.runtime import service_main
    from services.operator.app import main as app_main
    from services.operator.config import OperatorConfig

    service_main("operator", OperatorConfig, app_main, description="nodemesh operator (LB Services, LB-IPAM)")


if __name__ == "__main__":
    main()
