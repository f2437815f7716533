"""``python -m services.dns --listen 169.254.20.10:53`` / ``nodemesh-dns``: cluster DNS (local mode)."""

from __future__ import annotations

from nodemesh.leanimports import without_nats_websocket


def main() -> None:
    without_nats_websocket()  # before anything imports nats
    from nodemesh.runtime import service_main
    from services.dns.app import main as app_main
    from services.dns.config import DnsConfig

    service_main("dns", DnsConfig, app_main, description="nodemesh cluster DNS (local mode)")


if __name__ == "__main__":
    main()
