"""``python -m services.identity``: security identities, the ipcache and the SPIFFE CA."""

from __future__ import annotations

from nodemesh.leanimports import without_nats_websocket


def main() -> None:
    without_nats_websocket()  # before anything imports nats
    from nodemesh.runtime import service_main
    from services.identity.app import main as app_main
    from services.identity.config import IdentityConfig

    service_main(
        "identity", IdentityConfig, app_main, description="nodemesh identities, ipcache and SPIFFE CA"
    )


if __name__ == "__main__":
    main()
