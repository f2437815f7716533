"""``python -m services.authd --node node-1``: one authd per node."""

from __future__ import annotations

from nodemesh.leanimports import without_nats_websocket


def main() -> None:
    without_nats_websocket()  # before anything imports nats
    from nodemesh.runtime import service_main
    from services.authd.app import main as app_main
    from services.authd.config import AuthdConfig

    service_main("authd", AuthdConfig, app_main, description="nodemesh per-node mutual authentication")


if __name__ == "__main__":
    main()
