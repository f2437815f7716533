"""``python -m services.dns --listen 169.254.20.10:53`` / ``nodemesh-dns``: cluster DNS (local mode)."""

from __future__ import annotations

from nodemesh.runtime import service_main
from services.dns.app import main as app_main
from services.dns.config import DnsConfig


def main() -> None:
    service_main("dns", DnsConfig, app_main, description="nodemesh cluster DNS (local mode)")


if __name__ == "__main__":
    main()
